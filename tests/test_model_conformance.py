"""Every network of the registry, as keras-hub's ``run_vision_backbone_test`` checks a backbone: built
at the tiny hyper-parameters of its :data:`~segops.models.REGISTRY` entry, it gives finite float32
logits at input size for sizes of 2x and 3x the stride the registry states, float32 logits under
mixed precision, the same outputs after a ``.keras`` round trip, and one train -> export -> infer
pass. A new entry is checked by adding it; nothing here names a network but the pretrained-encoder
case at the end. Sizes are tiny (two images of 2x3 strides, one training step) to keep the suite fast."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from trainutil import make_scene, write_prepared

from segops.inference.model import SegmentationModelHandler
from segops.inference.options import PredictOptions
from segops.inference.sources import open_source
from segops.inference.stage_values import ImageExample
from segops.models import NO_BACKBONE, REGISTRY, build_model, model_stride, models_markdown, strides_text
from segops.training.loop import train
from segops.training.options import ModelOptions, TrainOptions

NAMES = list(REGISTRY)
NUM_CLASSES = 7  # not the default 19: the builders must take the label set's count
# prepared images and the archive: multiples of every tiny stride, and 2x3 strides of the coarsest
H, W = 64, 96
DOCS = Path(__file__).parents[1] / "docs"


def _tiny(name: str) -> dict:
    return dict(REGISTRY[name].tiny)


def _images(name: str, seed: int = 0) -> np.ndarray:
    """Two different images of 2x3 strides (one square side would hide a transposed H and W)."""
    stride = REGISTRY[name].stride(**_tiny(name))
    return np.random.default_rng(seed).uniform(0, 255, (2, 2 * stride, 3 * stride, 3)).astype("float32")


@pytest.fixture(scope="module")
def models():
    """The tiny float32 model of each entry, built once for the tests that only call it."""
    cache: dict[str, keras.Model] = {}

    def get(name: str) -> keras.Model:
        if name not in cache:
            keras.utils.set_random_seed(0)
            cache[name] = build_model(name, num_classes=NUM_CLASSES, **_tiny(name))
        return cache[name]

    return get


def test_every_entry_states_its_stride_and_documents_its_hyper_parameters():
    for name, spec in REGISTRY.items():
        stride = spec.stride(**spec.tiny)
        assert stride >= 1 and stride & (stride - 1) == 0, name  # poolings and strided convs halve
        assert model_stride(name, **spec.tiny) == stride == ModelOptions(name=name, **spec.tiny).stride
        assert spec.stride(input_downsample=2, **spec.tiny) == 2 * stride
        assert f"{name} {spec.stride_text()}" in strides_text()  # --model's help
        undocumented = [hp for hp in spec.hparams if hp not in spec.hparams_doc and not hp.startswith("backbone")]
        assert not undocumented, f"{name}: hparams_doc does not name {undocumented}"


def test_the_network_table_in_docs_train_md_is_the_one_the_registry_writes():
    lines = (DOCS / "train.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model | H, W multiple of"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    assert "\n".join(lines[start:end]) + "\n" == models_markdown(), "paste segops.models.models_markdown() there"


@pytest.mark.parametrize("name", NAMES)
def test_logits_at_input_size_for_2x_and_3x_the_stated_stride(name, models):
    images = _images(name)
    logits = keras.ops.convert_to_numpy(models(name)(images, training=False))
    assert logits.shape == (*images.shape[:3], NUM_CLASSES)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    assert not np.allclose(logits[0], logits[1])  # connected end to end: other images, other logits


@pytest.mark.parametrize("name", NAMES)
def test_logits_are_float32_under_mixed_precision(name):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_model(name, num_classes=NUM_CLASSES, **_tiny(name))
    finally:
        keras.config.set_dtype_policy("float32")
    assert any(layer.compute_dtype == "float16" for layer in model.layers)  # the policy did reach the body
    assert model.layers[-1].name == "logits"  # the shared classifier head's float32 identity ends every model
    logits = model(_images(name)[:1], training=False)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.isfinite(keras.ops.convert_to_numpy(logits)).all()


@pytest.mark.parametrize("name", NAMES)
def test_keras_round_trip_gives_identical_outputs(name, models, tmp_path):
    model = models(name)
    images = _images(name, seed=1)
    # Move weights and batch-norm statistics off their initial values (zero-initialised skips included).
    rng = np.random.default_rng(2)
    for w in model.trainable_weights:
        w.assign(w + rng.normal(0, 0.05, w.shape).astype("float32"))
    model(images, training=True)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    # bit-equal is guaranteed here: the same process, input shape and kernels on identical weights
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images)), keras.ops.convert_to_numpy(loaded(images)))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    write_prepared(str(root), {"train": 2, "val": 2}, height=H, width=W, num_shards=1)
    return str(root)


@pytest.fixture(scope="module")
def archive():
    rng = np.random.default_rng(5)
    return [make_scene(rng, H, W)[0] for _ in range(2)]


def _train_export_infer(name: str, prepared: str, archive: list, out: Path, epochs: int = 1,
                        callbacks: tuple = (), **hparams) -> TrainOptions:  # fmt: skip
    """Train ``epochs`` of one step, export, and run the archive through `segops infer`'s
    RunInference handler on the export's SavedModel: its probabilities must be the softmax of the
    exported ``.keras`` model's logits."""
    stride = model_stride(name, **hparams)
    opts = TrainOptions.from_flat(prepared=prepared, out=str(out), model=name, epochs=epochs, steps_per_epoch=1,
                                  batch_size=2, crop=(2 * stride, 3 * stride), verbose=0, eager=True,
                                  **hparams)  # fmt: skip  eager: one step does not repay tracing it
    result = train(opts, extra_callbacks=list(callbacks))
    assert result.epochs_trained == epochs and np.isfinite(result.history[-1]["loss"])
    summary = json.loads((out / "model.json").read_text())
    assert summary["architecture"] == name and summary["training"]["hparams"] == opts.model.hparams()

    source = open_source(str(out))
    assert source.info.stride == stride  # what infer pads and tiles to is the registry's stride
    handler = SegmentationModelHandler(source, PredictOptions(tile=None))
    batch = [ImageExample(item=None, rgb=rgb, gt=None) for rgb in archive]
    exported = keras.saving.load_model(str(out / "best" / "model.keras"), safe_mode=True)
    for prediction, rgb in zip(handler.run_inference(batch, handler.load_model()), archive, strict=True):
        expected = keras.ops.convert_to_numpy(keras.ops.softmax(exported(rgb[None].astype(np.float32))))[0]
        assert prediction.probabilities.shape == (H, W, expected.shape[-1])
        np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-5)
    return opts


@pytest.mark.parametrize("name", NAMES)
def test_trains_exports_and_runs_through_infer(name, prepared, archive, tmp_path):
    _train_export_infer(name, prepared, archive, tmp_path / "run", **_tiny(name))


class _EncoderWatch(keras.callbacks.Callback):
    """(sum of the backbone's weights, trainable) at the start and after each epoch."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def _look(self):
        backbone = self.model.get_layer("backbone")
        self.seen.append((float(sum(np.sum(w) for w in backbone.get_weights())), backbone.trainable))

    def on_train_begin(self, logs=None):
        if not self.seen:
            self._look()

    def on_epoch_end(self, epoch, logs=None):
        self._look()


def test_a_pretrained_encoder_is_frozen_then_fine_tuned_and_exported(prepared, archive, tmp_path):
    """A nested keras.applications encoder (U-Net on VGG16): frozen for the first epoch (weights
    unchanged), fine-tuned in the second, and exported with the rest."""
    assert "vgg16" in REGISTRY["unet"].backbones and REGISTRY["unet"].tiny.get("backbone", NO_BACKBONE) == NO_BACKBONE
    encoder = _EncoderWatch()
    _train_export_infer("unet", prepared, archive, tmp_path / "run", epochs=2, callbacks=(encoder,),
                        base_filters=4, backbone="vgg16", freeze_backbone_epochs=1)  # fmt: skip
    (start, trainable0), (after1, trainable1), (after2, trainable2) = encoder.seen
    assert (trainable0, trainable1, trainable2) == (False, False, True)
    assert after1 == start and after2 != after1
