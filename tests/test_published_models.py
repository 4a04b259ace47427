"""Published models as they come (issue 27), built here offline as ONNX files: a one-channel
sigmoid segmenter and its card, the silently-wrong one-class softmax card refused, a graph with an
operator onnxruntime does not have and one whose output does not fit its card refused by the
launcher's test call before anything is written, a fixed-batch graph under ``--tta flip``, and a
run whose every image is dead-lettered failing with the first reasons."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from agreement import assert_labels_agree
from click.testing import CliRunner
from trainutil import synth_val_images, train_ids_mask

from segops.cli import cli
from segops.core.labels import CLASS_NAMES

pytestmark = pytest.mark.slow
H, W = 32, 64
PERSON = CLASS_NAMES.index("person")
SIGMOID_CARD = {"classes": ["background", "person"], "class_map": {"person": "person"},
                "input": {"range": "0..1"}, "output": {"kind": "sigmoid"}}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(data dir, the val images by relative path)."""
    return synth_val_images(tmp_path_factory.mktemp("published") / "data", 2, H, W, seed=11)


def to_onnx(model, path: Path, batch: int | None = None) -> Path:
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((batch, None, None, 3), tf.float32, name="images"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
    return path


@pytest.fixture(scope="module")
def sigmoid_onnx(tmp_path_factory):
    """A person segmenter as published ones come: [0, 1] input, one sigmoid channel."""
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    net = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x))
    return to_onnx(net, tmp_path_factory.mktemp("sigmoid") / "person.onnx")


def infer(model: Path, data: Path, out: Path, *flags: str):
    return CliRunner().invoke(cli, ["infer", str(model), str(data), str(out), "--split", "val", "--no-crf", *flags])


def write_card(model: Path, card: dict) -> None:
    Path(str(model) + ".card.json").write_text(json.dumps(card))


def assert_refused_before_anything_is_written(result, out: Path, words: str) -> None:
    assert result.exit_code == 1, result.output
    assert words in result.output and result.output.startswith("Error: model "), result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists() and not list(Path.cwd().glob("beam-temp-*"))


def test_a_one_channel_sigmoid_model_with_its_card_gives_its_own_masks(data, sigmoid_onnx, tmp_path):
    import onnxruntime as ort

    root, images = data
    write_card(sigmoid_onnx, SIGMOID_CARD)
    result = infer(sigmoid_onnx, root, tmp_path / "out")
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(sigmoid_onnx), providers=["CPUExecutionProvider"])
    shares = []
    for rel, rgb in images.items():
        p = session.run(None, {"images": rgb[None].astype(np.float32) / np.float32(255)})[0][0]  # its own prediction
        mask = train_ids_mask(tmp_path / "out", rel)
        assert set(np.unique(mask)) <= {PERSON, 255}  # the background is no Cityscapes class: ignore
        assert_labels_agree((mask == PERSON).astype(np.uint8), np.concatenate([1 - p, p], axis=-1), err_msg=rel)
        shares.append((mask == PERSON).mean())
    assert 0 < np.mean(shares) < 1  # the threshold splits the image, not one class everywhere


@pytest.mark.parametrize(
    ("card", "words"),
    [
        ({**SIGMOID_CARD, "classes": ["person"], "output": {"kind": "probabilities"}},
         "classes lists one class under output.kind 'probabilities', where classes compete and one class wins every "
         "pixel: for a one-channel probability write \"output\": {\"kind\": \"sigmoid\"} and \"classes\": "
         "[\"background\", \"person\"]"),
        ({**SIGMOID_CARD, "output": {"kind": "logits"}},
         "output 'sigmoid_out' has one channel; its card lists 2 classes under output.kind 'logits': if the channel is "
         "a probability, write \"output\": {\"kind\": \"sigmoid\"}"),
    ],
)  # fmt: skip
def test_a_card_that_reads_one_channel_as_a_softmax_is_refused_with_what_to_write(data, sigmoid_onnx, tmp_path, card, words):
    import onnx

    root, _ = data
    model = onnx.load(str(sigmoid_onnx))
    model.graph.output[0].name = model.graph.node[-1].output[0] = "sigmoid_out"
    onnx.save(model, str(tmp_path / "person.onnx"))
    write_card(tmp_path / "person.onnx", card)
    assert_refused_before_anything_is_written(infer(tmp_path / "person.onnx", root, tmp_path / "out"), tmp_path / "out", words)


def test_an_operator_onnxruntime_does_not_have_is_refused_before_anything_is_written(data, tmp_path):
    """tf2onnx leaves a custom op in the default domain and still says it converted: the graph
    passes the static checks and fails in the launcher's test call."""
    import onnx
    from onnx import TensorProto, helper

    root, _ = data
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", "h", "w", 3])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", "h", "w", 19])
    node = helper.make_node("Convolution2DTransposeBias", ["images"], ["logits"])
    graph = helper.make_graph([node], "custom", [images], [logits])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    write_card(tmp_path / "m.onnx", {"classes": "cityscapes"})
    result = infer(tmp_path / "m.onnx", root, tmp_path / "out")
    assert_refused_before_anything_is_written(result, tmp_path / "out", "m.onnx: loading it failed: ")
    assert "No Op registered for Convolution2DTransposeBias" in result.output


def test_an_output_the_card_misreads_is_refused_by_the_test_call(data, sigmoid_onnx, tmp_path):
    """A sigmoid's output read as logits of an unknown channel count passes the static checks
    (the graph does not say its channels); the test call's values say what it is."""
    import onnx

    root, _ = data
    model = onnx.load(str(sigmoid_onnx))
    model.graph.output[0].type.tensor_type.shape.dim[3].dim_param = "c"  # channels unknown until it runs
    onnx.save(model, str(tmp_path / "person.onnx"))
    write_card(tmp_path / "person.onnx", {**SIGMOID_CARD, "output": {"kind": "sigmoid"}, "classes": ["background", "person", "car"],
                                          "class_map": {"person": "person", "car": "car"}})  # fmt: skip
    result = infer(tmp_path / "person.onnx", root, tmp_path / "out")
    assert_refused_before_anything_is_written(result, tmp_path / "out", "the model's output has 1 channels; its card reads 2")


def test_a_fixed_batch_graph_under_flip_tta_gives_its_own_flip_averaged_masks(data, tmp_path, caplog):
    import keras

    root, images = data
    keras.utils.set_random_seed(8)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    net = keras.Model(inputs, keras.layers.Conv2D(19, 3, padding="same")(x))
    model = to_onnx(net, tmp_path / "fixed.onnx", batch=1)
    write_card(model, {"classes": "cityscapes", "input": {"mean": [120, 110, 100], "std": [60, 55, 50]}})
    with caplog.at_level(logging.WARNING):
        result = infer(model, root, tmp_path / "out", "--tta", "flip", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert "processed 2, skipped (already done) 0, dead-lettered 0" in result.output
    said = [r.getMessage() for r in caplog.records if "fixed batch" in r.getMessage()]
    assert len(said) == 1 and "takes a fixed batch of 1: segops calls it 1 image(s) at a time" in said[0]
    for rel, rgb in images.items():
        x = (rgb[None].astype(np.float32) - np.float32([120, 110, 100])) / np.float32([60, 55, 50])
        probs = keras.ops.convert_to_numpy(keras.ops.softmax(net(x)))
        mirrored = keras.ops.convert_to_numpy(keras.ops.softmax(net(x[:, :, ::-1])))[:, :, ::-1]
        assert_labels_agree(train_ids_mask(tmp_path / "out", rel), ((probs + mirrored) / 2)[0], err_msg=rel)


def test_a_run_that_dead_letters_every_image_fails_with_the_first_reasons(sigmoid_onnx, tmp_path):
    images = tmp_path / "broken"
    images.mkdir()
    for name in ("a.png", "b.png"):
        (images / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png")
    write_card(sigmoid_onnx, SIGMOID_CARD)
    result = CliRunner().invoke(cli, ["infer", str(sigmoid_onnx), str(images), str(tmp_path / "out"), "--no-crf"])
    assert result.exit_code == 1, result.output
    assert "every image was dead-lettered (2 of 2 to do); first: " in result.output
    assert f"{images / 'a.png'}: decode: " in result.output and len(result.output.strip().splitlines()) == 1
