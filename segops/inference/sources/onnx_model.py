"""An ONNX file with a card, run by onnxruntime (CUDA first when this onnxruntime has it, else
CPU). Before a session is created the graph is read without its weights and refused when it
uses an operator domain onnxruntime does not ship (custom ops) or keeps weights in external files
outside its directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

from segops.inference.sources import card as cards
from segops.inference.sources.base import PreparedModel, pick_tensor
from segops.models import export_dir
from segops.models.export_dir import ModelError

# the standard domains and onnxruntime's contrib ops: any other domain is a custom-op library
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"})
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _graphs(graph: Any) -> Any:
    """``graph`` and every subgraph of its control-flow nodes (If, Loop, Scan)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _external_files(model: Any, path: str) -> list[str]:
    """The external weight files the model names: plain relative names inside its directory."""
    from onnx import TensorProto

    root = os.path.dirname(os.path.abspath(path))
    found: set[str] = set()
    for graph in _graphs(model.graph):
        for tensor in [*graph.initializer, *(a.t for n in graph.node for a in n.attribute if a.HasField("t"))]:
            if tensor.data_location != TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if not location or os.path.isabs(location) or ".." in location.replace("\\", "/").split("/"):
                raise ModelError(f"{path}: weights of {tensor.name!r} are in {location!r}, outside the model's "
                                 f"directory: refusing to load it")  # fmt: skip
            full = os.path.join(root, location)
            export_dir.check_inside(root, full)
            found.add(full)
    return sorted(found)


def _dim(value: Any) -> int | None:
    return value.dim_value if value.HasField("dim_value") else None


@dataclass(frozen=True)
class OnnxSource(cards.CardSource):
    kind: ClassVar[str] = "onnx"
    suffixes: ClassVar[tuple[str, ...]] = (".onnx",)

    @classmethod
    def open(cls, path: str) -> OnnxSource:
        import onnx

        card = cards.read_card(cards.require_card(path, "an ONNX file"))
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise ModelError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc})") from exc
        local = {fn.domain for fn in model.functions}  # functions defined in the model itself
        domains = {node.domain for graph in _graphs(model.graph) for node in graph.node}
        domains |= {node.domain for fn in model.functions for node in fn.node}
        custom = sorted(domains - KNOWN_DOMAINS - local)
        if custom:
            raise ModelError(f"{path} uses operators of domain(s) {', '.join(custom)} (custom ops): refusing to load it")
        external = _external_files(model, path)
        initializers = {t.name for t in model.graph.initializer}
        inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
        outputs = {o.name: o for o in model.graph.output}
        input_name = pick_tensor(path, "input", inputs, card.input_name, "model")
        output_name = pick_tensor(path, "output", outputs, card.output_name, "model")
        prep = card.preprocessing
        in_dims = [_dim(d) for d in inputs[input_name].type.tensor_type.shape.dim]
        if len(in_dims) != 4 or in_dims[3 if prep.layout == "NHWC" else 1] not in (3, None):
            raise ModelError(f"{path}: input {input_name!r} is not a {prep.layout} image batch with 3 channels "
                             f"(shape {in_dims}); set the card's input.layout")  # fmt: skip
        out_dims = [_dim(d) for d in outputs[output_name].type.tensor_type.shape.dim]
        if len(out_dims) != 4:
            raise ModelError(f"{path}: output {output_name!r} is not a 4-d tensor (shape {out_dims})")
        card.refuse_channels(path, f"output {output_name!r} has", out_dims[3 if prep.output_layout == "NHWC" else 1])
        root = os.path.dirname(os.path.abspath(path))
        hashed = [os.path.abspath(path), *external, os.path.abspath(card.path)]
        return cls(path, card.model_info(cls.kind, hashed, root), card, input_name, output_name, in_dims[0] or 0)

    def load(self, threads: int = 0) -> PreparedModel:
        import onnxruntime as ort

        assert self.card is not None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = [p for p in PREFERRED_PROVIDERS if p in available]
        session = ort.InferenceSession(self.path, sess_options=options, providers=providers)
        output_name, input_name = self.output_name, self.input_name
        return self.prepared(lambda x: session.run([output_name], {input_name: x})[0])


