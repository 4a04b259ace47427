"""Real-time street networks (DDRNet-23-slim, Fast-SCNN), the resize layers they are built of,
and the input-downsampling wrapper: the papers' parameter counts, a .keras round trip of a
downsampled network, and the layers against independent numpy / OpenCV computations (what every
registry entry must do is tests/test_model_conformance.py)."""

import cv2
import keras
import numpy as np
import pytest

from segops.models import build_model, model_stride
from segops.models.layers import AdaptiveAveragePooling, ResizeLike, UpsampleLike


def test_ddrnet_slim_has_the_papers_parameter_count():
    # DDRNet-23-slim: 5.7 M parameters (Hong et al., 2021, table 1), 19 classes.
    assert build_model("ddrnet23_slim").count_params() == pytest.approx(5.7e6, rel=0.02)


def test_fast_scnn_has_the_papers_parameter_count():
    # Fast-SCNN: 1.11 M parameters (Poudel et al., 2019, table 4), 19 classes.
    assert build_model("fast_scnn").count_params() == pytest.approx(1.11e6, rel=0.05)


def test_keras_round_trip_of_a_downsampled_ddrnet(tmp_path):
    keras.utils.set_random_seed(1)
    model = build_model("ddrnet23_slim", base_filters=8, input_downsample=2)
    assert model_stride("ddrnet23_slim", input_downsample=2) == 16
    images = np.random.default_rng(1).uniform(0, 255, (1, 48, 80, 3)).astype("float32")
    model(images, training=True)  # moves the BN statistics
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    out = keras.ops.convert_to_numpy(model(images))
    assert out.shape == (1, 48, 80, 19)
    # bit-equal is guaranteed here: the same process, input shape and kernels on identical weights
    np.testing.assert_array_equal(out, keras.ops.convert_to_numpy(loaded(images)))


def test_downsampled_model_runs_on_the_area_downsampled_image():
    keras.utils.set_random_seed(2)
    wrapped = build_model("fast_scnn", base_filters=8, input_downsample=2)
    inner = next(layer for layer in wrapped.layers if isinstance(layer, keras.Model))
    images = np.random.default_rng(2).uniform(0, 255, (1, 32, 48, 3)).astype("float32")
    half = images.reshape(1, 16, 2, 24, 2, 3).mean(axis=(2, 4))  # 2x2 area means, in numpy
    inner_logits = keras.ops.convert_to_numpy(inner(half))[0]
    expected = cv2.resize(inner_logits, (48, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(wrapped(images))[0], expected, atol=1e-4)


def _numpy_adaptive_pool(x: np.ndarray, bins: int) -> np.ndarray:
    """PyTorch's AdaptiveAvgPool2d, written out: bin i spans [floor(i n / b), ceil((i+1) n / b))."""
    n, h, w, c = x.shape
    out = np.zeros((n, bins, bins, c))
    for i in range(bins):
        for j in range(bins):
            rows = slice(int(np.floor(i * h / bins)), int(np.ceil((i + 1) * h / bins)))
            cols = slice(int(np.floor(j * w / bins)), int(np.ceil((j + 1) * w / bins)))
            out[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_average_pooling_matches_pytorchs_bins(bins):
    x = np.random.default_rng(bins).normal(size=(2, 11, 17, 4)).astype("float32")
    out = keras.ops.convert_to_numpy(AdaptiveAveragePooling(bins)(x))
    np.testing.assert_allclose(out, _numpy_adaptive_pool(x, bins), rtol=1e-5, atol=1e-5)


def test_resize_like_is_opencvs_bilinear_resize():
    x = np.random.default_rng(3).normal(size=(1, 3, 5, 2)).astype("float32")
    like = np.zeros((1, 13, 22, 1), "float32")
    out = keras.ops.convert_to_numpy(ResizeLike()([x, like]))[0]
    expected = cv2.resize(x[0], (22, 13), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_upsample_like_crops_to_the_finer_map():
    x = np.arange(2 * 3, dtype="float32").reshape(1, 2, 3, 1)
    like = np.zeros((1, 3, 5, 7), "float32")  # a stride-2 "same" conv of 3x5 gives 2x3
    out = keras.ops.convert_to_numpy(UpsampleLike(2)([x, like]))
    full = cv2.resize(x[0, :, :, 0], (6, 4), interpolation=cv2.INTER_LINEAR)
    assert out.shape == (1, 3, 5, 1)
    np.testing.assert_allclose(out[0, :, :, 0], full[:3, :5], atol=1e-5)
