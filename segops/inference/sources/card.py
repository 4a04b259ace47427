"""Model cards: the small JSON beside a model that has no segops or keras-hub config of its own
(an ONNX file, a ``.keras`` file, a SavedModel), saying how to feed it and read it::

    {"card_version": 1, "name": "segformer-b0",
     "classes": "cityscapes",
     "input": {"channels": "RGB", "layout": "NCHW", "mean": [123.675, 116.28, 103.53],
               "std": [58.395, 57.12, 57.375], "size": [1024, 2048], "stride": 32},
     "output": {"kind": "logits", "layout": "NCHW"}}

``classes`` is ``"cityscapes"`` or the list of class names (for now they must be the 19
Cityscapes trainIds in order; the field is where other label sets will go). A file model's card
is ``<file>.card.json``, else ``card.json`` in its directory; a directory's is ``card.json`` in
it. Every mistake is one ModelError line naming the card and the field (docs/models.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from segops.core import labels
from segops.inference.sources.base import CHANNEL_ORDERS, LAYOUTS, OUTPUT_KINDS, Preprocessing
from segops.models.export_dir import ModelError

CARD_VERSION = 1
CARD_SUFFIX = ".card.json"
CARD_FILE = "card.json"
CITYSCAPES = "cityscapes"
TOP_FIELDS = ("card_version", "name", "classes", "input", "output", "signature")
INPUT_FIELDS = ("channels", "layout", "mean", "std", "size", "stride", "name")
OUTPUT_FIELDS = ("kind", "layout", "name")


@dataclass(frozen=True)
class ModelCard:
    path: str
    name: str
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    signature: str = "serving_default"  # SavedModels: the signature to call
    input_name: str | None = None  # the input / output to use when the model has several
    output_name: str | None = None


def card_path(model_path: str) -> str | None:
    """The card of a model file or directory, or None when it has none."""
    if os.path.isdir(model_path):
        candidates = [os.path.join(model_path, CARD_FILE)]
    else:
        candidates = [model_path + CARD_SUFFIX, os.path.join(os.path.dirname(model_path) or ".", CARD_FILE)]
    return next((c for c in candidates if os.path.isfile(c)), None)


def require_card(model_path: str, kind: str) -> str:
    path = card_path(model_path)
    if path is None:
        where = os.path.join(model_path, CARD_FILE) if os.path.isdir(model_path) else model_path + CARD_SUFFIX
        raise ModelError(f"{model_path}: {kind} has no model card: write {where} (its input "
                         f"normalisation, channel order, output kind and classes; see docs/models.md)")  # fmt: skip
    return path


class _Fields:
    """Typed reads of one JSON object of the card; each failure is one line naming the field."""

    def __init__(self, path: str, data: Any, where: str, known: tuple[str, ...]) -> None:
        self.path, self.where = path, where
        if not isinstance(data, dict):
            self.fail(where or "the card", "must be a JSON object")
        unknown = sorted(set(data) - set(known))
        if unknown:
            self.fail(unknown[0], f"is not a card field (known: {', '.join(known)})")
        self.data = data

    def fail(self, field: str, message: str) -> None:
        name = f"{self.where}.{field}" if self.where else field
        raise ModelError(f"card {self.path}: {name} {message}")

    def choice(self, field: str, choices: tuple[str, ...], default: str) -> str:
        value = self.data.get(field, default)
        if value not in choices:
            self.fail(field, f"is {value!r}; expected one of {', '.join(choices)}")
        return value

    def text(self, field: str, default: str | None) -> str | None:
        value = self.data.get(field)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            self.fail(field, f"is {value!r}; expected a non-empty string")
        return value

    def numbers(self, field: str, count: int, positive: bool = False) -> tuple[float, ...] | None:
        value = self.data.get(field)
        if value is None:
            return None
        ok = isinstance(value, list) and len(value) == count
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and (v > 0 or not positive) for v in value)
        if not ok:
            self.fail(field, f"is {value!r}; expected {count} {'positive ' if positive else ''}numbers")
        return tuple(float(v) for v in value)

    def positive_int(self, field: str, default: int) -> int:
        value = self.data.get(field, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.fail(field, f"is {value!r}; expected a positive integer")
        return value


def class_names_of(path: str, value: Any) -> tuple[str, ...]:
    """The card's ``classes``: for now the 19 Cityscapes trainIds, by name or in full."""
    if value == CITYSCAPES:
        return labels.CLASS_NAMES
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelError(f"card {path}: classes is {value!r}; expected {CITYSCAPES!r} or a list of class names")
    if len(value) != labels.NUM_CLASSES:
        raise ModelError(f"card {path}: classes lists {len(value)} classes; segops evaluates the "
                         f"{labels.NUM_CLASSES} Cityscapes trainIds (other label sets are not supported yet)")  # fmt: skip
    if tuple(value) != labels.CLASS_NAMES:
        raise ModelError(f"card {path}: classes must be the Cityscapes trainIds in order "
                         f"({', '.join(labels.CLASS_NAMES[:3])}, ...) or {CITYSCAPES!r}")  # fmt: skip
    return tuple(value)


def read_card(path: str, allowed: tuple[str, ...] = TOP_FIELDS) -> ModelCard:
    """Parse and check the card at ``path``; ``allowed``: the top-level fields this kind of model
    takes (a keras-hub preset's card may only name its classes)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"card {path} cannot be read ({exc})") from exc
    except ValueError as exc:
        raise ModelError(f"card {path} is not valid JSON ({exc})") from exc
    top = _Fields(path, data, "", allowed)
    version = data.get("card_version", CARD_VERSION)
    if version != CARD_VERSION:
        top.fail("card_version", f"is {version!r}; this segops reads card version {CARD_VERSION}")
    if "classes" not in data:
        top.fail("classes", f"is missing; write \"classes\": {json.dumps(CITYSCAPES)} for the 19 Cityscapes trainIds")
    inputs = _Fields(path, data.get("input", {}), "input", INPUT_FIELDS)
    outputs = _Fields(path, data.get("output", {}), "output", OUTPUT_FIELDS)
    layout = inputs.choice("layout", LAYOUTS, "NHWC")
    size = inputs.numbers("size", 2, positive=True)
    if size is not None and not all(v == int(v) for v in size):
        inputs.fail("size", f"is {list(size)!r}; expected [height, width] in pixels")
    preprocessing = Preprocessing(
        channels=inputs.choice("channels", CHANNEL_ORDERS, "RGB"),
        layout=layout,
        mean=inputs.numbers("mean", 3),
        std=inputs.numbers("std", 3, positive=True),
        size=(int(size[0]), int(size[1])) if size is not None else None,
        stride=inputs.positive_int("stride", 1),
        output_kind=outputs.choice("kind", OUTPUT_KINDS, "logits"),
        output_layout=outputs.choice("layout", LAYOUTS, layout),
    )
    return ModelCard(
        path=path,
        name=top.text("name", "") or "",
        class_names=class_names_of(path, data["classes"]),
        preprocessing=preprocessing,
        signature=top.text("signature", "serving_default") or "serving_default",
        input_name=inputs.text("name", None),
        output_name=outputs.text("name", None),
    )
