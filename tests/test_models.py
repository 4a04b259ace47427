"""Models beyond what tests/test_model_conformance.py checks of every registry entry: builder
options other than the tiny ones, stride formulas, input normalisation, FCN init, bad options."""

import keras
import numpy as np
import pytest

from segops.models import build_model, model_stride
from segops.models.blocks import bilinear_kernel

# options the registry's tiny hyper-parameters leave at their defaults
VARIANTS = [
    ("unet", {"depth": 2, "base_filters": 4, "upsampling": "bilinear", "dilated": True, "dropout": 0.2}),
    ("fcn8s", {"base_filters": 4, "dilated": True, "batch_norm": False}),
]


@pytest.mark.parametrize(("name", "hparams"), VARIANTS)
def test_builder_options_keep_logits_at_input_resolution(name, hparams):
    keras.utils.set_random_seed(0)
    model = build_model(name, num_classes=19, **hparams)
    stride = model_stride(name, **hparams)
    images = np.random.default_rng(0).uniform(0, 255, (2, 2 * stride, 3 * stride, 3)).astype("float32")
    logits = keras.ops.convert_to_numpy(model(images, training=False))
    assert logits.shape == (2, 2 * stride, 3 * stride, 19)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    # Different images give different logits (the network is connected end to end).
    assert not np.allclose(logits[0], logits[1])


def test_bilinear_unet_traces_in_graph_mode_at_unknown_sizes():
    # Training and exports trace the model with height and width unknown; Keras'
    # UpSampling2D(interpolation="bilinear") failed there ("symbolic tf.Tensor as a Python bool").
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = build_model("unet", num_classes=5, depth=2, base_filters=4, upsampling="bilinear")
    call = tf.function(lambda x: model(x, training=True),
                       input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])  # fmt: skip
    images = np.random.default_rng(0).uniform(0, 255, (1, 8, 12, 3)).astype("float32")
    logits = call(tf.constant(images)).numpy()
    assert logits.shape == (1, 8, 12, 5) and np.isfinite(logits).all()


def test_strides():
    assert model_stride("unet", depth=4) == 16
    assert model_stride("unet", depth=2) == 4
    assert model_stride("unet", depth=2, backbone="vgg16") == 32
    assert model_stride("fcn8s") == 32
    assert model_stride("deeplabv3plus", output_stride=16) == 16
    assert model_stride("fast_scnn", input_downsample=2) == 16


def test_input_is_normalised_inside_the_model():
    model = build_model("unet", depth=1, base_filters=2)
    norm = model.get_layer("normalize")
    out = keras.ops.convert_to_numpy(norm(np.array([[[[0.0, 127.5, 255.0]]]], "float32")))
    np.testing.assert_allclose(out.ravel(), [-1.0, 0.0, 1.0], atol=1e-6)


def test_fcn_upsampling_starts_bilinear():
    # score layers of the skips start at zero and the transposed convs bilinear: the initial
    # logits are a smooth upsampling of the coarse scores.
    model = build_model("fcn8s", base_filters=2)
    k = keras.ops.convert_to_numpy(model.get_layer("upscore8").kernel)
    np.testing.assert_allclose(k, bilinear_kernel(16, 19))
    assert not keras.ops.convert_to_numpy(model.get_layer("score_pool4").kernel).any()
    # A bilinear 2x kernel sums (over the taps hitting one output pixel) to 1: constant in -> constant out.
    up = keras.layers.Conv2DTranspose(1, 4, strides=2, padding="same", use_bias=False)
    up.build((None, 8, 8, 1))
    up.kernel.assign(bilinear_kernel(4, 1))
    out = keras.ops.convert_to_numpy(up(np.ones((1, 8, 8, 1), "float32")))
    np.testing.assert_allclose(out[0, 2:-2, 2:-2, 0], 1.0, atol=1e-6)


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(ValueError, match="upsampling"):
        build_model("unet", upsampling="nearest")
    with pytest.raises(ValueError, match="depth"):
        build_model("unet", depth=0)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("deeplab")
