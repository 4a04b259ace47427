"""Which images an infer run reads: the input root and the patterns that list it (one per top-level
directory, so listing spreads over workers), each image's relative path (the mask layout mirrors
it) and fingerprint (size, modification time), and where its ground truth is (``--labels`` root,
or the ``gtFine`` mirror of a ``leftImg8bit`` tree). Everything here runs per element on workers
except :func:`discover_inputs`, the same listing in one process for tools and tests.

:func:`list_pattern` lists one pattern. On local disks it walks the directory itself (one
``stat`` per file) instead of Beam's ``MatchAll``, which silently drops a file it cannot stat:
a broken symbolic link comes out as :class:`Unlisted` with a reason, so it is dead-lettered."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from segops.core import fs, layout
from segops.inference.options import InferOptions


@dataclass(frozen=True)
class WorkItem:
    """One input image, where its ground truth is (if any) and where its masks go."""

    path: str
    rel: str  # path relative to the input root; the mask layout mirrors it
    label_path: str | None = None
    size: int | None = None  # bytes, and modification time (epoch seconds): the input's fingerprint
    mtime: float | None = None

    @property
    def fingerprint(self) -> tuple[int | None, float | None]:
        return self.size, self.mtime

    @property
    def stem(self) -> str:
        """``rel`` without extension and without Cityscapes' ``_leftImg8bit`` suffix."""
        base = posixpath.splitext(self.rel)[0]
        suffix = layout.IMAGE_STEM_SUFFIX
        return base[: -len(suffix)] if base.endswith(suffix) else base


def input_root(source: str) -> tuple[str, str]:
    """(root that relative paths start from, Beam match pattern) of a directory or a glob."""
    if fs.is_glob(source):
        fixed = []
        for part in source.split("/"):
            if fs.is_glob(part):
                break
            fixed.append(part)
        return "/".join(fixed), source
    return source, fs.join(source, "**")


def listing_patterns(source: str) -> list[str]:
    """Match patterns that together list ``source``: for a local directory one per top-level
    subdirectory (``sub/**``) plus one for its own files, so each can be matched on a different
    worker; a glob, or a directory on an object store (no cheap directory listing), is one pattern."""
    root, pattern = input_root(source)
    if fs.is_glob(source) or fs.has_scheme(root) or not os.path.isdir(root):
        return [pattern]
    with os.scandir(root) as entries:
        subdirs = sorted(e.name for e in entries if e.is_dir())
    return [fs.join(root, "*"), *(fs.join(root, d, "**") for d in subdirs)]


@dataclass(frozen=True)
class Unlisted:
    """A listed name that is not a readable file (a broken symbolic link), and why."""

    path: str
    reason: str


def list_pattern(pattern: str) -> Iterator[Any]:
    """Beam ``FileMetadata`` of every file matching ``pattern`` (Beam's glob syntax: ``*``
    within a directory, ``**`` across them), and :class:`Unlisted` for names that match but
    cannot be stat-ed. Object stores: Beam's own match."""
    from apache_beam.io.filesystem import FileMetadata, FileSystem

    if fs.has_scheme(pattern):
        yield from fs.match_metadata(pattern)
        return
    matches = re.compile(FileSystem.translate_pattern(pattern)).match
    prefix = re.match(r"^[^[*?]*", pattern).group(0)  # type: ignore[union-attr]
    top = prefix if os.path.isdir(prefix) else os.path.dirname(prefix)
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(dirpath, name)
            if not matches(path):
                continue
            try:
                st = os.stat(path)
            except OSError as exc:
                target = f" to {os.readlink(path)}" if os.path.islink(path) else ""
                kind = "broken symbolic link" if target and isinstance(exc, FileNotFoundError) else "cannot stat"
                yield Unlisted(path, f"{kind}{target} ({exc.strerror})")
                continue
            yield FileMetadata(path, st.st_size, st.st_mtime)


def find_label(image_path: str, rel: str, labels_root: str | None) -> str | None:
    """The ground truth of one image, if it exists (one existence check per candidate)."""
    if labels_root:
        return next((c for c in label_candidates(rel, labels_root) if fs.exists(c)), None)
    mirror = cityscapes_label_for(image_path)
    return mirror if mirror is not None and fs.exists(mirror) else None


def work_item(path: str, size: int, mtime: float, root: str, output: str, labels_root: str | None) -> WorkItem | None:
    """The WorkItem of one listed file, or None when it is not an input image."""
    if not is_input_image(path, output):
        return None
    rel = fs.relpath(path, root)
    return WorkItem(path, rel, find_label(path, rel, labels_root), int(size), float(mtime))


def is_input_image(path: str, output: str) -> bool:
    """A PNG/JPEG that is not under the output directory nor a Beam temporary file."""
    return (path.lower().endswith(layout.IMAGE_EXTENSIONS) and not path.startswith(output.rstrip("/") + "/")
            and "/beam-temp-" not in path)  # fmt: skip


def cityscapes_label_for(image_path: str) -> str | None:
    """gtFine labelIds path mirroring a ``.../leftImg8bit/<split>/<city>/<x>_leftImg8bit.png``."""
    directory, name = posixpath.split(image_path)
    stem = posixpath.splitext(name)[0]
    marker = f"/{layout.IMAGE_DIR}/"
    suffix = layout.IMAGE_STEM_SUFFIX
    if not stem.endswith(suffix) or marker not in directory + "/":
        return None
    head, _, tail = (directory + "/").rpartition(marker)
    return f"{head}/{layout.LABEL_DIR}/{tail}{stem[: -len(suffix)]}{layout.LABEL_SUFFIX}"


def label_candidates(rel: str, labels_root: str) -> list[str]:
    """Where ``--labels`` may hold the ground truth of image ``rel``: ``<stem>_gtFine_labelIds.png``
    (Cityscapes naming), then ``<name>.png``."""
    directory, name = posixpath.split(rel)
    stem = posixpath.splitext(name)[0]
    candidates = []
    if stem.endswith(layout.IMAGE_STEM_SUFFIX):
        stem_base = stem[: -len(layout.IMAGE_STEM_SUFFIX)]
        candidates.append(posixpath.join(directory, stem_base + layout.LABEL_SUFFIX))
    candidates.append(posixpath.join(directory, stem + ".png"))
    return [fs.join(labels_root, c) for c in candidates]


def discover_inputs(options: InferOptions) -> list[WorkItem]:
    """Every input image of ``options`` listed here, in one process, with the functions the
    pipeline runs on workers (:func:`listing_patterns`, :func:`work_item`); sorted by path.
    For tools and tests: `segops infer` itself never lists on the driver."""
    root, _ = input_root(options.source)
    items = []
    for pattern in listing_patterns(options.source):
        for meta in list_pattern(pattern):
            if isinstance(meta, Unlisted):
                continue
            item = work_item(meta.path, meta.size_in_bytes, meta.last_updated_in_seconds, root, options.output,
                             options.labels)  # fmt: skip
            if item is not None:
                items.append(item)
    return sorted(items, key=lambda it: it.path)
