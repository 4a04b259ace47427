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

Where it runs. The rules are plain functions over listed files, so the prepare pipeline applies
them on workers (``workflows/prepare_listing.py``): :func:`listing_patterns` (one pattern per top
folder, what the driver hands over), :func:`classify` (one listed file), :func:`plan_parts` (the
parts and skipped splits, from which splits have images and labels), :func:`resolve_frame` (the
files of one frame id -> its pairs, problems and the files used). :func:`discover` is the same
rules over one local listing, for tools and tests.

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
from typing import NamedTuple

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
    stage: str = deadletter.DISCOVER

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


def _split_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


IMAGE = "image"  # the roles of a listed file
LABEL = "label"
INSTANCE = "instance"


class ListedFile(NamedTuple):
    """One file of the layout that prepare may read: its role, annotation kind (images: fine),
    (split, city, frame id), full path, path relative to the root and size."""

    role: str
    kind: str
    split: str
    city: str
    frame_id: str
    path: str
    rel: str
    size: int


def annotation_kinds(annotations: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The kinds asked for, in layout order; DiscoveryError when none is known."""
    kinds = tuple(k for k in ANNOTATION_KINDS if k in annotations)
    if not kinds:
        raise DiscoveryError(f"no annotation kind among {tuple(annotations)}: expected some of {ANNOTATION_KINDS}")
    return kinds


def listing_patterns(root: str, kinds: tuple[str, ...]) -> list[str]:
    """``root/<top>/*/*/<files>``, one pattern per top folder (on object stores each is one prefix
    listing): images, then each kind's labels (gtFine: labelIds and instanceIds in one)."""
    tops = [(IMAGE_DIR, "*" + IMAGE_SUFFIX)]
    tops += [(LABEL_DIR, LABEL_FILES_GLOB) if k == FINE else (LABEL_DIRS[k], "*" + LABEL_SUFFIXES[k]) for k in kinds]
    return [join(root, top, "*", "*", files) for top, files in tops]


def _roles(kinds: tuple[str, ...]) -> dict[str, list[tuple[str, str, str]]]:
    """Top folder -> (role, kind, suffix) of the files read there. gtCoarse instanceIds hold no
    instances (no id >= 1000), so they are not read: border terms use components."""
    roles = {IMAGE_DIR: [(IMAGE, FINE, IMAGE_SUFFIX)]}
    for kind in kinds:
        roles[LABEL_DIRS[kind]] = [(LABEL, kind, LABEL_SUFFIXES[kind])]
    if FINE in kinds:
        roles[LABEL_DIR].append((INSTANCE, FINE, INSTANCE_SUFFIX))
    return roles


def classify(path: str, size: int, root: str, kinds: tuple[str, ...]) -> ListedFile | None:
    """The :class:`ListedFile` of ``path`` if it is ``root/<top>/<split>/<city>/<frame><suffix>``
    for a role read with ``kinds``; None for anything else."""
    prefix = root + "/"
    rel = path[len(prefix) :] if path.startswith(prefix) else path
    parts = rel.split("/")
    if len(parts) != 4:
        return None
    for role, kind, suffix in _roles(kinds).get(parts[0], []):
        if parts[3].endswith(suffix) and len(parts[3]) > len(suffix):
            return ListedFile(role, kind, parts[1], parts[2], parts[3][: -len(suffix)], path, rel, int(size))
    return None


@dataclass(frozen=True)
class Plan:
    """Which parts a run writes, decided from which splits have images and labels."""

    root: str
    parts: tuple[tuple[str, str], ...]  # (split, kind) in write order
    unlabeled_splits: tuple[str, ...]
    skipped: dict[str, str]  # split -> why it was not processed

    @property
    def splits(self) -> list[str]:
        """The parts' names: ``<split>`` (fine or image-only), ``coarse/<split>``."""
        return [part_name(s, k) for s, k in self.parts]

    @property
    def chosen(self) -> set[str]:
        return {s for s, _ in self.parts}


def plan_parts(root: str, image_splits: set[str], label_splits: dict[str, set[str]], kinds: tuple[str, ...],
               splits: list[str] | tuple[str, ...] | None = None,
               unlabeled_splits: list[str] | tuple[str, ...] = DEFAULT_UNLABELED_SPLITS) -> Plan:  # fmt: skip
    """The plan for ``splits`` (default: all usable ones), given the splits with images and, per
    kind in ``kinds``, those with labels. Raises :class:`DiscoveryError` if a requested split has
    no images, nothing is found, or coarse annotations are asked for and there are none."""
    label_splits = {k: label_splits.get(k, set()) for k in kinds}
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
        any_labels = set().union(*label_splits.values())
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
        if s not in unlabeled:
            mine = [k for k in kinds if s in label_splits[k]] if len(kinds) > 1 else list(kinds)
            parts.extend((s, k) for k in mine or kinds[:1])
    parts.sort(key=lambda p: (ANNOTATION_KINDS.index(p[1]), _split_key(p[0])))
    return Plan(root, tuple(parts), tuple(s for s in chosen if s in unlabeled), dict(sorted(skipped.items())))


class Resolved(NamedTuple):
    """What one frame id contributes: pairs, problems, and the (relative path, size) of every
    input file it used (for the fingerprint)."""

    pairs: list[Pair]
    problems: list[Problem]
    used: list[tuple[str, int]]


def resolve_frame(plan: Plan, files: list[ListedFile]) -> Resolved:
    """The pairs and problems of one frame id, from every listed file with that id. Its first
    image in (split, city) order is kept, any other is a duplicate."""
    out = Resolved([], [], [])
    chosen = plan.chosen
    images = {(f.split, f.city): f for f in files if f.role == IMAGE and f.split in chosen}
    found = {(f.role, f.kind, f.split, f.city): f for f in files if f.role != IMAGE}
    order = sorted(images, key=lambda k: (_split_key(k[0]), k[1]))
    for key in order[1:]:
        dup, kept = images[key], images[order[0]]
        part = part_name(dup.split, next(k for s, k in plan.parts if s == dup.split))
        out.problems.append(Problem(dup.rel, part, f"duplicate frame id: {dup.frame_id} is also at {kept.rel}, which is kept"))
    out.used.extend((images[key].rel, images[key].size) for key in order)
    for split, kind in plan.parts:
        image = images.get(order[0]) if order and order[0][0] == split else None
        if split in plan.unlabeled_splits:
            if image is not None:
                out.pairs.append(Pair(split, image.city, image.frame_id, image.path, image.rel, image.size))
            continue
        part = part_name(split, kind)
        if image is not None:
            _pair_image(out, image, kind, part, found)
        for (role, k, s, city), label in sorted(found.items()):
            if role == LABEL and k == kind and s == split and (s, city) not in images:
                expected = f"{IMAGE_DIR}/{split}/{city}/{label.frame_id}{IMAGE_SUFFIX}"
                out.problems.append(Problem(label.rel, part, f"label without image: {expected} not found"))
                out.used.append((label.rel, label.size))
    return out


def _pair_image(out: Resolved, image: ListedFile, kind: str, part: str,
                found: dict[tuple[str, str, str, str], ListedFile]) -> None:  # fmt: skip
    """The pair of ``image`` with its ``kind`` label (and instances), or the missing label's problem."""
    label = found.get((LABEL, kind, image.split, image.city))
    if label is None:
        expected = f"{LABEL_DIRS[kind]}/{image.split}/{image.city}/{image.frame_id}{LABEL_SUFFIXES[kind]}"
        out.problems.append(Problem(image.rel, part, f"image without label: {expected} not found"))
        return
    instance = found.get((INSTANCE, kind, image.split, image.city))
    out.used.append((label.rel, label.size))
    if instance is not None:
        out.used.append((instance.rel, instance.size))
    out.pairs.append(Pair(image.split, image.city, image.frame_id, image.path, image.rel, image.size, label.path,
                          instance.path if instance else None, kind))  # fmt: skip


def fingerprint(entries: list[tuple[str, int]]) -> str:
    """sha256 of the sorted ``relative path<TAB>size`` lines: changes when any input file does."""
    digest = hashlib.sha256()
    for rel, size in sorted(entries):
        digest.update(f"{rel}\t{size}\n".encode())
    return digest.hexdigest()


def split_sets(files: list[ListedFile]) -> tuple[set[str], dict[str, set[str]]]:
    """The splits with images, and per kind the splits with labels (what :func:`plan_parts` needs)."""
    image_splits = {f.split for f in files if f.role == IMAGE}
    label_splits: dict[str, set[str]] = {}
    for f in files:
        if f.role == LABEL:
            label_splits.setdefault(f.kind, set()).add(f.split)
    return image_splits, label_splits


def no_pairs_error(root: str, plan: Plan) -> DiscoveryError:
    chosen = sorted(plan.chosen, key=_split_key)
    return DiscoveryError(f"no image/label pairs found under {root} for split(s) {', '.join(chosen)}")


def discover(
    root: str,
    splits: list[str] | tuple[str, ...] | None = None,
    unlabeled_splits: list[str] | tuple[str, ...] = DEFAULT_UNLABELED_SPLITS,
    annotations: tuple[str, ...] = (FINE,),
) -> Listing:
    """The rules of this module over one local listing of ``root`` (tools and tests; the prepare
    pipeline lists on workers): the pairs of ``splits`` (default: all usable ones), with the
    labels of each kind in ``annotations`` (``fine``: gtFine/, ``coarse``: gtCoarse/). Raises
    :class:`DiscoveryError` as :func:`plan_parts` does."""
    root = root.rstrip("/") or "/"
    kinds = annotation_kinds(annotations)
    by_path = {path: size for pattern in listing_patterns(root, kinds) for path, size in match_sized(pattern)}
    files = [f for f in (classify(path, size, root, kinds) for path, size in by_path.items()) if f is not None]
    plan = plan_parts(root, *split_sets(files), kinds, splits, unlabeled_splits)
    frames: dict[str, list[ListedFile]] = {}
    for f in files:
        frames.setdefault(f.frame_id, []).append(f)
    listing = Listing(root, plan.splits, list(plan.unlabeled_splits), skipped=plan.skipped)
    used: list[tuple[str, int]] = []
    for group in frames.values():
        resolved = resolve_frame(plan, group)
        listing.pairs += resolved.pairs
        listing.problems += resolved.problems
        used += resolved.used
    index = {part: i for i, part in enumerate(plan.splits)}
    listing.pairs.sort(key=lambda p: (index[p.part], p.city, p.frame_id))
    listing.problems.sort(key=lambda p: (index[p.split], p.path))
    if not listing.pairs and not listing.problems:
        raise no_pairs_error(root, plan)
    listing.fingerprint, listing.files = fingerprint(used), len(used)
    return listing
