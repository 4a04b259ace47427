"""Which images an infer run reads: the input root and match pattern for a directory, a glob or a
Cityscapes split; each image's relative path (the mask layout mirrors it); and where its ground
truth is (``--labels`` root, or the ``gtFine`` mirror of a ``leftImg8bit`` tree)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from segops.core import fs, layout
from segops.inference.options import InferOptions


@dataclass(frozen=True)
class WorkItem:
    """One input image, where its ground truth is (if any) and where its masks go."""

    path: str
    rel: str  # path relative to the input root; the mask layout mirrors it
    label_path: str | None = None

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
    """List input images (PNG/JPEG) and pair them with ground truth, with one match per root.

    Ground truth, when ``options.labels`` is set, is looked up under that root at the image's
    relative path (:func:`label_candidates`); otherwise, for Cityscapes names, in the ``gtFine``
    mirror of the ``leftImg8bit`` tree. Files under the output directory are never inputs.
    """
    root, pattern = input_root(options.source)
    items = [WorkItem(p, fs.relpath(p, root)) for p in fs.match(pattern) if is_input_image(p, options.output)]
    if not items:
        return []
    if options.labels:
        existing = set(fs.match(fs.join(options.labels, "**")))
        return [
            WorkItem(it.path, it.rel, next((c for c in label_candidates(it.rel, options.labels) if c in existing), None))
            for it in items
        ]
    mirror = cityscapes_label_for(fs.join(root, "x" + layout.IMAGE_SUFFIX))
    if mirror is None:
        return items
    existing = set(fs.match(fs.join(posixpath.dirname(mirror), "**")))
    out = []
    for it in items:
        label = cityscapes_label_for(it.path)
        out.append(WorkItem(it.path, it.rel, label if label in existing else None))
    return out
