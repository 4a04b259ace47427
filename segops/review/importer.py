"""`segops review import`: corrected masks from a labeling tool back to the Cityscapes layout.

Reads a Label Studio JSON export (tasks with ``annotations``; BrushLabels RLE results) or a
COCO instances JSON (RLE or polygon segmentations, e.g. CVAT's "COCO 1.0" export), and writes
each image's ``gtFine/<split>/<city>/<frame>_gtFine_labelIds.png`` next to its
``leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png``, ready for `segops prepare`.

Class names map to labelIds through a label set (``--label-set``, default Cityscapes;
segops.core.label_sets); a name the set does not know is an error that names it, raised before
anything is written. Pixels no mask covers get the set's void id (its lowest ignored labelId:
0, ``unlabeled``, for Cityscapes; ignored in training); where masks overlap, the later one in the file wins. An
existing ``_gtFine_color.png`` is rewritten to match, and an existing ``_gtFine_instanceIds.png``
keeps an instance id only where its class is still the pixel's class (elsewhere the pixel's
labelId, Cityscapes' value for pixels without an instance), so weight maps follow the correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import numpy as np

from segops.core import fs, imageio, layout
from segops.core.label_sets import LabelSet, cityscapes
from segops.core.labels import IGNORE_ID
from segops.inference.discovery import cityscapes_label_for
from segops.review import ReviewError, brush
from segops.review.export import LOCAL_FILES_PREFIX, LS_RESULT_TYPE, LS_TO_NAME

FORMATS = ("auto", "label-studio", "coco")
INSTANCE_ID_BASE = 1000  # Cityscapes instanceIds: labelId * 1000 + instance index


@dataclass
class Corrected:
    """One image's corrected masks, in file order: (class name, bool mask (H, W))."""

    image_path: str
    height: int
    width: int
    masks: list[tuple[str, Any]] = field(default_factory=list)  # mask decoded lazily: a callable


@dataclass
class ImportReport:
    written: list[str]  # labelIds PNGs
    skipped: list[str]  # images the file holds no (non-cancelled) annotation for


def detect_format(data: Any) -> str:
    if isinstance(data, list):
        return "label-studio"
    if isinstance(data, dict) and {"images", "annotations", "categories"} <= data.keys():
        return "coco"
    raise ReviewError("the file is neither a Label Studio JSON export (a list of tasks) nor COCO (images, "
                      "annotations, categories)")  # fmt: skip


def _ls_image_path(task: dict[str, Any], image_root: str | None) -> str:
    """``data.segops_path``, else the local-files URL's path (``?d=``, percent-decoded as Label
    Studio's own storage URLs need; with or without a host) under ``image_root``: the document
    root of Label Studio for exports since the URLs start at ``leftImg8bit/``, the infer run's
    INPUT (``DATA/leftImg8bit/<split>``) for older ones."""
    data = task.get("data", {})
    if data.get("segops_path"):
        return data["segops_path"]
    url = str(data.get(LS_TO_NAME, ""))
    _, found, path = url.partition(LOCAL_FILES_PREFIX)
    if image_root is None or not found:
        raise ReviewError(f"task {task.get('id')}: no data.segops_path and no --image-root to resolve {url!r}")
    return fs.join(image_root, unquote(path))


def label_studio_corrections(tasks: list[dict[str, Any]], image_root: str | None) -> tuple[list[Corrected], list[str]]:
    """(images with a completed annotation, paths of tasks without one)."""
    out, skipped = [], []
    for task in tasks:
        path = _ls_image_path(task, image_root)
        done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if not done:
            skipped.append(path)
            continue
        results = done[-1].get("result", [])  # the latest submitted annotation
        other = sorted({r.get("type") for r in results} - {LS_RESULT_TYPE})
        if other:
            raise ReviewError(f"{path}: only brush masks ({LS_RESULT_TYPE}) are read, the annotation has {', '.join(map(str, other))}")
        sizes = {(r["original_height"], r["original_width"]) for r in results}
        if len(sizes) > 1:
            raise ReviewError(f"{path}: brush results of different sizes {sorted(sizes)}")
        h, w = sizes.pop() if sizes else imageio.image_size(fs.read_bytes(path))
        item = Corrected(path, int(h), int(w))
        for r in results:
            rle = r["value"]["rle"]
            for name in r["value"].get(LS_RESULT_TYPE, []):
                item.masks.append((name, lambda rle=rle, h=h, w=w: brush.rle_to_mask(rle, h, w)))
        out.append(item)
    return out, skipped


def _coco_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def coco_corrections(data: dict[str, Any], image_root: str | None) -> tuple[list[Corrected], list[str]]:
    """(images with annotations, paths of images without any)."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out, skipped = [], []
    for image in data["images"]:
        path = image.get("segops_path")
        if not path:
            if image_root is None:
                raise ReviewError(f"image {image['file_name']!r} has no segops_path: give --image-root (the root its file_name is relative to)")
            path = fs.join(image_root, image["file_name"])
        anns = by_image.get(image["id"], [])
        if not anns:
            skipped.append(path)
            continue
        h, w = int(image["height"]), int(image["width"])
        item = Corrected(path, h, w)
        for ann in anns:
            name = names.get(ann["category_id"], f"<category id {ann['category_id']}>")
            item.masks.append((name, lambda seg=ann["segmentation"], h=h, w=w: _coco_mask(seg, h, w)))
        out.append(item)
    return out, skipped


def name_to_label_id(label_set: LabelSet) -> dict[str, int]:
    """Class name -> the labelId it is written as (the first label of that name with an id)."""
    ids: dict[str, int] = {}
    for lb in label_set.labels:
        if lb.id >= 0:
            ids.setdefault(lb.name, lb.id)
    return ids


def unknown_names(items: list[Corrected], label_set: LabelSet) -> list[str]:
    """Class names of ``items`` that ``label_set`` cannot write as a labelId."""
    used = {name for item in items for name, _ in item.masks}
    return sorted(used - set(name_to_label_id(label_set)))


def label_ids(item: Corrected, label_set: LabelSet) -> np.ndarray:
    """The labelIds image of one corrected image (the set's void id, its lowest ignored labelId,
    where no mask covers a pixel: 0, unlabeled, for Cityscapes)."""
    ids = name_to_label_id(label_set)
    out = np.full((item.height, item.width), label_set.train_to_label[IGNORE_ID], np.uint8)
    for name, decode in item.masks:
        mask = decode()
        if mask.shape != out.shape:
            raise ReviewError(f"{item.image_path}: a {name!r} mask is {mask.shape}, the image {out.shape}")
        out[mask] = ids[name]
    return out


def sibling(label_path: str, suffix: str) -> str:
    return label_path[: -len(layout.LABEL_SUFFIX)] + suffix


def follow_instances(instances: np.ndarray, new_labels: np.ndarray) -> np.ndarray:
    """Instance ids kept where their class still is the pixel's class, the labelId elsewhere."""
    old_class = np.where(instances >= INSTANCE_ID_BASE, instances // INSTANCE_ID_BASE, instances)
    return np.where(old_class == new_labels, instances, new_labels).astype(np.uint16)


def target_path(item: Corrected) -> str:
    target = cityscapes_label_for(item.image_path)
    if target is None:
        raise ReviewError(f"{item.image_path} is not in the Cityscapes layout "
                          f"(ROOT/{layout.IMAGE_DIR}/<split>/<city>/<frame>{layout.IMAGE_SUFFIX}), so it has no gtFine place")  # fmt: skip
    return target


def write_corrected(item: Corrected, label_set: LabelSet) -> str:
    """Write the labelIds PNG (and update existing colour/instance PNGs); returns its path."""
    target = target_path(item)
    h, w = imageio.image_size(fs.read_bytes(item.image_path))
    if (h, w) != (item.height, item.width):
        raise ReviewError(f"{item.image_path} is {h}x{w}, its corrected masks {item.height}x{item.width}")
    ids = label_ids(item, label_set)
    fs.write_bytes_atomic(target, imageio.encode_mask_png(ids))
    color = sibling(target, layout.COLOR_SUFFIX)
    if fs.exists(color):
        fs.write_bytes_atomic(color, imageio.encode_png(label_set.label_to_color[ids]))
    instance = sibling(target, layout.INSTANCE_SUFFIX)
    if fs.exists(instance):
        old = imageio.decode_instance_png(fs.read_bytes(instance))
        fs.write_bytes_atomic(instance, imageio.encode_png(follow_instances(old, ids)))
    return target


def read_corrections(path: str, fmt: str = "auto", image_root: str | None = None, label_set: LabelSet | None = None
                     ) -> tuple[list[Corrected], list[str]]:  # fmt: skip
    """The corrected images of a Label Studio or COCO file, checked: every image maps to a
    gtFine path and every class name to a labelId of ``label_set`` (default Cityscapes;
    ReviewError naming the unknown ones)."""
    label_set = label_set or cityscapes()
    if fmt not in FORMATS:
        raise ReviewError(f"--format must be one of {', '.join(FORMATS)}")
    data = fs.read_json(path)
    fmt = detect_format(data) if fmt == "auto" else fmt
    image_root = fs.normalise(image_root) if image_root else None
    items, skipped = (label_studio_corrections if fmt == "label-studio" else coco_corrections)(data, image_root)
    unknown = unknown_names(items, label_set)
    if unknown:
        raise ReviewError(f"unknown class name(s) in {path}: {', '.join(map(repr, unknown))}; label set "
                          f"{label_set.name!r} has: {', '.join(name_to_label_id(label_set))}")  # fmt: skip
    for item in items:
        target_path(item)
    return items, skipped


def import_corrections(path: str, fmt: str = "auto", image_root: str | None = None,
                       label_set: LabelSet | None = None) -> ImportReport:  # fmt: skip
    """Read and check every correction in ``path``, then write them as ``label_set``'s labelIds
    (default Cityscapes: the taxonomy the dataset's gtFine files are in)."""
    label_set = label_set or cityscapes()
    items, skipped = read_corrections(path, fmt, image_root, label_set)
    return ImportReport([write_corrected(item, label_set) for item in items], skipped)
