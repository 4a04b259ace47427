"""What infer writes per image besides its row: the mask files' names (mirroring the input's
relative path) and their encodings (trainIds, labelIds, colour PNGs, optional overlay JPEG), and
the per-pixel confidence statistics taken from the probabilities. Ids and colours are the
model's label set's (Cityscapes by default); a mapped model's unmapped classes are ignore (255)."""

from __future__ import annotations

import functools

import numpy as np

from segops.core import fs, imageio, layout
from segops.core.label_sets import LabelSet, cityscapes
from segops.core.labels import IGNORE_ID
from segops.inference.discovery import WorkItem
from segops.inference.probabilities import TopK

LOW_CONFIDENCE = 0.5  # a pixel whose top probability is below this counts as low-confidence


def mask_paths(output: str, item: WorkItem, overlay: bool = False) -> dict[str, str]:
    """Output files of ``item``: masks/<stem>_trainIds.png, _labelIds.png, _color.png[, _overlay.jpg]."""
    kinds = layout.MASK_KINDS + ((layout.OVERLAY_KIND,) if overlay else ())
    return {kind: fs.join(output, layout.MASKS_DIR, layout.mask_name(item.stem, kind)) for kind in kinds}


@functools.cache
def _bgr_colors(label_set: LabelSet) -> np.ndarray:
    return np.ascontiguousarray(label_set.train_to_color[:, ::-1])


def unmapped_to_ignore(train_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels >= ``num_classes`` (the extra "unmapped" class of a card's class_map) -> 255."""
    if train_ids.size and int(train_ids.max()) >= num_classes:
        train_ids = np.where(train_ids >= num_classes, np.uint8(IGNORE_ID), train_ids).astype(np.uint8)
    return train_ids


def overlay_image(rgb: np.ndarray, train_ids: np.ndarray, alpha: float = 0.5, label_set: LabelSet | None = None) -> np.ndarray:
    color = (label_set or cityscapes()).colorize(train_ids).astype(np.float32)
    return (rgb.astype(np.float32) * (1 - alpha) + color * alpha + 0.5).astype(np.uint8)


def encode_masks(rgb: np.ndarray, train_ids: np.ndarray, overlay: bool, train_ids_text: dict[str, str] | None = None,
                 label_set: LabelSet | None = None) -> dict[str, bytes]:  # fmt: skip
    """Each mask file's bytes in ``label_set``'s ids and colours (Cityscapes when None);
    ``train_ids_text``: text chunks of the trainIds PNG (its provenance, segops.inference.previous)."""
    ls = label_set or cityscapes()
    train_ids_png = imageio.encode_mask_png(train_ids)
    out = {
        "trainIds": imageio.with_png_text(train_ids_png, train_ids_text) if train_ids_text else train_ids_png,
        "labelIds": imageio.encode_mask_png(ls.to_label_ids(train_ids)),
        "color": imageio.encode_png(_bgr_colors(ls)[train_ids], bgr=True),  # no RGB->BGR copy of a large image
    }
    if overlay:
        out[layout.OVERLAY_KIND] = imageio.encode_jpeg(overlay_image(rgb, train_ids, label_set=ls))
    return out


def confidence_stats(probs: np.ndarray | TopK) -> tuple[np.ndarray, float, float]:
    """(argmax trainIds uint8, mean top probability, fraction of pixels with top prob < 0.5)."""
    if isinstance(probs, TopK):
        top = probs.top()
        low = float(np.count_nonzero(top < LOW_CONFIDENCE)) / top.size
        return probs.argmax().copy(), float(top.mean(dtype=np.float64)), low
    top = probs.max(axis=2)
    return probs.argmax(axis=2).astype(np.uint8), float(top.mean()), float((top < LOW_CONFIDENCE).mean())
