"""`segops review import`: corrected masks from a labeling tool back to the Cityscapes layout.

Reads a Label Studio JSON export (tasks with ``annotations``; BrushLabels RLE results) or a
COCO instances JSON (RLE or polygon segmentations, e.g. CVAT's "COCO 1.0" export), and writes
each image's ``gtFine/<split>/<city>/<frame>_gtFine_labelIds.png`` next to its
``leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png``, ready for `segops prepare`.

Class names map to labelIds through segops.core.labels; a name the table does not know is an
error that names it, raised before anything is written. Pixels no mask covers are 0
(``unlabeled``, ignored in training); where masks overlap, the later one in the file wins. An
existing ``_gtFine_color.png`` is rewritten to match, and an existing ``_gtFine_instanceIds.png``
keeps an instance id only where its class is still the pixel's class (elsewhere the pixel's
labelId, Cityscapes' value for pixels without an instance), so weight maps follow the correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segops.core import fs, imageio, labels, layout
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
    data = task.get("data", {})
    if data.get("segops_path"):
        return data["segops_path"]
    url = str(data.get(LS_TO_NAME, ""))
    if image_root is None or not url.startswith(LOCAL_FILES_PREFIX):
        raise ReviewError(f"task {task.get('id')}: no data.segops_path and no --image-root to resolve {url!r}")
    return fs.join(image_root, url[len(LOCAL_FILES_PREFIX) :])


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


def unknown_names(items: list[Corrected]) -> list[str]:
    """Class names of ``items`` that segops.core.labels cannot write as a labelId."""
    used = {name for item in items for name, _ in item.masks}
    return sorted(n for n in used if n not in labels.NAME_TO_LABEL or labels.NAME_TO_LABEL[n].id < 0)


def label_ids(item: Corrected) -> np.ndarray:
    """The labelIds image of one corrected image (0 where no mask covers a pixel)."""
    out = np.zeros((item.height, item.width), np.uint8)
    for name, decode in item.masks:
        mask = decode()
        if mask.shape != out.shape:
            raise ReviewError(f"{item.image_path}: a {name!r} mask is {mask.shape}, the image {out.shape}")
        out[mask] = labels.NAME_TO_LABEL[name].id
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


def write_corrected(item: Corrected) -> str:
    """Write the labelIds PNG (and update existing colour/instance PNGs); returns its path."""
    target = target_path(item)
    h, w = imageio.image_size(fs.read_bytes(item.image_path))
    if (h, w) != (item.height, item.width):
        raise ReviewError(f"{item.image_path} is {h}x{w}, its corrected masks {item.height}x{item.width}")
    ids = label_ids(item)
    fs.write_bytes_atomic(target, imageio.encode_mask_png(ids))
    color = sibling(target, layout.COLOR_SUFFIX)
    if fs.exists(color):
        fs.write_bytes_atomic(color, imageio.encode_png(labels.LABEL_ID_TO_COLOR[ids]))
    instance = sibling(target, layout.INSTANCE_SUFFIX)
    if fs.exists(instance):
        old = imageio.decode_instance_png(fs.read_bytes(instance))
        fs.write_bytes_atomic(instance, imageio.encode_png(follow_instances(old, ids)))
    return target


def read_corrections(path: str, fmt: str = "auto", image_root: str | None = None) -> tuple[list[Corrected], list[str]]:
    """The corrected images of a Label Studio or COCO file, checked: every image maps to a
    gtFine path and every class name to a labelId (ReviewError naming the unknown ones)."""
    if fmt not in FORMATS:
        raise ReviewError(f"--format must be one of {', '.join(FORMATS)}")
    data = fs.read_json(path)
    fmt = detect_format(data) if fmt == "auto" else fmt
    image_root = fs.normalise(image_root) if image_root else None
    items, skipped = (label_studio_corrections if fmt == "label-studio" else coco_corrections)(data, image_root)
    unknown = unknown_names(items)
    if unknown:
        raise ReviewError(f"unknown class name(s) in {path}: {', '.join(map(repr, unknown))}; segops knows the "
                          f"Cityscapes names: {', '.join(lb.name for lb in labels.LABELS if lb.id >= 0)}")  # fmt: skip
    for item in items:
        target_path(item)
    return items, skipped


def import_corrections(path: str, fmt: str = "auto", image_root: str | None = None) -> ImportReport:
    """Read and check every correction in ``path``, then write them."""
    items, skipped = read_corrections(path, fmt, image_root)
    return ImportReport([write_corrected(item) for item in items], skipped)
