"""Model cards: the small JSON beside a model that has no segops or keras-hub config of its own
(an ONNX file, a ``.keras`` file, a SavedModel), saying how to feed it and read it::

    {"card_version": 1, "name": "segformer-b0",
     "classes": "cityscapes",
     "input": {"channels": "RGB", "layout": "NCHW", "mean": [123.675, 116.28, 103.53],
               "std": [58.395, 57.12, 57.375], "size": [1024, 2048], "stride": 32},
     "output": {"kind": "logits", "layout": "NCHW"}}

``classes`` is ``"cityscapes"`` or the list of the model's output classes, in order; under
``output.kind: "sigmoid"`` (or ``"sigmoid_logits"``) each output channel is one class's own
probability, and ``classes`` lists the background first, then one class per channel (a class is
present where its probability exceeds ``output.threshold``, 0.5 by default). ``input.range``,
``input.resize`` and ``input.fit`` say how the model was trained to see images (value range,
resize convention, stretch or letterbox).
``label_set`` (default ``"cityscapes"``: a built-in's name or a label-set file, relative to the
card) is what segops evaluates and writes; without ``class_map`` the classes must be the label
set's, in train-id order. ``class_map`` ({"model class": "label-set class", ...}) relabels the
model's classes into the label set: many-to-one sums their probabilities, an unmapped model
class becomes ignore (255) in the masks (docs/labels.md). A file model's card
is ``<file>.card.json``, else ``card.json`` in its directory; a directory's is ``card.json`` in
it. Every mistake is one ModelError line naming the card and the field (docs/models.md).
:class:`CardSource` is what every source run with a card holds (the card, which tensors, the
fixed batch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from segops.core import labels
from segops.core.label_sets import BUILTIN_NAMES, LabelSet, LabelSetError, load_label_set
from segops.inference.sources.base import ModelSource, PreparedModel, digest, refuse_class_count
from segops.inference.sources.preprocessing import (
    CHANNEL_ORDERS,
    FITS,
    LAYOUTS,
    OUTPUT_KINDS,
    RESIZES,
    SIGMOID,
    SIGMOID_KINDS,
    VALUE_RANGES,
    Preprocessing,
)
from segops.models.export_dir import ModelError, ModelInfo

CARD_VERSION = 1
CARD_SUFFIX = ".card.json"
CARD_FILE = "card.json"
CITYSCAPES = "cityscapes"
TOP_FIELDS = ("card_version", "name", "classes", "label_set", "class_map", "input", "output", "signature")
INPUT_FIELDS = ("channels", "layout", "range", "mean", "std", "size", "resize", "fit", "stride", "name")
OUTPUT_FIELDS = ("kind", "layout", "threshold", "name")


@dataclass(frozen=True)
class ModelCard:
    path: str
    name: str
    class_names: tuple[str, ...]  # the model's output classes
    preprocessing: Preprocessing  # with the class map, when there is one
    label_set: LabelSet = field(default_factory=lambda: load_label_set(None))
    signature: str = "serving_default"  # SavedModels: the signature to call
    input_name: str | None = None  # the input / output to use when the model has several
    output_name: str | None = None

    @property
    def sigmoid(self) -> bool:
        return self.preprocessing.output_kind in SIGMOID_KINDS

    @property
    def output_channels(self) -> int:
        """The channels the model's output has: one per class, the background's none under sigmoid."""
        return len(self.class_names) - self.sigmoid

    def refuse_channels(self, model_path: str, what: str, count: Any) -> None:
        """Refuse a model whose output has a known number of channels (``what``: "output 'x'
        has") that this card cannot read; None or a negative count: known when it runs."""
        if not isinstance(count, int) or count < 0 or count == self.output_channels:
            return
        kind = self.preprocessing.output_kind
        if count == 1 and not self.sigmoid:
            raise ModelError(f"{model_path}: {what} one channel; its card lists {len(self.class_names)} classes under "
                             f"output.kind {kind!r}: if the channel is a probability, write \"output\": {{\"kind\": "
                             f"\"sigmoid\"}} with the background first in classes")  # fmt: skip
        if self.sigmoid:
            raise ModelError(f"{model_path}: {what} {count} channels; its card reads {self.output_channels} under "
                             f"output.kind {kind!r} (classes: the background, then one per channel)")  # fmt: skip
        refuse_class_count(model_path, what, count, self.output_channels)

    def info_fields(self) -> dict[str, Any]:
        """The ModelInfo fields of the classes segops evaluates (the label set's)."""
        ls = self.label_set
        return {"num_classes": ls.num_classes, "class_names": list(ls.class_names), "label_set": ls.to_json()}

    def model_info(self, kind: str, hashed: list[str], root: str) -> ModelInfo:
        """A model of ``kind`` read with this card; its id names the ``hashed`` files (the
        model's and this card) relative to ``root``."""
        prep = self.preprocessing
        return ModelInfo(architecture=self.name or kind, input_size=prep.size or (0, 0), stride=prep.stride,
                         **self.info_fields(), model_id=f"{kind}-{digest(hashed, root)}")  # fmt: skip


@dataclass(frozen=True)
class CardSource(ModelSource):
    """A model run with its card's preprocessing: the card, the input and output tensors it
    uses, and the network's fixed batch (0: any), which :meth:`prepared` applies."""

    card: ModelCard | None = None
    input_name: str = ""
    output_name: str = ""
    batch: int = 0

    def prepared(self, call: Callable[[np.ndarray], np.ndarray]) -> PreparedModel:
        assert self.card is not None
        return PreparedModel(call, replace(self.card.preprocessing, batch=self.batch))


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

    def fraction(self, field: str, default: float) -> float:
        value = self.data.get(field, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1:
            self.fail(field, f"is {value!r}; expected a number between 0 and 1")
        return float(value)

    def positive_int(self, field: str, default: int) -> int:
        value = self.data.get(field, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self.fail(field, f"is {value!r}; expected a positive integer")
        return value


def class_names_of(path: str, value: Any) -> tuple[str, ...]:
    """The card's ``classes``: the model's output classes ("cityscapes": the 19 trainIds)."""
    if value == CITYSCAPES:
        return labels.CLASS_NAMES
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ModelError(f"card {path}: classes is {value!r}; expected {CITYSCAPES!r} or a list of class names")
    if len(set(value)) != len(value):
        repeated = next(v for v in value if value.count(v) > 1)
        raise ModelError(f"card {path}: classes names {repeated!r} twice")
    return tuple(value)


def label_set_of(path: str, value: Any) -> LabelSet:
    """The card's ``label_set``: a built-in's name or a file (relative to the card)."""
    if value is None or value in BUILTIN_NAMES:
        return load_label_set(value)
    if not isinstance(value, str) or not value:
        raise ModelError(f"card {path}: label_set is {value!r}; expected a built-in ({', '.join(BUILTIN_NAMES)}) or a file")
    try:
        return load_label_set(os.path.join(os.path.dirname(os.path.abspath(path)), value))
    except LabelSetError as exc:
        raise ModelError(f"card {path}: label_set: {exc}") from exc


def class_map_of(path: str, value: Any, classes: tuple[str, ...], label_set: LabelSet) -> tuple[int, ...] | None:
    """The card's ``class_map`` as one target train id per model class (-1: unmapped), or None
    without one; then the model's classes must be the label set's, in order."""
    if value is None:
        if classes != label_set.class_names:
            if len(classes) != label_set.num_classes:
                raise ModelError(f"card {path}: classes lists {len(classes)} classes; segops evaluates the "
                                 f"{label_set.num_classes} of the {label_set.table_title}: map them with class_map")  # fmt: skip
            raise ModelError(f"card {path}: classes must be the {label_set.table_title}'s in order "
                             f"({', '.join(label_set.class_names[:3])}, ...), or mapped onto them with class_map")  # fmt: skip
        return None
    if not isinstance(value, dict) or not value or not all(isinstance(v, str) for v in value.values()):
        raise ModelError(f"card {path}: class_map is {value!r}; expected an object {{\"model class\": \"label-set class\"}}")
    unknown = [k for k in value if k not in classes]
    if unknown:
        raise ModelError(f"card {path}: class_map names {unknown[0]!r}, not one of the card's classes")
    foreign = [v for v in value.values() if v not in label_set.class_names]
    if foreign:
        raise ModelError(f"card {path}: class_map maps onto {foreign[0]!r}, not a class of the {label_set.table_title} "
                         f"({', '.join(label_set.class_names[:5])}, ...)")  # fmt: skip
    return tuple(label_set.class_names.index(value[c]) if c in value else -1 for c in classes)


def _refuse_one_class(path: str, classes: tuple[str, ...], kind: str) -> None:
    """One class cannot be read under a softmax (it is 1 everywhere) nor under a sigmoid (no
    background): either way the card means a sigmoid with the background listed first."""
    if len(classes) != 1:
        return
    example = json.dumps(["background", classes[0]])
    if kind in SIGMOID_KINDS:
        raise ModelError(f"card {path}: classes lists one class under output.kind {kind!r}: list the background "
                         f"first, then one class per output channel: \"classes\": {example}")  # fmt: skip
    raise ModelError(f"card {path}: classes lists one class under output.kind {kind!r}, where classes compete "
                     f"and one class wins every pixel: for a one-channel probability write \"output\": {{\"kind\": \"{SIGMOID}\"}} "
                     f"and \"classes\": {example}")  # fmt: skip


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
    classes = class_names_of(path, data["classes"])
    inputs = _Fields(path, data.get("input", {}), "input", INPUT_FIELDS)
    outputs = _Fields(path, data.get("output", {}), "output", OUTPUT_FIELDS)
    kind = outputs.choice("kind", OUTPUT_KINDS, "logits")
    _refuse_one_class(path, classes, kind)
    label_set = label_set_of(path, data.get("label_set"))
    class_map = class_map_of(path, data.get("class_map"), classes, label_set)
    layout = inputs.choice("layout", LAYOUTS, "NHWC")
    size = inputs.numbers("size", 2, positive=True)
    if size is not None and not all(v == int(v) for v in size):
        inputs.fail("size", f"is {list(size)!r}; expected [height, width] in pixels")
    fit = inputs.choice("fit", FITS, "stretch")
    if fit == "letterbox" and size is None:
        inputs.fail("fit", "is 'letterbox'; a letterbox needs input.size, the network's [height, width]")
    preprocessing = Preprocessing(
        channels=inputs.choice("channels", CHANNEL_ORDERS, "RGB"),
        layout=layout,
        value_range=inputs.choice("range", tuple(VALUE_RANGES), "0..255"),
        mean=inputs.numbers("mean", 3),
        std=inputs.numbers("std", 3, positive=True),
        size=(int(size[0]), int(size[1])) if size is not None else None,
        resize=inputs.choice("resize", RESIZES, "half_pixel"),
        fit=fit,
        stride=inputs.positive_int("stride", 1),
        output_kind=kind,
        output_layout=outputs.choice("layout", LAYOUTS, layout),
        output_channels=len(classes) - (kind in SIGMOID_KINDS),
        threshold=outputs.fraction("threshold", 0.5),
        class_map=class_map,
        mapped_classes=label_set.num_classes,
    )
    return ModelCard(
        path=path,
        name=top.text("name", "") or "",
        class_names=classes,
        preprocessing=preprocessing,
        label_set=label_set,
        signature=top.text("signature", "serving_default") or "serving_default",
        input_name=inputs.text("name", None),
        output_name=outputs.text("name", None),
    )
