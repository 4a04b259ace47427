"""`segops infer --tta flip`: the probabilities are the mean of the image's and its mirror
image's (flipped back), computed here independently by calling the model directly."""

import keras
import numpy as np
import pytest

from segops.core.options import OptionsError
from segops.inference.options import PredictOptions
from segops.inference.tiling import predict_probabilities, reflect_pad
from segops.models import build_model


class SoftmaxModel:
    """What ServingModel offers the tiling code: ``predict(uint8 batch) -> probabilities``."""

    def __init__(self) -> None:
        keras.utils.set_random_seed(0)
        self.net = build_model("unet", depth=2, base_filters=4)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return keras.ops.convert_to_numpy(keras.ops.softmax(self.net(batch.astype("float32")), axis=-1))


def test_flip_tta_averages_the_mirror_images_probabilities():
    model = SoftmaxModel()
    image = np.random.default_rng(0).integers(0, 256, (18, 36, 3), dtype=np.uint8)  # reflection-padded to 20x36
    plain = predict_probabilities(model, [image], 4, PredictOptions(tile=0))[0]
    tta = predict_probabilities(model, [image], 4, PredictOptions(tile=0, tta="flip"))[0]
    padded = reflect_pad(image, 4)  # rows added below: a horizontal mirror commutes with that padding
    assert padded.shape == (20, 36, 3)
    direct = model.predict(padded[None])[0, :18]
    mirrored = model.predict(padded[None, :, ::-1])[0, :18, ::-1]
    np.testing.assert_allclose(plain, direct, atol=1e-6)
    np.testing.assert_allclose(tta, (direct + mirrored) / 2, atol=1e-6)
    assert not np.allclose(tta, plain, atol=1e-4)  # the mirror changes something
    np.testing.assert_allclose(tta.sum(axis=-1), 1.0, atol=1e-5)


def test_unknown_tta_is_an_options_error():
    with pytest.raises(OptionsError, match="--tta"):
        PredictOptions(tta="rotate")


class SlopeModel:
    """Two classes whose probabilities depend on the column alone: class 1 is 0.75 at the left
    edge and 0.25 at the right, so an image and its mirror average to an exact 0.5 / 0.5 tie."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        w = batch.shape[2]
        p1 = np.broadcast_to(0.75 - 0.5 * np.arange(w, dtype=np.float32) / (w - 1), batch.shape[:3])
        return np.stack([1 - p1, p1], axis=-1).astype(np.float32)


def test_an_exact_flip_tie_breaks_as_the_image_alone_would():
    image = np.zeros((2, 3, 3), np.uint8)
    plain = predict_probabilities(SlopeModel(), [image], 1, PredictOptions(tile=0))[0]
    tta = predict_probabilities(SlopeModel(), [image], 1, PredictOptions(tile=0, tta="flip"))[0]
    np.testing.assert_allclose(tta, 0.5, atol=1e-6)  # every pixel ties
    assert plain.argmax(axis=-1).tolist() == [[1, 0, 0], [1, 0, 0]]  # the middle ties without TTA too
    np.testing.assert_array_equal(tta.argmax(axis=-1), plain.argmax(axis=-1))
