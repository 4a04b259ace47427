"""Discovering image/label pairs in the Cityscapes layout, through Beam's ``FileSystems``.

Layout (what the official download unpacks to, and what ``segops synth`` writes)::

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png   (optional)

Everything else under ROOT (gtCoarse/, *_color.png, *_polygons.json, README, license files,
camera/ or vehicle/ metadata, a ``leftImg8bit/train_extra`` or ``demoVideo`` folder without
gtFine labels) is ignored. Listing uses ``FileSystems.match`` with one ``*`` per path segment, so
``gs://`` and ``s3://`` roots work as well as local ones.

Splits. By default every split found under leftImg8bit/ that also has a gtFine/ folder, plus the
*unlabeled* splits (default: ``test``) found under leftImg8bit/. Cityscapes' test labels contain
only void ids; their images are written as image-only records (all-ignore label, no weight map)
and left out of the statistics, so they stay usable for inference. Splits under leftImg8bit/
without gtFine labels (``train_extra``, ``demoVideo``) are skipped with a note.

Problems found while listing (an image without its label in a labelled split, a label without
its image, a frame id seen twice) come back as :class:`Problem` records for the dead letter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from segops.core import deadletter
from segops.core.fs import join, match_sized
from segops.core.layout import (
    IMAGE_DIR,
    IMAGE_SUFFIX,
    INSTANCE_SUFFIX,
    LABEL_DIR,
    LABEL_FILES_GLOB,
    LABEL_SUFFIX,
)

DEFAULT_UNLABELED_SPLITS: tuple[str, ...] = ("test",)
SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test")


class DiscoveryError(ValueError):
    """The input cannot be used at all (missing split, nothing found); message says why."""


@dataclass(frozen=True)
class Pair:
    """One image to prepare. Paths are full (as FileSystems sees them); ``source`` is relative."""

    split: str
    city: str
    frame_id: str
    image: str
    source: str  # image path relative to the input root
    image_bytes: int
    label: str | None = None  # None in unlabeled splits
    instance: str | None = None  # None when the instanceIds file is absent

    @property
    def labelled(self) -> bool:
        return self.label is not None


@dataclass(frozen=True)
class Problem:
    path: str  # relative to the input root
    split: str
    reason: str
    stage: str = "discover"

    def to_dict(self) -> dict[str, str]:
        return deadletter.record(self.path, self.stage, self.reason, split=self.split)


@dataclass
class Listing:
    root: str
    splits: list[str]
    unlabeled_splits: list[str]
    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # split -> why it was not processed
    fingerprint: str = ""
    files: int = 0

    def pairs_in(self, split: str) -> list[Pair]:
        return [p for p in self.pairs if p.split == split]

    def bytes_in(self, split: str) -> int:
        return sum(p.image_bytes for p in self.pairs if p.split == split)


def _split_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def _parse(path: str, prefix: str, top: str, suffix: str) -> tuple[str, str, str, str] | None:
    """(relative path, split, city, frame id) if ``path`` is ``top/<split>/<city>/<frame><suffix>``."""
    rel = path[len(prefix) :] if path.startswith(prefix) else path
    parts = rel.split("/")
    if len(parts) != 4 or parts[0] != top or not parts[3].endswith(suffix):
        return None
    frame_id = parts[3][: -len(suffix)]
    if not frame_id:
        return None
    return rel, parts[1], parts[2], frame_id


Index = dict[tuple[str, str, str], tuple[str, str, int]]


def _list(root: str, top: str, pattern: str, suffixes: tuple[str, ...]) -> list[Index]:
    """One listing of ``root/top/*/*/<pattern>``; per suffix: (split, city, frame id) -> (path,
    relative path, size). One match per top folder: on object stores each is a prefix listing."""
    prefix = root + "/"
    found: list[Index] = [{} for _ in suffixes]
    for path, size in match_sized(join(root, top, "*", "*", pattern)):
        for index, suffix in zip(found, suffixes, strict=True):
            parsed = _parse(path, prefix, top, suffix)
            if parsed is not None:  # dedupes repeated listings of one object, too
                rel, split, city, frame_id = parsed
                index[(split, city, frame_id)] = (path, rel, size)
    return found


def fingerprint(entries: list[tuple[str, int]]) -> str:
    """sha256 of the sorted ``relative path<TAB>size`` lines: changes when any input file does."""
    digest = hashlib.sha256()
    for rel, size in sorted(entries):
        digest.update(f"{rel}\t{size}\n".encode())
    return digest.hexdigest()


def discover(
    root: str,
    splits: list[str] | tuple[str, ...] | None = None,
    unlabeled_splits: list[str] | tuple[str, ...] = DEFAULT_UNLABELED_SPLITS,
) -> Listing:
    """List the pairs of ``splits`` (default: all usable ones) under ``root``.

    Raises :class:`DiscoveryError` if a requested split has no images or nothing is found.
    """
    root = root.rstrip("/") or "/"
    (images,) = _list(root, IMAGE_DIR, "*" + IMAGE_SUFFIX, (IMAGE_SUFFIX,))
    labels, instances = _list(root, LABEL_DIR, LABEL_FILES_GLOB, (LABEL_SUFFIX, INSTANCE_SUFFIX))

    image_splits = {key[0] for key in images}
    label_splits = {key[0] for key in labels}
    unlabeled = set(unlabeled_splits)
    skipped: dict[str, str] = {}
    if splits:
        missing = [s for s in splits if s not in image_splits]
        if missing:
            raise DiscoveryError(
                f"split(s) {', '.join(missing)} not found: no {root}/{IMAGE_DIR}/<split>/<city>/*{IMAGE_SUFFIX} "
                f"(found: {', '.join(sorted(image_splits, key=_split_key)) or 'none'})"
            )
        chosen = sorted(set(splits), key=_split_key)
    else:
        chosen = sorted((s for s in image_splits if s in label_splits or s in unlabeled), key=_split_key)
        for s in image_splits - set(chosen):
            skipped[s] = f"{IMAGE_DIR}/{s} has no {LABEL_DIR}/{s} labels"
    for s in label_splits - image_splits:
        skipped[s] = f"{LABEL_DIR}/{s} has labels but {IMAGE_DIR}/{s} has no images"
    if not chosen:
        raise DiscoveryError(
            f"no Cityscapes images under {root}: expected {IMAGE_DIR}/<split>/<city>/<frame>{IMAGE_SUFFIX} "
            f"with labels in {LABEL_DIR}/<split>/<city>/<frame>{LABEL_SUFFIX}"
        )

    listing = Listing(root=root, splits=chosen, unlabeled_splits=[s for s in chosen if s in unlabeled])
    listing.skipped = dict(sorted(skipped.items()))
    used: list[tuple[str, int]] = []
    order = sorted((k for k in images if k[0] in chosen), key=lambda k: (_split_key(k[0]), k[1], k[2]))
    first_of: dict[str, str] = {}  # frame id -> relative path of its first image (split order)
    for key in order:
        first_of.setdefault(key[2], images[key][1])

    for key in order:
        split, city, frame_id = key
        path, rel, size = images[key]
        used.append((rel, size))
        if first_of[frame_id] != rel:
            listing.problems.append(
                Problem(rel, split, f"duplicate frame id: {frame_id} is also at {first_of[frame_id]}, which is kept")
            )
            continue
        if split in unlabeled:
            listing.pairs.append(Pair(split, city, frame_id, path, rel, size))
            continue
        if key not in labels:
            expected = f"{LABEL_DIR}/{split}/{city}/{frame_id}{LABEL_SUFFIX}"
            listing.problems.append(Problem(rel, split, f"image without label: {expected} not found"))
            continue
        label_path, label_rel, label_size = labels[key]
        used.append((label_rel, label_size))
        instance = instances.get(key)
        if instance is not None:
            used.append((instance[1], instance[2]))
        listing.pairs.append(
            Pair(split, city, frame_id, path, rel, size, label_path, instance[0] if instance else None)
        )

    for key in sorted(labels, key=lambda k: labels[k][1]):
        split = key[0]
        if split in chosen and split not in unlabeled and key not in images:
            expected = f"{IMAGE_DIR}/{split}/{key[1]}/{key[2]}{IMAGE_SUFFIX}"
            listing.problems.append(Problem(labels[key][1], split, f"label without image: {expected} not found"))
            used.append((labels[key][1], labels[key][2]))

    if not listing.pairs and not listing.problems:
        raise DiscoveryError(f"no image/label pairs found under {root} for split(s) {', '.join(chosen)}")
    listing.fingerprint = fingerprint(used)
    listing.files = len(used)
    return listing
