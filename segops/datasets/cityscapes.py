"""Discovering image/label pairs in the Cityscapes layout, through Beam's ``FileSystems``.

Layout (what the official download unpacks to, and what ``segops synth`` writes)::

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png   (optional)

With coarse annotations asked for (``annotations`` holds ``coarse``) also::

    ROOT/gtCoarse/<split>/<city>/<city>_<seq>_<frame>_gtCoarse_labelIds.png   (train, train_extra, val)

Each (split, annotation kind) is a *part* with its own pairs: ``<split>`` for gtFine labels,
``coarse/<split>`` for gtCoarse ones (:func:`segops.core.layout.part_name`); a frame of train
then appears twice, once per kind. gtCoarse instanceIds carry no instances and are not read.

Everything else under ROOT (gtCoarse/ unless asked for, *_color.png, *_polygons.json, README,
license files, camera/ or vehicle/ metadata, a ``leftImg8bit/train_extra`` or ``demoVideo``
folder without labels of a kind asked for) is ignored. Listing uses ``FileSystems.match`` with one ``*`` per path segment, so
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
    ANNOTATION_KINDS,
    COARSE,
    FINE,
    IMAGE_DIR,
    IMAGE_SUFFIX,
    INSTANCE_SUFFIX,
    LABEL_DIR,
    LABEL_DIRS,
    LABEL_FILES_GLOB,
    LABEL_SUFFIX,
    LABEL_SUFFIXES,
    part_name,
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
    annotation: str = FINE  # the kind of ``label``: fine (gtFine) or coarse (gtCoarse)

    @property
    def labelled(self) -> bool:
        return self.label is not None

    @property
    def part(self) -> str:
        """The prepared part the pair goes to: ``<split>``, or ``coarse/<split>``."""
        return part_name(self.split, self.annotation)


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
    splits: list[str]  # the parts to write: <split> (fine or image-only), coarse/<split>
    unlabeled_splits: list[str]
    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # split -> why it was not processed
    fingerprint: str = ""
    files: int = 0

    def pairs_in(self, part: str) -> list[Pair]:
        return [p for p in self.pairs if p.part == part]

    def bytes_in(self, part: str) -> int:
        return sum(p.image_bytes for p in self.pairs if p.part == part)


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
    annotations: tuple[str, ...] = (FINE,),
) -> Listing:
    """List the pairs of ``splits`` (default: all usable ones) under ``root``, with the labels of
    each annotation kind in ``annotations`` (``fine``: gtFine/, ``coarse``: gtCoarse/).

    Raises :class:`DiscoveryError` if a requested split has no images, nothing is found, or
    coarse annotations are asked for and there are none.
    """
    root = root.rstrip("/") or "/"
    kinds = tuple(k for k in ANNOTATION_KINDS if k in annotations)
    if not kinds:
        raise DiscoveryError(f"no annotation kind among {annotations}: expected some of {ANNOTATION_KINDS}")
    (images,) = _list(root, IMAGE_DIR, "*" + IMAGE_SUFFIX, (IMAGE_SUFFIX,))
    labels: dict[str, Index] = {}
    instances: dict[str, Index] = {}
    for kind in kinds:
        if kind == FINE:
            labels[kind], instances[kind] = _list(root, LABEL_DIR, LABEL_FILES_GLOB, (LABEL_SUFFIX, INSTANCE_SUFFIX))
        else:  # gtCoarse instanceIds hold no instances (no id >= 1000): border terms use components
            (labels[kind],) = _list(root, LABEL_DIRS[kind], "*" + LABEL_SUFFIXES[kind], (LABEL_SUFFIXES[kind],))
            instances[kind] = {}

    image_splits = {key[0] for key in images}
    label_splits = {kind: {key[0] for key in labels[kind]} for kind in kinds}
    any_labels = set().union(*label_splits.values())
    if COARSE in kinds and not label_splits[COARSE]:
        raise DiscoveryError(
            f"coarse annotations asked for, but there are none under {root}: expected "
            f"{LABEL_DIRS[COARSE]}/<split>/<city>/<frame>{LABEL_SUFFIXES[COARSE]} (`segops synth --coarse` writes them)"
        )
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
        chosen = sorted((s for s in image_splits if s in any_labels or s in unlabeled), key=_split_key)
        dirs = " or ".join(f"{LABEL_DIRS[k]}/{{s}}" for k in kinds)
        for s in image_splits - set(chosen):
            skipped[s] = f"{IMAGE_DIR}/{s} has no {dirs.format(s=s)} labels"
    for kind in kinds:
        for s in label_splits[kind] - image_splits:
            skipped[part_name(s, kind)] = f"{LABEL_DIRS[kind]}/{s} has labels but {IMAGE_DIR}/{s} has no images"
    if not chosen:
        raise DiscoveryError(
            f"no Cityscapes images under {root}: expected {IMAGE_DIR}/<split>/<city>/<frame>{IMAGE_SUFFIX} "
            f"with labels in {LABEL_DIR}/<split>/<city>/<frame>{LABEL_SUFFIX}"
        )

    # Parts: (split, kind) for every labelled split with labels of that kind; with one kind, every
    # labelled split (its missing labels are problems), and a split without labels of any kind
    # goes with the first kind, so its images are reported.
    parts: list[tuple[str, str]] = [(s, FINE) for s in chosen if s in unlabeled]
    for s in chosen:
        if s in unlabeled:
            continue
        mine = [k for k in kinds if s in label_splits[k]] if len(kinds) > 1 else list(kinds)
        parts.extend((s, k) for k in mine or kinds[:1])
    parts.sort(key=lambda p: (ANNOTATION_KINDS.index(p[1]), _split_key(p[0])))

    listing = Listing(root=root, splits=[part_name(s, k) for s, k in parts],
                      unlabeled_splits=[s for s in chosen if s in unlabeled])  # fmt: skip
    listing.skipped = dict(sorted(skipped.items()))
    used: list[tuple[str, int]] = []
    order = sorted((k for k in images if k[0] in chosen), key=lambda k: (_split_key(k[0]), k[1], k[2]))
    first_of: dict[str, str] = {}  # frame id -> relative path of its first image (split order)
    for key in order:
        first_of.setdefault(key[2], images[key][1])
    duplicates = set()
    for key in order:
        rel, size = images[key][1], images[key][2]
        used.append((rel, size))
        if first_of[key[2]] != rel:
            duplicates.add(key)
            listing.problems.append(Problem(
                rel, part_name(key[0], next(k for s, k in parts if s == key[0])),
                f"duplicate frame id: {key[2]} is also at {first_of[key[2]]}, which is kept",
            ))  # fmt: skip
    for split, kind in parts:
        _pair_up(listing, split, kind, [k for k in order if k[0] == split and k not in duplicates], images,
                 labels.get(kind, {}), instances.get(kind, {}), split in unlabeled, used)  # fmt: skip

    if not listing.pairs and not listing.problems:
        raise DiscoveryError(f"no image/label pairs found under {root} for split(s) {', '.join(chosen)}")
    listing.fingerprint = fingerprint(used)
    listing.files = len(used)
    return listing


def _pair_up(listing: Listing, split: str, kind: str, keys: list[tuple[str, str, str]], images: Index,
             labels: Index, instances: Index, unlabeled: bool, used: list[tuple[str, int]]) -> None:  # fmt: skip
    """Append the pairs of one part (``split`` with ``kind`` labels) and its problems to ``listing``;
    the label files used go to ``used``."""
    part = part_name(split, kind)
    for key in keys:
        _, city, frame_id = key
        path, rel, size = images[key]
        if unlabeled:
            listing.pairs.append(Pair(split, city, frame_id, path, rel, size))
            continue
        if key not in labels:
            expected = f"{LABEL_DIRS[kind]}/{split}/{city}/{frame_id}{LABEL_SUFFIXES[kind]}"
            listing.problems.append(Problem(rel, part, f"image without label: {expected} not found"))
            continue
        label_path, label_rel, label_size = labels[key]
        used.append((label_rel, label_size))
        instance = instances.get(key)
        if instance is not None:
            used.append((instance[1], instance[2]))
        listing.pairs.append(Pair(split, city, frame_id, path, rel, size, label_path,
                                  instance[0] if instance else None, kind))  # fmt: skip
    if unlabeled:
        return
    for key in sorted((k for k in labels if k[0] == split), key=lambda k: labels[k][1]):
        if key not in images:
            expected = f"{IMAGE_DIR}/{split}/{key[1]}/{key[2]}{IMAGE_SUFFIX}"
            listing.problems.append(Problem(labels[key][1], part, f"label without image: {expected} not found"))
            used.append((labels[key][1], labels[key][2]))
