"""The model zoo's parts: max unpooling against a numpy reference, bilinear upsampling against
tf.image.resize, DeepLabV3+'s output stride, backbone weights from a file. Every network through
train -> export -> `segops infer` is tests/test_model_conformance.py."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from segops.core.options import OptionsError
from segops.models import build_model
from segops.models.layers import BilinearUpsampling, MaxPoolingWithArgmax, MaxUnpooling
from segops.training.options import ModelOptions


def _numpy_pool(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2 max pooling with the in-window argmax (2*dy + dx), by explicit loops over windows."""
    n, h, w, c = x.shape
    pooled = np.zeros((n, h // 2, w // 2, c), x.dtype)
    argmax = np.zeros((n, h // 2, w // 2, c), np.int32)
    for i in range(h // 2):
        for j in range(w // 2):
            window = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, :].reshape(n, 4, c)
            pooled[:, i, j], argmax[:, i, j] = window.max(axis=1), window.argmax(axis=1)
    return pooled, argmax


def test_unpooling_routes_every_value_to_its_argmax_and_gradients_back():
    rng = np.random.default_rng(0)
    x = rng.permutation(2 * 6 * 8 * 3).reshape(2, 6, 8, 3).astype(np.float32)  # distinct: one argmax per window
    pooled, argmax = (np.asarray(t) for t in MaxPoolingWithArgmax()(x))
    ref_pooled, ref_argmax = _numpy_pool(x)
    np.testing.assert_array_equal(pooled, ref_pooled)
    np.testing.assert_array_equal(argmax, ref_argmax)

    values = tf.constant(rng.normal(size=pooled.shape).astype(np.float32))
    upstream = rng.normal(size=x.shape).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(values)
        unpooled = MaxUnpooling()([values, tf.constant(argmax)])
        loss = tf.reduce_sum(unpooled * upstream)
    grad = tape.gradient(loss, values).numpy()
    expected = np.zeros_like(x)
    expected_grad = np.zeros(pooled.shape, np.float32)
    for i in range(x.shape[1] // 2):
        for j in range(x.shape[2] // 2):
            dy, dx = np.divmod(argmax[:, i, j], 2)
            for b in range(x.shape[0]):
                for ch in range(x.shape[3]):
                    y0, x0 = 2 * i + dy[b, ch], 2 * j + dx[b, ch]
                    expected[b, y0, x0, ch] = values.numpy()[b, i, j, ch]
                    expected_grad[b, i, j, ch] = upstream[b, y0, x0, ch]
    np.testing.assert_array_equal(unpooled.numpy(), expected)  # the max positions of x, zeros elsewhere
    np.testing.assert_array_equal(grad, expected_grad)  # each value gets the gradient of where it went


@pytest.mark.parametrize("factor", [2, 4])
def test_bilinear_upsampling_equals_tf_resize_at_unknown_sizes(factor):
    x = np.random.default_rng(factor).normal(size=(2, 3, 5, 4)).astype(np.float32)
    traced = tf.function(BilinearUpsampling(factor).__call__, input_signature=[tf.TensorSpec([None, None, None, 4])])
    expected = tf.image.resize(x, (3 * factor, 5 * factor), "bilinear").numpy()
    np.testing.assert_allclose(traced(x).numpy(), expected, atol=1e-6)


def _feature_size(model: keras.Model, layer: str) -> tuple[int, int]:
    probe = keras.Model(model.input, model.get_layer(layer).output)
    return tuple(probe(np.zeros((1, 64, 128, 3), np.float32)).shape[1:3])


@pytest.mark.parametrize("output_stride", [16, 8])
def test_deeplab_aspp_runs_at_the_output_stride(output_stride):
    model = build_model("deeplabv3plus", output_stride=output_stride, base_filters=4)
    assert _feature_size(model, "aspp_concat") == (64 // output_stride, 128 // output_stride)
    rates = [model.get_layer(f"aspp_rate{r}_conv").dilation_rate[0] for r in (6, 12, 18) if output_stride == 16]
    rates += [model.get_layer(f"aspp_rate{r}_conv").dilation_rate[0] for r in (12, 24, 36) if output_stride == 8]
    assert rates == [6, 12, 18] if output_stride == 16 else [12, 24, 36]
    assert model(np.zeros((1, 64, 128, 3), np.float32)).shape == (1, 64, 128, 19)


def test_separable_deeplab_puts_the_atrous_rates_on_depthwise_convolutions():
    plain = build_model("deeplabv3plus", output_stride=16, base_filters=4)
    model = build_model("deeplabv3plus", output_stride=16, base_filters=4, separable=True)
    for name in ("aspp_rate6", "aspp_rate12", "aspp_rate18", "decoder_a", "decoder_b"):
        depthwise, pointwise = model.get_layer(f"{name}_depthwise"), model.get_layer(f"{name}_conv")
        assert isinstance(depthwise, keras.layers.DepthwiseConv2D) and pointwise.kernel_size == (1, 1)
        assert depthwise.dilation_rate[0] == (int(name[9:]) if name.startswith("aspp") else 1)
    assert model.count_params() < plain.count_params()
    assert _feature_size(model, "aspp_concat") == (4, 8)
    assert model(np.zeros((1, 64, 128, 3), np.float32)).shape == (1, 64, 128, 19)


def test_atrous_backbone_keeps_its_weights_and_stops_at_the_output_stride(tmp_path):
    keras.utils.set_random_seed(1)
    reference = keras.applications.MobileNetV2(include_top=False, weights=None)
    path = str(tmp_path / "mobilenetv2.weights.h5")
    reference.save_weights(path)
    model = ModelOptions(name="deeplabv3plus", backbone="mobilenetv2", backbone_weights=path, output_stride=8).build()
    backbone = model.get_layer("backbone")
    for mine, theirs in zip(backbone.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert _feature_size(model, "aspp_concat") == (8, 16)  # stride 8, not the network's 32

    with pytest.raises(OptionsError, match="not weights of the vgg16 encoder"):
        ModelOptions(name="fcn8s", backbone="vgg16", backbone_weights=path).build()
    with pytest.raises(OptionsError, match="segnet takes vgg16"):
        ModelOptions(name="segnet", backbone="resnet50")


def test_options_left_unset_take_the_models_registry_defaults():
    """ModelSpec.defaults: DeepLabV3+ defaults to ImageNet's MobileNetV2 and a 128-wide decoder; the
    weights follow only its own backbone; every other model keeps the general defaults; the
    resolved values are what model.json records, so a recorded run reads back the same."""
    from segops.models import REGISTRY
    from segops.training.options import MODEL_DEPENDENT_DEFAULTS

    deeplab = ModelOptions(name="deeplabv3plus")
    assert (deeplab.backbone, deeplab.backbone_weights, deeplab.base_filters, deeplab.separable) == (
        "mobilenetv2", "imagenet", 16, True)
    assert deeplab.hparams()["backbone_weights"] == "imagenet" and deeplab.hparams(pretrained=False)["backbone_weights"] == "none"
    other_encoder = ModelOptions(name="deeplabv3plus", backbone="resnet50")
    assert (other_encoder.backbone_weights, other_encoder.base_filters) == ("none", 16)
    scratch = ModelOptions(name="deeplabv3plus", backbone="none", base_filters=32)
    assert (scratch.backbone_weights, scratch.base_filters) == ("none", 32)
    for name in ("unet", "fcn8s", "fast_scnn", "ddrnet23_slim"):
        opts = ModelOptions(name=name)
        assert {option: getattr(opts, option) for option in MODEL_DEPENDENT_DEFAULTS} == MODEL_DEPENDENT_DEFAULTS
        assert not REGISTRY[name].defaults
    assert ModelOptions(**{f.name: getattr(deeplab, f.name) for f in dataclasses.fields(deeplab)}) == deeplab
    with pytest.raises(OptionsError, match="need a --backbone"):
        ModelOptions(name="unet", backbone_weights="imagenet")
    from segops.training.options import TrainOptions

    def lr(**flat):
        return TrainOptions.from_flat(prepared="p", out="o", **flat).optim.lr

    assert (lr(model="deeplabv3plus"), lr(model="unet"), lr(model="deeplabv3plus", lr=1e-3)) == (5e-4, 2e-3, 1e-3)

    def batch(**flat):
        opts = TrainOptions.from_flat(prepared="p", out="o", **flat)
        return opts.data.batch_size, opts.to_json()["batch_size"]  # resolved, and recorded as resolved

    assert batch(model="deeplabv3plus") == (REGISTRY["deeplabv3plus"].batch_size, REGISTRY["deeplabv3plus"].batch_size)
    assert (batch(model="unet"), batch(model="deeplabv3plus", batch_size=8)) == ((8, 8), (8, 8))

    def loss(**flat):
        opts = TrainOptions.from_flat(prepared="p", out="o", **flat)
        return opts.optim.loss, opts.to_json()["loss"]

    assert loss(model="deeplabv3plus") == (REGISTRY["deeplabv3plus"].loss, REGISTRY["deeplabv3plus"].loss)
    assert (loss(model="unet"), loss(model="deeplabv3plus", loss=" CE ")) == (("ce", "ce"), ("ce", "ce"))


def test_a_frozen_encoder_batch_norm_keeps_its_statistics_while_the_rest_trains():
    """--freeze-encoder-bn: a training-mode call leaves the encoder's BatchNorm moving statistics
    as built while the decoder's move, and the optimizer gets the encoder's convolutions but not
    its BatchNorm scale and offset; set_encoder_trainable keeps them frozen when it (un)freezes."""
    from segops.training.loop import set_encoder_trainable

    assert ModelOptions(name="deeplabv3plus", freeze_encoder_bn=True).freeze_encoder_bn
    assert not ModelOptions(name="unet", backbone="mobilenetv2").freeze_encoder_bn  # the general default
    with pytest.raises(OptionsError, match="need a --backbone"):
        ModelOptions(name="deeplabv3plus", backbone="none", freeze_encoder_bn=True)
    keras.utils.set_random_seed(3)
    model = ModelOptions(name="deeplabv3plus", backbone_weights="none", base_filters=2,
                         freeze_encoder_bn=True).build(num_classes=3)  # fmt: skip
    set_encoder_trainable(model, False, freeze_bn=True)
    set_encoder_trainable(model, True, freeze_bn=True)  # the end of --freeze-backbone-epochs
    encoder = model.get_layer("backbone")
    encoder_bn = [layer for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)]
    decoder_bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert encoder_bn and decoder_bn and not any(layer.trainable for layer in encoder_bn)
    trained = {id(w) for w in model.trainable_weights}
    assert not any(id(w) in trained for layer in encoder_bn for w in layer.weights)
    assert all(id(w) in trained for layer in encoder.layers if isinstance(layer, keras.layers.Conv2D)
               for w in layer.trainable_weights)  # fmt: skip

    def statistics(layers):
        return [keras.ops.convert_to_numpy(w).copy() for layer in layers for w in (layer.moving_mean, layer.moving_variance)]

    encoder_before, decoder_before = statistics(encoder_bn), statistics(decoder_bn)
    model(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32"), training=True)
    for before, after in zip(encoder_before, statistics(encoder_bn), strict=True):
        np.testing.assert_array_equal(before, after)
    assert all(not np.array_equal(b, a) for b, a in zip(decoder_before, statistics(decoder_bn), strict=True))
