"""The model zoo: max unpooling against a numpy reference, DeepLabV3+'s output stride, backbone
weights from a file, and every new model through train -> export -> `segops infer`."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from agreement import assert_labels_agree
from trainutil import make_scene, write_prepared

from segops.core.imageio import encode_png
from segops.core.options import OptionsError
from segops.inference.model import SegmentationModelHandler
from segops.inference.options import InferOptions, PredictOptions
from segops.inference.sources import open_source
from segops.inference.stage_values import ImageExample
from segops.models import build_model, export_dir
from segops.models.layers import BilinearUpsampling, MaxPoolingWithArgmax, MaxUnpooling
from segops.training.loop import train
from segops.training.options import ModelOptions, TrainOptions
from workflows.infer import run_infer

H, W = 32, 64


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


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    write_prepared(str(root), {"train": 4, "val": 2}, height=H, width=W)
    return str(root)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    rng = np.random.default_rng(5)
    images = {}
    for name in ("a", "b"):
        rgb, _ = make_scene(rng, H, W)
        (root / f"{name}.png").write_bytes(encode_png(rgb))
        images[name] = rgb
    return root, images


class _EncoderWatch(keras.callbacks.Callback):
    """(sum of the backbone's weights, trainable) at the start and after each epoch."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def _look(self):
        if any(layer.name == "backbone" for layer in self.model.layers):
            backbone = self.model.get_layer("backbone")
            self.seen.append((float(sum(np.sum(w) for w in backbone.get_weights())), backbone.trainable))

    def on_train_begin(self, logs=None):
        if not self.seen:
            self._look()

    def on_epoch_end(self, epoch, logs=None):
        self._look()


def test_segnet_basic_takes_a_training_step():
    """SegNet-Basic shares SegNet's pooling/unpooling layers, whose export and `segops infer` run
    is tested below; here one optimizer step moves every trainable weight."""
    keras.utils.set_random_seed(2)
    model = build_model("segnet_basic", depth=3, base_filters=8)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(2)
    images, labels = make_scene(rng, H, W)
    before = [np.array(w) for w in model.trainable_weights]
    loss = model.train_on_batch(images[None].astype(np.float32), labels[None].clip(0, 18))
    assert np.isfinite(loss) and model.output.shape[-1] == 19
    assert all(not np.array_equal(b, np.array(w)) for b, w in zip(before, model.trainable_weights, strict=True))


MODELS = {
    "segnet": {"base_filters": 4},
    "deeplabv3plus": {"base_filters": 4, "output_stride": 8},
    "unet+vgg16": {"base_filters": 4, "backbone": "vgg16", "freeze_backbone_epochs": 1},
}


@pytest.mark.parametrize("case", list(MODELS))
def test_every_model_trains_exports_and_runs_through_infer(case, prepared, archive, tmp_path):
    """Train (the backbone case: one frozen epoch, then one fine-tuning epoch), export, then infer
    with the export: through the RunInference model handler of `segops infer` for each model, and
    one whole `segops infer` run (Beam) for SegNet, whose custom layers must survive the SavedModel."""
    name = case.split("+")[0]
    epochs = 2 if MODELS[case].get("freeze_backbone_epochs") else 1
    run = tmp_path / "run"
    opts = TrainOptions.from_flat(prepared=prepared, out=str(run), model=name, epochs=epochs, batch_size=4,
                                  crop=(H, W), verbose=0, **MODELS[case])  # fmt: skip
    encoder = _EncoderWatch()
    result = train(opts, extra_callbacks=[encoder])
    assert result.epochs_trained == epochs and np.isfinite(result.history[-1]["loss"])
    summary = json.loads((run / "model.json").read_text())
    assert summary["architecture"] == name and summary["training"]["hparams"] == opts.model.hparams()
    if "backbone" in MODELS[case]:  # frozen for the first epoch (weights unchanged), fine-tuned in the second
        (start, trainable0), (after1, trainable1), (after2, trainable2) = encoder.seen
        assert (trainable0, trainable1, trainable2) == (False, False, True)
        assert after1 == start and after2 != after1

    root, images = archive
    exported = keras.saving.load_model(str(run / "best" / "model.keras"))
    source = open_source(str(run))
    assert source.info.stride == opts.model.stride
    handler = SegmentationModelHandler(source, PredictOptions(tile=None))
    batch = [ImageExample(item=None, rgb=rgb, gt=None) for rgb in images.values()]
    for prediction, rgb in zip(handler.run_inference(batch, handler.load_model()), images.values(), strict=True):
        expected = keras.ops.convert_to_numpy(keras.ops.softmax(exported(rgb[None].astype(np.float32))))[0]
        np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-5)
    if name == "segnet":
        out = tmp_path / "infer"
        report = run_infer(InferOptions(str(run), str(root), str(out), crf=False))
        assert (report.processed, report.dead_lettered) == (2, 0)
        serving = export_dir.load_serving_fn(str(run))
        for stem, rgb in images.items():
            mask = tf.io.decode_png((out / "masks" / f"{stem}_trainIds.png").read_bytes()).numpy()[..., 0]
            # a barely trained SegNet is near-uniform (most pixels near-ties): the probabilities
            # were compared above (allclose), the mask need only be one of their argmaxes
            assert_labels_agree(mask, serving(images=rgb[None])["probabilities"].numpy()[0], err_msg=stem,
                                max_near_tie_share=None)  # fmt: skip
