"""`segops review export`: the selected images, with the model's mask as a pre-annotation, as
files labeling tools import.

* Label Studio: a tasks JSON (``data.image`` an URL Label Studio serves, ``predictions`` with one
  BrushLabels result per class, brush RLE from :mod:`segops.review.brush`) and the labeling
  config XML those tasks expect (one brush label per class, in the label set's colours).
* COCO instances JSON with one RLE annotation (``iscrowd`` 1) per image and class, encoded with
  ``pycocotools.mask``: CVAT imports it as "COCO 1.0" masks; any COCO reader loads it.

Both carry each image's absolute path (``data.segops_path``, ``images[].segops_path``) so that
`review import` finds the image again. With ``image_root`` set, ``file_name`` and the URL are
relative to it. By default COCO's ``file_name`` is relative to the directory the infer run listed
(INPUT, or ``INPUT/leftImg8bit/<split>`` with ``--split``) and the Label Studio URL to the directory above the image tree (:func:`label_studio_url_root`): the
dataset root for the Cityscapes layout (``?d=leftImg8bit/<split>/<city>/<file>``), because Label
Studio serves local files only from a storage strictly below its document root, and that storage
(``DATA/leftImg8bit``) then serves every split.
Classes follow the results table's label set (segops.core.label_sets; Cityscapes by default):
class ids in COCO are its labelIds, names and colours its own.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from segops import __version__
from segops.core import fs, imageio, layout
from segops.core.label_sets import LabelSet, cityscapes
from segops.core.options import FlatOptions, flag
from segops.inference.discovery import WorkItem, cityscapes_label_for
from segops.inference.masks import mask_paths
from segops.review import ReviewError, brush

FORMATS = ("label-studio", "coco")
LS_FROM_NAME = "label"  # the BrushLabels tag of the labeling config
LS_TO_NAME = "image"  # the Image tag
LS_RESULT_TYPE = "brushlabels"
LOCAL_FILES_PREFIX = "/data/local-files/?d="  # Label Studio's local-files storage URL


@dataclass(frozen=True)
class ExportOptions(FlatOptions):
    """Which files to write, and how the tool finds the images: ``image_url_prefix`` + the path
    relative to ``image_root`` (None: :func:`label_studio_url_root` for the URL, the root the
    infer run listed for COCO's ``file_name``)."""

    formats: tuple[str, ...] = field(default=FORMATS, metadata=flag(
        "Files to write (repeatable).", opt="--format", choices=FORMATS, multiple=True))
    image_root: str | None = field(default=None, metadata=flag(
        "Image paths in the files are relative to this. Default: for Label Studio URLs the dataset root "
        "(the directory holding leftImg8bit; for other layouts the parent of the infer run's INPUT), for "
        "COCO's file_name the directory the infer run listed (INPUT, or INPUT/leftImg8bit/SPLIT with --split).",
        metavar="DIR"))
    image_url_prefix: str = field(default=LOCAL_FILES_PREFIX, metadata=flag(
        "Label Studio task image URL = this + the relative path (local-files storage by default)."))

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(self.formats))
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ReviewError(f"--format must be among {', '.join(FORMATS)}, got {', '.join(bad) or 'none'}")
        if self.image_root is not None:
            object.__setattr__(self, "image_root", fs.normalise(self.image_root))


@dataclass
class Exported:
    """One selected image with its predicted trainIds mask."""

    path: str
    relative: str  # COCO file_name: to --image-root, by default the directory the infer run listed
    url_path: str  # the Label Studio URL's path: to --image-root, by default label_studio_url_root
    mask: np.ndarray  # trainIds (H, W)
    model_id: str
    confidence: float | None


def infer_root(path: str, rel_path: str) -> str:
    """The root the infer run listed: ``path`` without its ``rel_path``."""
    if not path.endswith("/" + rel_path):
        raise ReviewError(f"row of {path} has rel_path {rel_path!r} that does not end it")
    return path[: -len(rel_path) - 1]


def label_studio_url_root(path: str, listed_root: str) -> str:
    """The default root of an image's Label Studio URL: the dataset root for an image in the
    Cityscapes layout (``ROOT/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png``), else the
    parent of the root the infer run listed. Label Studio serves ``/data/local-files/?d=P`` as
    ``DOCUMENT_ROOT/P`` only from a local storage strictly below its document root, so the URL
    path starts with that storage's directory: ``leftImg8bit/...`` (or INPUT's name).

    >>> label_studio_url_root("/d/city/leftImg8bit/val/aachen/a_leftImg8bit.png", "/d/city/leftImg8bit/val")
    '/d/city'
    >>> label_studio_url_root("/archive/2026/cam1/f.jpg", "/archive/2026")
    '/archive'
    """
    if cityscapes_label_for(path) is not None:
        return path.rpartition(f"/{layout.IMAGE_DIR}/")[0]
    parent = fs.split(listed_root)[0]
    return parent if parent and len(parent) < len(listed_root) else listed_root


def _relative(path: str, root: str) -> str:
    try:
        return fs.relpath(path, root)
    except ValueError as exc:
        raise ReviewError(f"--image-root {root} does not contain {path}") from exc


def load_exported(infer_out: str, selection: Any, image_root: str | None) -> list[Exported]:
    """The selected images with the masks infer wrote for them (OUT/masks/..._trainIds.png)."""
    items = []
    for row in selection.to_pylist():
        mask_file = mask_paths(infer_out, WorkItem(row["path"], row["rel_path"]))["trainIds"]
        try:
            mask = imageio.decode_label_png(fs.read_bytes(mask_file))
        except (OSError, imageio.BadInput) as exc:
            raise ReviewError(f"cannot read the mask of {row['path']} ({mask_file}): {exc}") from exc
        listed = infer_root(row["path"], row["rel_path"])
        relative = _relative(row["path"], image_root or listed)
        url_path = _relative(row["path"], image_root or label_studio_url_root(row["path"], listed))
        items.append(Exported(row["path"], relative, url_path, mask, row["model_id"], row["mean_confidence"]))
    return items


def _hex(color: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in color)


def label_studio_config(label_set: LabelSet | None = None) -> str:
    """The labeling interface of the exported tasks: the image and one brush label per class of
    ``label_set`` (Cityscapes when None)."""
    lines = ["<View>", f'  <Image name="{LS_TO_NAME}" value="${LS_TO_NAME}" zoom="true"/>',
             f'  <BrushLabels name="{LS_FROM_NAME}" toName="{LS_TO_NAME}">']  # fmt: skip
    lines += [f"    <Label value={quoteattr(lb.name)} background={quoteattr(_hex(lb.color))}/>"
              for lb in (label_set or cityscapes()).train_labels]  # fmt: skip
    lines += ["  </BrushLabels>", "</View>"]
    return "\n".join(lines) + "\n"


def brush_result(name: str, mask: np.ndarray) -> dict[str, Any]:
    """One Label Studio BrushLabels result: the pixels of ``mask`` labelled ``name``."""
    h, w = mask.shape
    return {
        "id": name.replace(" ", "_"),
        "from_name": LS_FROM_NAME,
        "to_name": LS_TO_NAME,
        "type": LS_RESULT_TYPE,
        "original_width": int(w),
        "original_height": int(h),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": brush.mask_to_rle(mask), LS_RESULT_TYPE: [name]},
    }


def label_studio_tasks(items: list[Exported], url_prefix: str, label_set: LabelSet | None = None) -> list[dict[str, Any]]:
    """Label Studio tasks (its JSON import format) with the masks as predictions."""
    tasks = []
    train_labels = (label_set or cityscapes()).train_labels
    for item in items:
        results = [brush_result(lb.name, item.mask == lb.train_id) for lb in train_labels
                   if (item.mask == lb.train_id).any()]  # fmt: skip
        prediction: dict[str, Any] = {"model_version": item.model_id, "result": results}
        if item.confidence is not None:
            prediction["score"] = float(item.confidence)
        tasks.append({
            "data": {LS_TO_NAME: url_prefix + item.url_path, "segops_path": item.path},
            "predictions": [prediction],
        })  # fmt: skip
    return tasks


def coco_categories(label_set: LabelSet | None = None) -> list[dict[str, Any]]:
    return [{"id": lb.id, "name": lb.name, "supercategory": lb.category} for lb in (label_set or cityscapes()).train_labels]


def coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a boolean mask (``counts`` as str, as COCO JSON stores it)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_dataset(items: list[Exported], label_set: LabelSet | None = None) -> dict[str, Any]:
    """A COCO instances dataset: one image per item, one RLE annotation per image and class of
    ``label_set`` (Cityscapes when None)."""
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    for image_id, item in enumerate(items, start=1):
        h, w = item.mask.shape
        images.append({"id": image_id, "file_name": item.relative, "height": int(h), "width": int(w),
                       "segops_path": item.path})  # fmt: skip
        for lb in (label_set or cityscapes()).train_labels:
            mask = item.mask == lb.train_id
            if not mask.any():
                continue
            rle = coco_rle(mask)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": lb.id, "segmentation": rle,
                "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 1,
            })  # fmt: skip
    info = {"description": "segops review export: predictions to correct", "version": __version__,
            "date_created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}  # fmt: skip
    return {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": coco_categories(label_set)}


def export_selection(infer_out: str, selection: Any, out_dir: str, options: ExportOptions) -> dict[str, str]:
    """Write the files of ``options.formats`` into ``out_dir``; returns {what: path}."""
    from segops.inference import table

    items = load_exported(infer_out, selection, options.image_root)
    label_set = table.table_label_set(table.open_table(infer_out))
    written: dict[str, str] = {}
    if "label-studio" in options.formats:
        written["label_studio_tasks"] = fs.join(out_dir, layout.LABEL_STUDIO_TASKS_FILE)
        fs.write_json_atomic(written["label_studio_tasks"], label_studio_tasks(items, options.image_url_prefix, label_set),
                            indent=None)  # fmt: skip
        written["label_studio_config"] = fs.join(out_dir, layout.LABEL_STUDIO_CONFIG_FILE)
        fs.write_bytes_atomic(written["label_studio_config"], label_studio_config(label_set).encode())
    if "coco" in options.formats:
        written["coco"] = fs.join(out_dir, layout.COCO_FILE)
        fs.write_json_atomic(written["coco"], coco_dataset(items, label_set), indent=None)
    return written
