"""Export contract: SavedModel signature takes uint8 images and returns softmax probabilities."""

import json

import keras
import numpy as np

from segops.core import labels
from segops.models import export_dir


def _tiny_model() -> keras.Model:
    inp = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    out = keras.layers.Conv2D(labels.NUM_CLASSES, 3, padding="same")(x)
    return keras.Model(inp, out)


def test_export_roundtrip_probabilities_match_keras(tmp_path):
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    info = export_dir.export_model(model, str(tmp_path / "best"), export_dir.ModelInfo("tiny", 19, (32, 48), 1))
    (tmp_path / "model.json").write_text(json.dumps({"default_export": "best"}))

    loaded_info = export_dir.load_info(str(tmp_path))
    assert loaded_info.model_id == info.model_id and info.model_id.startswith("tiny-")
    export_dir.check_compatible(loaded_info)

    images = np.random.default_rng(0).integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    fn = export_dir.load_serving_fn(str(tmp_path))
    probs = fn(images=images)["probabilities"].numpy()
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(model(images.astype("float32")), axis=-1))
    assert probs.shape == (2, 32, 48, 19)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_missing_model_dir_is_a_clear_error(tmp_path):
    try:
        export_dir.load_info(str(tmp_path))
    except export_dir.ModelError as exc:
        assert "segops train" in str(exc)
    else:
        raise AssertionError("expected ModelError")


def test_class_count_mismatch_refused():
    info = export_dir.ModelInfo("x", 7, (8, 8), 1, class_names=["a"] * 7)
    try:
        export_dir.check_compatible(info)
    except export_dir.ModelError as exc:
        assert "7 classes" in str(exc)
    else:
        raise AssertionError("expected ModelError")
