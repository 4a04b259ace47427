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
