"""`segops infer` on models that are not segops exports: an ONNX file (onnxruntime), a ``.keras``
file, a plain SavedModel and a keras-hub SegFormer preset, each built here offline with random
weights. Each run's masks must equal the model's own prediction computed directly in the test
(the card's preprocessing written out by hand); a wrong card fails with one line and writes
nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from agreement import assert_labels_agree
from click.testing import CliRunner
from trainutil import synth_val_and_tiny_unet

from segops.cli import cli
from segops.core.labels import NUM_CLASSES
from segops.inference.sources import open_source

pytestmark = pytest.mark.slow
H, W = 32, 64
IMAGES = 2
MEAN, STD = [120.0, 110.0, 100.0], [60.0, 55.0, 50.0]
CITYSCAPES_CARD = {"card_version": 1, "classes": "cityscapes", "input": {"stride": 4}, "output": {"kind": "logits"}}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """(root, data dir, the exported tiny U-Net's Keras model, the val images by relative path)."""
    import keras

    root = tmp_path_factory.mktemp("sources")
    export, data = synth_val_and_tiny_unet(root, IMAGES, H, W, data_seed=3, model_seed=4)
    model = keras.saving.load_model(str(export / "model.keras"), compile=False)
    val = data / "leftImg8bit" / "val"
    images = {str(p.relative_to(val)): cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(val.rglob("*.png"))}
    return root, data, export, model, images


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def infer(model: Path, data: Path, out: Path):
    return CliRunner().invoke(cli, ["infer", str(model), str(data), str(out), "--split", "val", "--no-crf"])


def masks_of(out: Path, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {rel: cv2.imread(str(out / "masks" / rel.replace("_leftImg8bit.png", "_trainIds.png")), cv2.IMREAD_UNCHANGED) for rel in images}


def assert_infer_matches(model_path: Path, data: Path, out: Path, images: dict[str, np.ndarray], predict) -> str:
    """Run `segops infer` on ``model_path``; every mask is argmax(predict(rgb)) up to float near-ties
    (tests/agreement.py: the runtimes differ in the last bits). Returns the model id."""
    result = infer(model_path, data, out)
    assert result.exit_code == 0, result.output
    model_id = open_source(str(model_path)).info.model_id
    assert f"model {model_id}" in result.output
    written = masks_of(out, images)
    for rel, rgb in images.items():
        assert written[rel].shape == (H, W)
        assert_labels_agree(written[rel], predict(rgb[None])[0], err_msg=rel)
    assert len({m.tobytes() for m in written.values()}) == len(written)  # not one constant mask
    assert len(np.unique(np.concatenate([m.ravel() for m in written.values()]))) > 1
    return model_id


def write_card(path: Path, card: dict) -> None:
    path.write_text(json.dumps(card))


@pytest.fixture(scope="module")
def onnx_file(archive):
    import tensorflow as tf
    import tf2onnx

    root, _, _, model, _ = archive
    directory = root / "onnx"
    directory.mkdir()
    spec = (tf.TensorSpec((None, None, None, 3), tf.float32, name="images"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(directory / "unet.onnx"))
    return directory / "unet.onnx"


@pytest.mark.parametrize("channels", ["RGB", "BGR"])
def test_an_onnx_file_with_its_card_runs_through_onnxruntime(archive, onnx_file, tmp_path, channels):
    _, data, _, model, images = archive
    card = {**CITYSCAPES_CARD, "name": "unet-onnx", "input": {"channels": channels, "mean": MEAN, "std": STD, "stride": 4}}
    write_card(Path(str(onnx_file) + ".card.json"), card)

    def predict(rgb: np.ndarray) -> np.ndarray:
        x = rgb.astype(np.float32)[..., ::-1] if channels == "BGR" else rgb.astype(np.float32)
        return softmax(model.predict((x - np.float32(MEAN)) / np.float32(STD), verbose=0))

    model_id = assert_infer_matches(onnx_file, data, tmp_path / "out", images, predict)
    assert model_id.startswith("onnx-")


def test_the_model_id_names_the_file_and_the_card(archive, onnx_file):
    write_card(Path(str(onnx_file) + ".card.json"), CITYSCAPES_CARD)
    first = open_source(str(onnx_file)).info.model_id
    write_card(Path(str(onnx_file) + ".card.json"), {**CITYSCAPES_CARD, "input": {"channels": "BGR", "stride": 4}})
    assert open_source(str(onnx_file)).info.model_id != first  # the same network read differently
    assert open_source(str(onnx_file.parent)).info.model_id == open_source(str(onnx_file)).info.model_id


def test_a_keras_file_with_its_card_runs(archive, tmp_path):
    root, data, export, model, images = archive
    directory = tmp_path / "keras"
    directory.mkdir()
    shutil.copy(export / "model.keras", directory / "unet.keras")
    write_card(directory / "card.json", CITYSCAPES_CARD)  # the card of the directory's one model file
    predict = lambda rgb: softmax(model.predict(rgb.astype(np.float32), verbose=0))  # noqa: E731
    assert assert_infer_matches(directory / "unet.keras", data, tmp_path / "out", images, predict).startswith("keras-")


def test_a_plain_saved_model_nchw_normalised_runs(archive, tmp_path):
    """A SavedModel taking normalised NCHW floats ("pixels") and returning NCHW logits ("scores")."""
    import tensorflow as tf

    _, data, _, model, images = archive
    mean, std = tf.constant(MEAN), tf.constant(STD)

    class Net(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 3, None, None], tf.float32, name="pixels")])
        def serve(self, pixels):
            rgb = tf.transpose(pixels, (0, 2, 3, 1)) * std + mean
            return {"scores": tf.transpose(self.model(rgb, training=False), (0, 3, 1, 2))}

    net = Net()
    directory = tmp_path / "saved"
    tf.saved_model.save(net, str(directory), signatures={"serving_default": net.serve})
    card = {"classes": "cityscapes", "input": {"layout": "NCHW", "mean": MEAN, "std": STD, "stride": 4},
            "output": {"kind": "logits"}}  # fmt: skip
    write_card(directory / "card.json", card)
    loaded = tf.saved_model.load(str(directory)).signatures["serving_default"]

    def predict(rgb: np.ndarray) -> np.ndarray:
        x = ((rgb.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)).transpose(0, 3, 1, 2)
        return softmax(loaded(pixels=tf.constant(x))["scores"].numpy().transpose(0, 2, 3, 1))

    assert assert_infer_matches(directory, data, tmp_path / "out", images, predict).startswith("savedmodel-")


def test_a_keras_hub_segformer_preset_runs_with_its_own_preprocessing(archive, tmp_path):
    """A SegFormer with a 32x32 image converter on 32x64 images: resized in, logits at 32x32,
    probabilities resized back to 32x64."""
    import keras
    import keras_hub
    import tensorflow as tf

    _, data, _, _, images = archive
    keras.utils.set_random_seed(7)
    encoder = keras_hub.models.MiTBackbone(
        layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 1], layerwise_sr_ratios=[2, 1],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2], image_shape=(32, 32, 3),
        hidden_dims=[8, 16],
    )  # fmt: skip
    converter = keras_hub.layers.SegFormerImageConverter(image_size=(32, 32), scale=[1 / 58.0, 1 / 57.0, 1 / 57.5],
                                                         offset=[-2.1, -2.0, -1.8])  # fmt: skip
    segmenter = keras_hub.models.SegFormerImageSegmenter(
        backbone=keras_hub.models.SegFormerBackbone(image_encoder=encoder, projection_filters=16),
        num_classes=NUM_CLASSES,
        preprocessor=keras_hub.models.SegFormerImageSegmenterPreprocessor(image_converter=converter),
    )
    preset = tmp_path / "segformer"
    segmenter.save_to_preset(str(preset))

    def predict(rgb: np.ndarray) -> np.ndarray:
        x = tf.image.resize(rgb.astype(np.float32), (32, 32)).numpy()
        x = x * np.float32([1 / 58.0, 1 / 57.0, 1 / 57.5]) + np.float32([-2.1, -2.0, -1.8])
        probs = softmax(keras.ops.convert_to_numpy(segmenter(x, training=False)))
        return tf.image.resize(probs, (H, W)).numpy()

    model_id = assert_infer_matches(preset, data, tmp_path / "out", images, predict)
    assert model_id.startswith("keras-hub-")
    assert open_source(str(preset)).info.architecture == "SegFormerImageSegmenter"


@pytest.mark.parametrize(
    ("card", "words"),
    [
        ("{not json", "is not valid JSON"),
        ({"classes": "cityscapes", "input": {"chanels": "RGB"}}, "input.chanels is not a card field"),
        ({"classes": "cityscapes", "input": {"channels": "RBG"}}, "input.channels is 'RBG'; expected one of RGB, BGR"),
        ({"classes": "cityscapes", "input": {"mean": [1, 2]}}, "input.mean is [1, 2]; expected 3 numbers"),
        ({"classes": [f"c{i}" for i in range(150)]}, "classes lists 150 classes; segops evaluates the 19"),
        ({"input": {"stride": 4}}, "classes is missing"),
    ],
)
def test_a_wrong_card_fails_in_one_line_and_writes_nothing(archive, onnx_file, tmp_path, card, words):
    _, data, _, _, _ = archive
    model = tmp_path / "unet.onnx"
    shutil.copy(onnx_file, model)
    Path(str(model) + ".card.json").write_text(card if isinstance(card, str) else json.dumps(card))
    result = infer(model, data, tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert words in result.output and f"model {model}: card {model}.card.json" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_model_predicting_another_class_count_is_refused(archive, tmp_path):
    import keras
    import tensorflow as tf
    import tf2onnx

    _, data, _, _, _ = archive
    inputs = keras.Input((None, None, 3))
    net = keras.Model(inputs, keras.layers.Conv2D(150, 1)(inputs))
    model = tmp_path / "ade.onnx"
    tf2onnx.convert.from_keras(net, input_signature=(tf.TensorSpec((None, None, None, 3), tf.float32),),
                               opset=17, output_path=str(model))  # fmt: skip
    write_card(Path(str(model) + ".card.json"), CITYSCAPES_CARD)
    result = infer(model, data, tmp_path / "out")
    assert result.exit_code == 1 and "has 150 classes; segops evaluates the 19 Cityscapes trainIds" in result.output
    assert not (tmp_path / "out").exists()


def test_a_model_without_a_card_is_refused_with_where_to_write_it(archive, onnx_file, tmp_path):
    _, data, _, _, _ = archive
    model = tmp_path / "bare.onnx"
    shutil.copy(onnx_file, model)
    result = infer(model, data, tmp_path / "out")
    assert result.exit_code == 1 and f"has no model card: write {model}.card.json" in result.output
    assert not os.path.exists(tmp_path / "out")


def test_onnx_weights_outside_the_model_directory_are_refused(archive, onnx_file, tmp_path):
    import onnx

    _, data, _, _, _ = archive
    model = onnx.load(str(onnx_file))
    directory = tmp_path / "m"
    directory.mkdir()
    onnx.save_model(model, str(directory / "unet.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)  # fmt: skip
    shutil.move(directory / "weights.bin", tmp_path / "weights.bin")
    stored = onnx.load(str(directory / "unet.onnx"), load_external_data=False)
    for tensor in stored.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    onnx.save_model(stored, str(directory / "unet.onnx"))
    write_card(directory / "card.json", CITYSCAPES_CARD)
    result = infer(directory / "unet.onnx", data, tmp_path / "out")
    assert result.exit_code == 1 and "'../weights.bin', outside the model's directory" in result.output
    assert not (tmp_path / "out").exists()


def test_a_preset_naming_a_foreign_module_is_refused_and_never_loaded(tmp_path):
    from segops.models.export_dir import ModelError

    preset = tmp_path / "preset"
    preset.mkdir()
    (preset / "metadata.json").write_text(json.dumps({"keras_hub_version": "0.32.0"}))
    (preset / "task.json").write_text(json.dumps({"class_name": "X", "config": {"num_classes": NUM_CLASSES}}))
    (preset / "config.json").write_text(json.dumps({"module": "os", "class_name": "system", "config": {}}))
    with pytest.raises(ModelError, match="names module\\(s\\) os"):
        open_source(str(preset))
    (preset / "config.json").write_text(json.dumps({"module": "keras.layers", "class_name": "Lambda", "config": {}}))
    with pytest.raises(ModelError, match="contains a Lambda layer"):
        open_source(str(preset))


def test_a_saved_model_that_writes_files_is_refused_before_loading(archive, tmp_path):
    import tensorflow as tf

    _, data, _, _, _ = archive
    mark = tmp_path / "written"

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def serve(self, images):
            tf.io.write_file(str(mark), "x")
            return {"logits": tf.zeros_like(images[..., :1]) + tf.zeros([NUM_CLASSES])}

    writer = Writer()
    directory = tmp_path / "writer"
    tf.saved_model.save(writer, str(directory), signatures={"serving_default": writer.serve})
    write_card(directory / "card.json", CITYSCAPES_CARD)
    result = infer(directory, data, tmp_path / "out")
    assert result.exit_code == 1 and "holds ops that read/write files or run Python (WriteFile)" in result.output
    assert not mark.exists() and not (tmp_path / "out").exists()


def test_the_report_predictor_recomputes_an_onnx_models_masks(archive, onnx_file):
    from segops.inference.model import Predictor
    from segops.inference.options import PredictOptions

    _, _, _, model, images = archive
    write_card(Path(str(onnx_file) + ".card.json"), CITYSCAPES_CARD)
    model_id = open_source(str(onnx_file)).info.model_id
    predictor = Predictor(model_id, ["/nonexistent", str(onnx_file)], PredictOptions())
    assert predictor.reason == "" and predictor.stride == 4
    rgb = next(iter(images.values()))
    assert_labels_agree(predictor(rgb), softmax(model.predict(rgb[None].astype(np.float32), verbose=0))[0])
    assert Predictor("onnx-0000", [str(onnx_file)], PredictOptions()).reason.startswith("model onnx-0000 not found")


def test_every_source_kind_declares_the_whole_contract(archive, onnx_file, tmp_path):
    """Each kind of SOURCES is concrete (claims, open, load) and claims the paths its docstring
    lists; a path none claims is refused naming the files segops runs."""
    from segops.inference.sources import FILE_SUFFIXES, SOURCES, RemoteSource
    from segops.inference.sources.onnx_model import OnnxSource
    from segops.inference.sources.tf_models import SegopsExport
    from segops.models.export_dir import ModelError

    _, _, export, _, _ = archive
    assert all(not kind.__abstractmethods__ for kind in SOURCES)
    claimed = lambda path: [kind for kind in SOURCES if kind.claims(str(path))]  # noqa: E731
    assert claimed(onnx_file) == [OnnxSource] and claimed("s3://bucket/model.onnx") == [RemoteSource]
    assert claimed(export) == [SegopsExport] and claimed(tmp_path) == []
    stray = tmp_path / "model.pt"
    stray.write_bytes(b"x")
    with pytest.raises(ModelError, match=f"is not a model file segops runs \\({' or '.join(FILE_SUFFIXES)};"):
        open_source(str(stray))
