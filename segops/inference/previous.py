"""What a new mask replaced: the provenance a trainIds PNG carries and the comparison of a new
mask with the one already on disk (docs/scheduled.md, "A new model").

Infer overwrites an image's masks when a new model is pointed at the same OUT, so the old
model's pixels can only be compared at write time. Every trainIds PNG records, in ``iTXt``
chunks after IHDR (UTF-8: a model id is any string), the model that wrote it (:data:`MODEL_KEY`) and, when it replaced another
model's mask, that model and the class transitions (:data:`PREVIOUS_KEY`). Before the writer
overwrites a mask it calls :func:`compare_with_existing`:

* no mask, an unreadable one, another size or values outside 0..18: no previous mask;
* a mask of another model: the 19x19 transition counts (previous class -> new class);
* a mask without the model chunk (written before segops recorded it): compared the same way,
  the previous model unknown (None);
* a mask of this same model (a rerun after a crash, ``--overwrite``, a changed input): this model
  replaced nothing; when its pixels are those being written, the comparison that mask recorded
  is carried over (so a crash between the masks and the commit loses no comparison), otherwise
  there is none.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from segops.core import imageio
from segops.core.labels import NUM_CLASSES

MODEL_KEY = "segops:model_id"
PREVIOUS_KEY = "segops:previous"  # JSON {"model_id": str | null, "transitions": [361 ints]}


@dataclass(frozen=True)
class PreviousMask:
    """The mask a new one replaced: its model (None: unknown) and the transition counts."""

    model_id: str | None
    transitions: np.ndarray  # (C, C) int64; rows = previous trainId, columns = new trainId

    @property
    def agreement(self) -> float:
        """Fraction of pixels whose class did not change."""
        total = int(self.transitions.sum())
        return float(np.trace(self.transitions)) / total if total else 1.0

    def to_text(self) -> str:
        return json.dumps({"model_id": self.model_id, "transitions": self.transitions.ravel().tolist()},
                          separators=(",", ":"))  # fmt: skip

    @classmethod
    def from_text(cls, text: str | None) -> PreviousMask | None:
        """The record :meth:`to_text` wrote; None when absent or not one."""
        try:
            record = json.loads(text) if text else None
            flat = np.asarray(record["transitions"], np.int64)
            side = math.isqrt(flat.size)
            counts = flat.reshape(side, side)
            model_id = record["model_id"]
        except (ValueError, TypeError, KeyError):
            return None
        return cls(model_id if isinstance(model_id, str) else None, counts)


def transition_counts(previous: np.ndarray, new: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(C, C) counts of pixels of class i in ``previous`` and j in ``new`` (both 0..C-1)."""
    pairs = previous.ravel().astype(np.intp) * num_classes + new.ravel()
    return np.bincount(pairs, minlength=num_classes**2).astype(np.int64).reshape(num_classes, num_classes)


def compare_with_existing(existing: bytes | None, new: np.ndarray, model_id: str,
                          num_classes: int = NUM_CLASSES) -> PreviousMask | None:  # fmt: skip
    """What writing ``new`` (trainIds of ``num_classes`` classes) for ``model_id`` over the
    ``existing`` trainIds PNG replaces (see the module docstring for each case); None: nothing to
    compare with (also when either mask holds a value outside 0..C-1, e.g. ignore)."""
    if existing is None:
        return None
    try:
        before = imageio.decode_label_png(existing, max_pixels=new.size)
    except imageio.BadInput:
        return None
    if before.shape != new.shape or (before.size and int(before.max()) >= num_classes):
        return None
    if new.size and int(new.max()) >= num_classes:  # a mapped model's unmapped pixels
        return None
    texts = imageio.png_text(existing)
    written_by = texts.get(MODEL_KEY)
    if written_by == model_id:
        return PreviousMask.from_text(texts.get(PREVIOUS_KEY)) if np.array_equal(before, new) else None
    return PreviousMask(written_by, transition_counts(before, new, num_classes))


def provenance_texts(model_id: str, previous: PreviousMask | None) -> dict[str, str]:
    """The ``tEXt`` chunks of a trainIds PNG written by ``model_id`` over ``previous``."""
    texts = {MODEL_KEY: model_id}
    if previous is not None:
        texts[PREVIOUS_KEY] = previous.to_text()
    return texts


def mask_model_id(data: bytes) -> str | None:
    """The model that wrote a trainIds PNG; None for masks of older runs (or other files)."""
    return imageio.png_text(data).get(MODEL_KEY)
