"""`segops infer` on LiteRT ``.tflite`` files built here offline from Keras models with
``tf.lite.TFLiteConverter``: a fixed 1xHxWx3 multi-class model under ``--tta flip``, and a
one-channel sigmoid segmenter fed as MediaPipe's are ([0, 1] values, corner-aligned resize,
letterboxed), each run's masks against the file's own prediction computed here with LiteRT's
interpreter; Select TensorFlow ops and an unresolved custom op refused before anything is
written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from agreement import assert_labels_agree
from click.testing import CliRunner
from trainutil import synth_val_images, train_ids_mask

from segops.cli import cli
from segops.core.labels import CLASS_NAMES
from segops.inference.sources import open_source

pytestmark = pytest.mark.slow
H, W = 32, 64
PERSON = CLASS_NAMES.index("person")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(data dir, the val images by relative path)."""
    return synth_val_images(tmp_path_factory.mktemp("litert") / "data", 2, H, W, seed=12)


def convert(fn, shape: tuple[int, ...], path: Path, flex: bool = False, custom: bool = False) -> Path:
    """A tf.function over one fixed-shape float input -> ``path`` (.tflite)."""
    import tensorflow as tf

    concrete = tf.function(fn, input_signature=[tf.TensorSpec(shape, tf.float32)]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)
    if flex:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    converter.allow_custom_ops = custom
    path.write_bytes(converter.convert())
    return path


def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    """The file's own output for ``x``, by LiteRT's interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def infer(model: Path, data: Path, out: Path, *flags: str):
    return CliRunner().invoke(cli, ["infer", str(model), str(data), str(out), "--split", "val", "--no-crf", *flags])


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_a_fixed_shape_tflite_model_runs_under_flip_tta_as_its_own_prediction(data, tmp_path):
    import keras

    root, images = data
    keras.utils.set_random_seed(9)
    net = keras.Sequential([keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                            keras.layers.Conv2D(19, 3, padding="same")])  # fmt: skip
    model = convert(lambda x: net(x), (1, H, W, 3), tmp_path / "seg.tflite")
    Path(str(model) + ".card.json").write_text(json.dumps({"classes": "cityscapes", "input": {"size": [H, W], "range": "-1..1"}}))
    source = open_source(str(model))
    assert source.info.model_id.startswith("litert-") and source.batch == 1
    result = infer(model, root, tmp_path / "out", "--tta", "flip")
    assert result.exit_code == 0 and "processed 2, skipped (already done) 0, dead-lettered 0" in result.output, result.output
    for rel, rgb in images.items():
        x = rgb[None].astype(np.float32) / np.float32(127.5) - 1
        mean = (softmax(run_tflite(model, x)) + softmax(run_tflite(model, x[:, :, ::-1]))[:, :, ::-1]) / 2
        assert_labels_agree(train_ids_mask(tmp_path / "out", rel), mean[0], err_msg=rel)


def test_a_mediapipe_style_sigmoid_segmenter_runs_letterboxed_with_corner_aligned_resizes(data, tmp_path):
    """A 1x32x32x3 [0, 1] input and a 1x32x32x1 probability: a 32x64 image is resized (corner
    aligned) to 16x32, centred on a zero canvas, and the probability's rows 8..24 resized back."""
    import keras
    import tensorflow as tf

    root, images = data
    keras.utils.set_random_seed(10)
    net = keras.Sequential([keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
                            keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")])  # fmt: skip
    model = convert(lambda x: net(x), (1, 32, 32, 3), tmp_path / "selfie.tflite")
    card = {"classes": ["background", "person"], "class_map": {"person": "person"},
            "input": {"size": [32, 32], "range": "0..1", "resize": "align_corners", "fit": "letterbox"},
            "output": {"kind": "sigmoid"}}  # fmt: skip
    Path(str(model) + ".card.json").write_text(json.dumps(card))
    result = infer(model, root, tmp_path / "out")
    assert result.exit_code == 0, result.output

    def aligned(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return tf.compat.v1.image.resize(x, size, align_corners=True).numpy()

    for rel, rgb in images.items():
        canvas = np.zeros((1, 32, 32, 3), np.float32)
        canvas[:, 8:24] = aligned(rgb[None].astype(np.float32), (16, 32)) / np.float32(255)
        p = aligned(run_tflite(model, canvas)[:, 8:24], (H, W))[0]
        mask = train_ids_mask(tmp_path / "out", rel)
        assert set(np.unique(mask)) <= {PERSON, 255}
        assert_labels_agree((mask == PERSON).astype(np.uint8), np.concatenate([1 - p, p], axis=-1), err_msg=rel)


@pytest.mark.parametrize(("flex", "words"), [
    (True, "uses Select TensorFlow ops (FlexMatrixDeterminant): TensorFlow kernels, some of which read and write files"),
    (False, "loading it failed: RuntimeError: Encountered unresolved custom op: MatrixDeterminant"),
])  # fmt: skip
def test_what_a_tflite_file_must_not_do_is_refused_before_anything_is_written(data, tmp_path, flex, words):
    import tensorflow as tf

    root, _ = data

    def det(x):  # no LiteRT builtin: a Flex op, or a custom op LiteRT has no kernel for
        return tf.zeros([1, 8, 8, 19]) + tf.reshape(tf.linalg.det(x[..., :1, :1, 0]), [1, 1, 1, 1])

    model = convert(det, (1, 8, 8, 3), tmp_path / "det.tflite", flex=flex, custom=not flex)
    Path(str(model) + ".card.json").write_text(json.dumps({"classes": "cityscapes", "input": {"size": [8, 8]}}))
    result = infer(model, root, tmp_path / "out")
    assert result.exit_code == 1 and words in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_dynamic_size_tflite_model_is_resized_to_each_input_shape(tmp_path):
    """Same-size images share a call (batch 2), another size resizes the input again."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from segops.inference.options import PredictOptions
    from segops.inference.tiling import predict_probabilities

    keras.utils.set_random_seed(11)
    net = keras.Sequential([keras.layers.Conv2D(19, 3, padding="same")])
    model = convert(lambda x: net(x), (None, None, None, 3), tmp_path / "any.tflite")
    Path(str(model) + ".card.json").write_text(json.dumps({"classes": "cityscapes", "input": {"stride": 4}}))
    source = open_source(str(model))
    assert source.batch == 0
    loaded = source.load()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((8, 12, 3), (8, 12, 3), (16, 4, 3))]
    for rgb, probs in zip(images, predict_probabilities(loaded, images, 4, PredictOptions(tile=0)), strict=True):
        interpreter = Interpreter(model_path=str(model))
        interpreter.resize_tensor_input(0, [1, *rgb.shape], strict=True)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], rgb[None].astype(np.float32))
        interpreter.invoke()
        own = softmax(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))[0]
        np.testing.assert_allclose(probs, own, atol=1e-5)
