"""How a card says a model sees images (segops.inference.sources.preprocessing): one-channel
sigmoid outputs with a threshold, value ranges, letterboxes, TF1 resize conventions, fixed
batches, and the checks that an output is what its card says; each against numbers computed
here by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segops.inference.sources.base import PreparedModel
from segops.inference.sources.card import read_card
from segops.inference.sources.preprocessing import Preprocessing, exclusive, letterbox_box, resize
from segops.models.export_dir import ModelError


def test_one_sigmoid_channel_is_background_and_class_split_at_the_threshold():
    p = np.array([0.0, 0.2, 0.5, 0.5000001, 0.9, 1.0], np.float32)[:, None]
    np.testing.assert_array_equal(exclusive(p, 0.5), np.concatenate([1 - p, p], axis=1))  # exactly [1 - p, p]
    assert exclusive(p, 0.5).argmax(axis=1).tolist() == [0, 0, 0, 1, 1, 1]  # p == threshold: background
    low = exclusive(p, 0.2)
    assert low.argmax(axis=1).tolist() == [0, 0, 1, 1, 1, 1] and np.allclose(low.sum(axis=1), 1)


def test_several_sigmoid_channels_give_the_most_probable_class_or_the_background():
    p = np.array([[0.1, 0.3], [0.7, 0.9], [0.6, 0.2]], np.float32)
    out = exclusive(p, 0.5)
    assert out.argmax(axis=1).tolist() == [0, 2, 1] and np.allclose(out.sum(axis=1), 1)


def test_a_letterbox_centres_the_image_and_pads_with_zero_in_the_networks_units():
    prep = Preprocessing(size=(8, 8), fit="letterbox", value_range="-1..1", resize="align_corners")
    image = np.random.default_rng(0).integers(0, 256, (1, 4, 8, 3), dtype=np.uint8)
    assert letterbox_box(4, 8, (8, 8)) == (2, 0, 4, 8)
    x = prep.model_input(image)
    assert x.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(x[:, 2:6], image.astype(np.float32) / np.float32(127.5) - 1)  # no resize: same size
    assert not x[:, :2].any() and not x[:, 6:].any()
    # the output's padding rows are cropped away before it goes back to the image's size
    out = np.zeros((1, 8, 8, 2), np.float32)
    out[:, 2:6, :, 1] = 5.0
    assert (prep.probabilities(out, 4, 8).argmax(axis=-1) == 1).all()


def _bilinear_1d(n_in: int, n_out: int, convention: str) -> np.ndarray:
    """[n_out, n_in] interpolation weights, written out from each convention's definition."""
    i = np.arange(n_out, dtype=np.float64)
    if convention == "align_corners":
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(1)
    else:  # asymmetric
        src = i * n_in / n_out
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), lo] += 1 - (src - lo)
    w[np.arange(n_out), hi] += src - lo
    return w


@pytest.mark.parametrize("convention", ["align_corners", "asymmetric"])
def test_tf1_resize_conventions_sample_where_their_definition_says(convention):
    x = np.random.default_rng(1).random((1, 5, 7, 2)).astype(np.float32)
    got = resize(x, (9, 4), "bilinear", False, convention)
    rows, cols = _bilinear_1d(5, 9, convention), _bilinear_1d(7, 4, convention)
    expected = np.einsum("ij,bjkc,lk->bilc", rows, x.astype(np.float64), cols)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, resize(x, (9, 4), "bilinear", False), atol=1e-3)  # not half-pixel


def test_a_value_range_comes_before_a_mean_and_std_in_its_own_units():
    prep = Preprocessing(value_range="0..1", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    image = np.full((1, 1, 1, 3), 255, np.uint8)
    np.testing.assert_allclose(prep.model_input(image)[0, 0, 0], (1 - np.float32([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225], rtol=1e-6)


def test_a_fixed_batch_network_is_called_on_batches_of_exactly_its_size():
    seen = []

    def call(x: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        return np.stack([np.full(x.shape[1:3] + (2,), x[i].mean()) for i in range(len(x))])

    images = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((5, 2, 3, 3), np.uint8)
    fixed = PreparedModel(call, Preprocessing(batch=2)).predict(images)
    assert seen == [2, 2, 2]
    np.testing.assert_array_equal(fixed, PreparedModel(call, Preprocessing()).predict(images))


@pytest.mark.parametrize(
    ("kind", "output", "words"),
    [
        ("sigmoid", np.full((1, 2, 2, 1), 3.0), "output.kind 'sigmoid' reads probabilities in [0, 1]; the model's output holds 3..3: is it 'sigmoid_logits'?"),
        ("probabilities", np.full((1, 2, 2, 2), 2.0), "reads class probabilities summing to 1; the model's output holds 4..4: is it 'logits'?"),
        ("logits", np.zeros((1, 2, 2, 3)), "the model's output has 3 channels; its card reads 2"),
    ],
)
def test_an_output_that_is_not_what_its_card_says_is_an_error(kind, output, words):
    prep = Preprocessing(output_kind=kind, output_channels=2 if kind != "sigmoid" else 1)
    with pytest.raises(ValueError, match=None) as raised:
        prep.probabilities(output.astype(np.float32), 2, 2)
    assert words in str(raised.value)


def _card(tmp_path, card: dict) -> str:
    path = tmp_path / "m.onnx.card.json"
    path.write_text(json.dumps(card))
    return str(path)


def test_a_sigmoid_card_reads_one_channel_per_class_after_the_background(tmp_path):
    card = read_card(_card(tmp_path, {"classes": ["background", "person"], "class_map": {"person": "person"},
                                      "input": {"range": "0..1", "size": [256, 256], "resize": "align_corners",
                                                "fit": "letterbox"},
                                      "output": {"kind": "sigmoid", "threshold": 0.4}}))  # fmt: skip
    prep = card.preprocessing
    assert card.output_channels == 1 and prep.output_channels == 1 and prep.threshold == 0.4
    assert (prep.value_range, prep.resize, prep.fit, prep.size) == ("0..1", "align_corners", "letterbox", (256, 256))


@pytest.mark.parametrize(
    ("card", "words"),
    [
        ({"classes": ["person"], "class_map": {"person": "person"}},
         "classes lists one class under output.kind 'logits', where classes compete and one class wins every pixel: "
         "for a one-channel probability write \"output\": {\"kind\": \"sigmoid\"} and \"classes\": [\"background\", \"person\"]"),
        ({"classes": ["person"], "output": {"kind": "probabilities"}}, "under output.kind 'probabilities'"),
        ({"classes": ["person"], "output": {"kind": "sigmoid"}}, "list the background first"),
        ({"classes": "cityscapes", "output": {"threshold": 1.5}}, "output.threshold is 1.5; expected a number between 0 and 1"),
        ({"classes": "cityscapes", "input": {"fit": "letterbox"}}, "a letterbox needs input.size"),
        ({"classes": "cityscapes", "input": {"range": "0..256"}}, "input.range is '0..256'; expected one of 0..255, 0..1, -1..1"),
    ],
)  # fmt: skip
def test_a_card_that_cannot_mean_what_it_says_is_one_line(tmp_path, card, words):
    with pytest.raises(ModelError) as raised:
        read_card(_card(tmp_path, card))
    assert words in str(raised.value) and "\n" not in str(raised.value)
