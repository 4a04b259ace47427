"""The official Cityscapes label table, and every lookup derived from it.

The table is data (as in cityscapesScripts' ``helpers/labels.py``); nothing else in segops
hard-codes a label id, a trainId or a colour. Lookups are numpy arrays so that mapping a whole
image is one fancy-indexing operation.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE_ID = 255  # trainId of pixels that never count in loss or metrics


class Label(NamedTuple):
    name: str
    id: int  # labelId as stored in *_gtFine_labelIds.png
    train_id: int  # 0..18 for the evaluation classes, 255 (or -1) for ignored ones
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]  # RGB


# fmt: off
LABELS: tuple[Label, ...] = (
    #      name                    id  trainId category       catId inst   ignore colour
    Label("unlabeled",              0, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("ego vehicle",            1, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("rectification border",   2, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("out of roi",             3, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("static",                 4, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("dynamic",                5, 255, "void",         0, False, True,  (111, 74, 0)),
    Label("ground",                 6, 255, "void",         0, False, True,  (81, 0, 81)),
    Label("road",                   7,   0, "flat",         1, False, False, (128, 64, 128)),
    Label("sidewalk",               8,   1, "flat",         1, False, False, (244, 35, 232)),
    Label("parking",                9, 255, "flat",         1, False, True,  (250, 170, 160)),
    Label("rail track",            10, 255, "flat",         1, False, True,  (230, 150, 140)),
    Label("building",              11,   2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall",                  12,   3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence",                 13,   4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail",            14, 255, "construction", 2, False, True,  (180, 165, 180)),
    Label("bridge",                15, 255, "construction", 2, False, True,  (150, 100, 100)),
    Label("tunnel",                16, 255, "construction", 2, False, True,  (150, 120, 90)),
    Label("pole",                  17,   5, "object",       3, False, False, (153, 153, 153)),
    Label("polegroup",             18, 255, "object",       3, False, True,  (153, 153, 153)),
    Label("traffic light",         19,   6, "object",       3, False, False, (250, 170, 30)),
    Label("traffic sign",          20,   7, "object",       3, False, False, (220, 220, 0)),
    Label("vegetation",            21,   8, "nature",       4, False, False, (107, 142, 35)),
    Label("terrain",               22,   9, "nature",       4, False, False, (152, 251, 152)),
    Label("sky",                   23,  10, "sky",          5, False, False, (70, 130, 180)),
    Label("person",                24,  11, "human",        6, True,  False, (220, 20, 60)),
    Label("rider",                 25,  12, "human",        6, True,  False, (255, 0, 0)),
    Label("car",                   26,  13, "vehicle",      7, True,  False, (0, 0, 142)),
    Label("truck",                 27,  14, "vehicle",      7, True,  False, (0, 0, 70)),
    Label("bus",                   28,  15, "vehicle",      7, True,  False, (0, 60, 100)),
    Label("caravan",               29, 255, "vehicle",      7, True,  True,  (0, 0, 90)),
    Label("trailer",               30, 255, "vehicle",      7, True,  True,  (0, 0, 110)),
    Label("train",                 31,  16, "vehicle",      7, True,  False, (0, 80, 100)),
    Label("motorcycle",            32,  17, "vehicle",      7, True,  False, (0, 0, 230)),
    Label("bicycle",               33,  18, "vehicle",      7, True,  False, (119, 11, 32)),
    Label("license plate",         -1,  -1, "vehicle",      7, False, True,  (0, 0, 142)),
)
# fmt: on

# --- derived lookups -------------------------------------------------------------------------

NAME_TO_LABEL: dict[str, Label] = {label.name: label for label in LABELS}
ID_TO_LABEL: dict[int, Label] = {label.id: label for label in LABELS}

TRAIN_LABELS: tuple[Label, ...] = tuple(
    sorted((lb for lb in LABELS if 0 <= lb.train_id < IGNORE_ID), key=lambda lb: lb.train_id)
)
NUM_CLASSES: int = len(TRAIN_LABELS)  # 19
CLASS_NAMES: tuple[str, ...] = tuple(lb.name for lb in TRAIN_LABELS)


def _label_to_train_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_ID, dtype=np.uint8)
    for lb in LABELS:
        if lb.id >= 0:
            lut[lb.id] = lb.train_id if 0 <= lb.train_id < IGNORE_ID else IGNORE_ID
    return lut


def _valid_label_ids() -> np.ndarray:
    valid = np.zeros(256, dtype=bool)
    for lb in LABELS:
        if lb.id >= 0:
            valid[lb.id] = True
    return valid


def _train_to_label_lut() -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)  # ignore -> 0 ("unlabeled"), what the official eval expects
    for lb in TRAIN_LABELS:
        lut[lb.train_id] = lb.id
    return lut


def _color_lut(key: str) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    if key == "train":
        for lb in TRAIN_LABELS:
            lut[lb.train_id] = lb.color
    else:
        for lb in LABELS:
            if lb.id >= 0:
                lut[lb.id] = lb.color
    return lut


#: labelId (0..255) -> trainId, 255 for ignored and for ids outside the table.
LABEL_ID_TO_TRAIN_ID: np.ndarray = _label_to_train_lut()
#: labelId (0..255) -> whether the id exists in the table (ids outside it are bad input).
VALID_LABEL_ID: np.ndarray = _valid_label_ids()
#: trainId (0..255) -> labelId; ignore maps to 0 (unlabeled).
TRAIN_ID_TO_LABEL_ID: np.ndarray = _train_to_label_lut()
#: trainId (0..255) -> RGB colour; ignore is black.
TRAIN_ID_TO_COLOR: np.ndarray = _color_lut("train")
#: labelId (0..255) -> RGB colour, as in *_gtFine_color.png.
LABEL_ID_TO_COLOR: np.ndarray = _color_lut("label")

for _lut in (LABEL_ID_TO_TRAIN_ID, VALID_LABEL_ID, TRAIN_ID_TO_LABEL_ID, TRAIN_ID_TO_COLOR, LABEL_ID_TO_COLOR):
    _lut.flags.writeable = False


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a labelIds array (uint8) to trainIds (uint8, 255 = ignore) with one table lookup."""
    return LABEL_ID_TO_TRAIN_ID[label_ids]


def unknown_label_ids(label_ids: np.ndarray) -> list[int]:
    """Sorted ids present in ``label_ids`` that are not in the label table (empty if all known)."""
    present = np.flatnonzero(np.bincount(label_ids.ravel(), minlength=256))
    return [int(i) for i in present if not VALID_LABEL_ID[i]]


def to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map trainIds back to labelIds (ignore -> 0), for the official evaluation scripts."""
    return TRAIN_ID_TO_LABEL_ID[train_ids]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """RGB image (H, W, 3, uint8) of a trainId mask in the official colours."""
    return TRAIN_ID_TO_COLOR[train_ids]
