"""A LiteRT (TensorFlow Lite) ``.tflite`` file with a card, run by LiteRT's interpreter
(``ai-edge-litert``): MediaPipe's and most on-device segmenters come as one.

Before an interpreter is built the file is read as a flatbuffer and refused when it uses Select
TensorFlow ops (``Flex*``: TensorFlow kernels, some of which read and write files) or resource
variables (state kept between calls: a mask would depend on the images before it). segops
registers no custom-op library, so a custom op runs only when LiteRT itself has a kernel for it;
otherwise the launcher's test call names it. Quantized (uint8/int8) inputs and outputs are
converted with the file's own scale and zero point; a fixed batch is called image by image.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from segops.inference.sources import card as cards
from segops.inference.sources.base import PreparedModel, pick_tensor
from segops.models.export_dir import ModelError

# builtin operators that keep state between invocations
STATEFUL_OPS = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"})
FLEX_PREFIX = "Flex"


def _operators(path: str) -> list[str]:
    """The names of every operator the model's subgraphs use (builtin names, custom codes)."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as exc:
        raise ModelError(f"{path} cannot be read ({exc})") from exc
    if len(buf) < 8 or not schema.Model.ModelBufferHasIdentifier(buf, 0):
        raise ModelError(f"{path} is not a LiteRT (TensorFlow Lite) model: no TFL3 identifier")
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(buf, 0)
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        custom = code.CustomCode()
        op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())  # the schema moved past 127
        names.append(custom.decode(errors="replace") if custom else builtin.get(op, f"BUILTIN_{op}"))
    return names


def _check_operators(path: str) -> None:
    names = _operators(path)
    flex = sorted({n for n in names if n.startswith(FLEX_PREFIX)})
    if flex:
        raise ModelError(f"{path} uses Select TensorFlow ops ({', '.join(flex)}): TensorFlow kernels, some of which "
                         f"read and write files; refusing to load it")  # fmt: skip
    stateful = sorted(STATEFUL_OPS.intersection(names))
    if stateful:
        raise ModelError(f"{path} keeps state between calls ({', '.join(stateful)}): its masks would depend on the "
                         f"images before each one; refusing to run it")  # fmt: skip


def _dims(detail: dict[str, Any]) -> list[int]:
    """A tensor's shape, -1 where it takes any size."""
    signature = detail.get("shape_signature")
    return [int(d) for d in (signature if signature is not None and len(signature) else detail["shape"])]


def _quantized(detail: dict[str, Any]) -> tuple[float, int] | None:
    scale, zero_point = detail["quantization"]
    return (float(scale), int(zero_point)) if scale else None


@dataclass(frozen=True)
class LiteRTSource(cards.CardSource):
    kind: ClassVar[str] = "litert"
    suffixes: ClassVar[tuple[str, ...]] = (".tflite",)

    @classmethod
    def open(cls, path: str) -> LiteRTSource:
        from ai_edge_litert.interpreter import Interpreter

        card = cards.read_card(cards.require_card(path, "a .tflite file"))
        _check_operators(path)
        try:
            interpreter = Interpreter(model_path=path)  # builds the graph; runs nothing until invoked
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"{path}: LiteRT cannot read it ({' '.join(str(exc).split())})") from exc
        inputs = {d["name"]: d for d in interpreter.get_input_details()}
        outputs = {d["name"]: d for d in interpreter.get_output_details()}
        input_name = pick_tensor(path, "input", inputs, card.input_name, "model")
        output_name = pick_tensor(path, "output", outputs, card.output_name, "model")
        image, out = inputs[input_name], outputs[output_name]
        prep = card.preprocessing
        dims = _dims(image)
        channel_axis, spatial = (3, slice(1, 3)) if prep.layout == "NHWC" else (1, slice(2, 4))
        dtype = np.dtype(image["dtype"])
        if len(dims) != 4 or dims[channel_axis] not in (3, -1) or dtype not in (np.float32, np.uint8, np.int8):
            raise ModelError(f"{path}: input {input_name!r} is not a float32, uint8 or int8 {prep.layout} image batch "
                             f"with 3 channels (shape {dims}, {dtype})")  # fmt: skip
        if dtype != np.float32 and _quantized(image) is None and (
                dtype == np.int8 or prep.mean or prep.std or prep.value_range != "0..255"):  # fmt: skip
            raise ModelError(f"{path}: input {input_name!r} takes raw {dtype} pixels: the card cannot set range, "
                             f"mean or std for it")  # fmt: skip
        fixed = [d for d in dims[spatial] if d > 0]
        if len(fixed) == 2 and tuple(fixed) != prep.size:
            wanted = f"is {list(prep.size)}" if prep.size else "is not set"
            raise ModelError(f"{path}: input {input_name!r} takes {fixed[0]}x{fixed[1]} images; the card's input.size "
                             f"{wanted}: write \"size\": {fixed}")  # fmt: skip
        out_dims = _dims(out)
        if len(out_dims) != 4 or np.dtype(out["dtype"]) not in (np.float32, np.uint8, np.int8):
            raise ModelError(f"{path}: output {output_name!r} is not a float32 or quantized 4-d tensor (shape {out_dims})")
        channels = out_dims[3 if prep.output_layout == "NHWC" else 1]
        card.refuse_channels(path, f"output {output_name!r} has", channels if channels > 0 else None)
        hashed = [os.path.abspath(path), os.path.abspath(card.path)]
        info = card.model_info(cls.kind, hashed, os.path.dirname(os.path.abspath(path)))
        return cls(path, info, card, input_name, output_name, max(dims[0], 0))

    def load(self, threads: int = 0) -> PreparedModel:
        return self.prepared(_Runner(self.path, self.input_name, self.output_name, threads))


class _Runner:
    """One interpreter behind a float32-in, float32-out call: inputs quantized and outputs
    dequantized with the file's scale and zero point, the input resized to each new shape."""

    def __init__(self, path: str, input_name: str, output_name: str, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=path, num_threads=threads or None)
        self._input = next(d for d in self._interpreter.get_input_details() if d["name"] == input_name)
        self._output = next(d for d in self._interpreter.get_output_details() if d["name"] == output_name)
        self._dtype = np.dtype(self._input["dtype"])
        self._interpreter.allocate_tensors()  # an op LiteRT has no kernel for fails here, at load
        self._shape = tuple(int(d) for d in self._input["shape"])  # the input shape tensors are allocated for
        self._lock = threading.Lock()  # an interpreter is not thread-safe; Beam may share it between threads

    def __call__(self, x: np.ndarray) -> np.ndarray:
        quant = _quantized(self._input)
        if quant is not None:
            limits = np.iinfo(self._dtype)
            x = np.clip(np.rint(x / quant[0] + quant[1]), limits.min, limits.max)
        elif self._dtype != np.float32:  # raw uint8 pixels
            x = np.clip(np.rint(x), 0, 255)
        x = np.ascontiguousarray(x, dtype=self._dtype)
        with self._lock:
            if x.shape != self._shape:
                self._interpreter.resize_tensor_input(self._input["index"], list(x.shape), strict=True)
                self._interpreter.allocate_tensors()
                self._shape = x.shape
            self._interpreter.set_tensor(self._input["index"], x)
            self._interpreter.invoke()
            y = self._interpreter.get_tensor(self._output["index"])  # a copy of the interpreter's buffer
        quant = _quantized(self._output)
        return y.astype(np.float32) if quant is None else (y.astype(np.float32) - quant[1]) * np.float32(quant[0])
