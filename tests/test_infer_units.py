"""Pieces of `segops infer` below the pipeline: padding, tiling, the model handler, discovery."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from segops.core import labels
from segops.core.options import OptionsError
from segops.inference import crf, probabilities
from segops.inference.discovery import WorkItem, discover_inputs
from segops.inference.model import SegmentationModelHandler, ServingModel
from segops.inference.options import InferOptions, PredictOptions
from segops.inference.probabilities import TOP_K, TopK
from segops.inference.sources import open_source
from segops.inference.sources.tf_models import SegopsExport
from segops.inference.stage_values import ImageExample
from segops.inference.tiling import (
    axis_starts,
    owned_spans,
    predict_probabilities,
    reflect_pad,
    tile_windows,
)
from segops.models import export_dir


@pytest.fixture(scope="module")
def serving_model(tmp_path_factory) -> ServingModel:
    """A per-pixel model (1x1 conv): any padding or tiling must give exactly the whole-image answer."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 1, activation="relu")(x)
    out = keras.layers.Conv2D(labels.NUM_CLASSES, 1)(x)
    path = tmp_path_factory.mktemp("pixel_model")
    export_dir.export_model(keras.Model(inp, out), str(path), export_dir.ModelInfo("pixel", labels.NUM_CLASSES, (32, 32), 16))
    return ServingModel(str(path))


def test_reflect_pad_reaches_the_multiple_and_keeps_the_image_top_left():
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    padded = reflect_pad(img, 4)
    assert padded.shape == (8, 8, 3)
    np.testing.assert_array_equal(padded[:5, :7], img)
    np.testing.assert_array_equal(padded[5, :7], img[3])  # reflection, not zeros
    np.testing.assert_array_equal(padded[:5, 7], img[:, 5])
    assert reflect_pad(img, 1) is img
    big = reflect_pad(img, 4, min_hw=(20, 30))  # more padding than the image is tall: repeated
    assert big.shape == (20, 32, 3)


def test_tile_windows_cover_the_image_with_the_requested_overlap():
    windows = tile_windows(100, 250, (64, 96), overlap=16)
    covered = np.zeros((100, 250), int)
    for y, x in windows:
        assert 0 <= y <= 100 - 64 and 0 <= x <= 250 - 96
        covered[y : y + 64, x : x + 96] += 1
    assert covered.min() >= 1
    xs = sorted({x for _, x in windows})
    assert all(b - a <= 96 - 16 for a, b in zip(xs, xs[1:], strict=False))
    assert tile_windows(50, 60, (64, 96), 16) == [(0, 0)]


def test_padding_and_tiling_give_the_whole_image_probabilities(serving_model):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((50, 70, 3), (50, 70, 3), (130, 200, 3), (20, 33, 3))]
    whole = [serving_model.predict(img[None])[0] for img in images]
    for tile in (None, (64, 96)):
        options = PredictOptions(tile=tile or 0, tile_overlap=16, batch_size=2, max_batch_pixels=1 << 20)
        probs = predict_probabilities(serving_model, images, 16, options)
        for p, expected, img in zip(probs, whole, images, strict=True):
            assert p.shape == (*img.shape[:2], labels.NUM_CLASSES)
            if isinstance(p, TopK):  # the image larger than the tile: top 3 classes per pixel
                assert tile is not None and img.shape[0] > tile[0]
                order = np.argsort(-expected, axis=2, kind="stable")[..., :TOP_K]
                np.testing.assert_array_equal(p.ids, order)
                np.testing.assert_allclose(p.probs, np.take_along_axis(expected, order, axis=2), atol=1e-3)
                np.testing.assert_array_equal(p.argmax(axis=2), expected.argmax(axis=2))
                continue
            assert p.dtype == np.float32
            np.testing.assert_allclose(p, expected, atol=1e-5)
            np.testing.assert_allclose(p.sum(axis=2), 1.0, atol=1e-5)


def test_each_pixel_is_owned_by_one_tile_with_half_the_overlap_as_context():
    size, t, overlap = 250, 96, 16
    starts = axis_starts(size, t, overlap)
    spans = owned_spans(starts, t, size)
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # a partition of [0, size)
    for i, (start, (lo, hi)) in enumerate(zip(starts, spans, strict=True)):
        assert start <= lo < hi <= start + t
        assert i == 0 or lo - start >= overlap // 2
        assert i == len(starts) - 1 or start + t - hi >= overlap // 2


def test_model_handler_runs_a_mixed_size_batch_in_order(tmp_path, serving_model):
    source = SegopsExport(str(tmp_path), export_dir.ModelInfo("unet", 19, (40, 60), 16))  # model passed in directly
    handler = SegmentationModelHandler(source, PredictOptions(batch_size=3))
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 3}
    assert handler.share_model_across_processes() is False
    rng = np.random.default_rng(1)
    batch = [ImageExample(WorkItem(f"/x/{i}.png", f"{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8), None)
             for i, (h, w) in enumerate(((40, 60), (33, 47), (40, 60)))]  # fmt: skip
    preds = list(handler.run_inference(batch, serving_model))
    assert [p.example.item.path for p in preds] == ["/x/0.png", "/x/1.png", "/x/2.png"]
    for pred in preds:
        np.testing.assert_allclose(pred.probabilities, serving_model.predict(pred.example.rgb[None])[0], atol=1e-5)
        assert pred.inference_ms > 0
    assert handler.run_inference([], serving_model) == []
    assert handler.get_num_bytes(batch) == sum(ex.rgb.nbytes for ex in batch)
    assert SegmentationModelHandler(source, PredictOptions(share_model_across_processes=True)).share_model_across_processes()


def test_prior_correction_divides_out_the_recorded_class_weights(tmp_path):
    """The handler's model is the export's probabilities times w ** -alpha, renormalised (numpy
    oracle); alpha 0, or an export without recorded weights: the export's own probabilities."""
    weights = np.linspace(1.0, 30.0, labels.NUM_CLASSES)
    weights[3] = 0.0  # a class absent from training: it takes the heaviest class's factor
    keras.utils.set_random_seed(1)
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 1, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inp))
    model = keras.Model(inp, keras.layers.Conv2D(labels.NUM_CLASSES, 1)(x))
    for name, training in (("plain", {}), ("weighted", {"class_weights": weights.tolist()})):
        info = export_dir.ModelInfo("pixel", labels.NUM_CLASSES, (32, 32), 16, training=training)
        export_dir.export_model(model, str(tmp_path / name), info)
    rgb = np.random.default_rng(4).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    batch = [ImageExample(WorkItem("/x/a.png", "a.png"), rgb, None)]
    raw = ServingModel(str(tmp_path / "plain")).predict(rgb[None])[0]
    factors = np.where(weights > 0, weights, weights.max()) ** -0.5
    expected = raw * factors / (raw * factors).sum(-1, keepdims=True)

    def probabilities_of(name: str, alpha: float) -> np.ndarray:
        handler = SegmentationModelHandler(open_source(str(tmp_path / name)), PredictOptions(prior_correction=alpha))
        return next(iter(handler.run_inference(batch, handler.load_model()))).probabilities

    corrected = probabilities_of("weighted", 0.5)
    np.testing.assert_allclose(corrected, expected, atol=1e-5)
    assert (corrected.argmax(-1) != raw.argmax(-1)).any()  # it changes labels on this model
    np.testing.assert_allclose(probabilities_of("weighted", 0.0), raw, atol=1e-5)
    np.testing.assert_allclose(probabilities_of("plain", 0.5), raw, atol=1e-5)


def test_recorded_predict_options_are_read_back_and_missing_ones_take_todays_defaults():
    """The report's gallery rebuilds a run's predictions from its manifest: a run made with
    --prior-correction and --tta is reproduced with them; a manifest from before an option
    existed reads that option's default (the prior correction off: what such a run did)."""
    recorded = {"predict": {"prior_correction": 0.5, "tta": "flip", "tile": [64, 96], "not_an_option": 1}}
    assert PredictOptions.from_record(recorded) == PredictOptions(prior_correction=0.5, tta="flip", tile=(64, 96))
    assert PredictOptions.from_record({"predict": {"batch_size": 3}}).prior_correction == 0.0
    assert PredictOptions.from_record(None) == PredictOptions()


def _touch(path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_discovery_pairs_cityscapes_mirror_and_skips_other_files_and_the_output(tmp_path):
    _touch(tmp_path / "leftImg8bit/val/bonn/bonn_000000_000001_leftImg8bit.png")
    _touch(tmp_path / "leftImg8bit/val/bonn/bonn_000000_000002_leftImg8bit.png")  # no ground truth
    _touch(tmp_path / "leftImg8bit/val/bonn/readme.txt")
    _touch(tmp_path / "gtFine/val/bonn/bonn_000000_000001_gtFine_labelIds.png")
    _touch(tmp_path / "leftImg8bit/val/out/masks/old_color.png")  # the output dir inside the input
    opts = InferOptions("m", str(tmp_path), str(tmp_path / "leftImg8bit/val/out"), split="val")
    items = discover_inputs(opts)
    assert [it.rel for it in items] == ["bonn/bonn_000000_000001_leftImg8bit.png", "bonn/bonn_000000_000002_leftImg8bit.png"]
    assert items[0].label_path == str(tmp_path / "gtFine/val/bonn/bonn_000000_000001_gtFine_labelIds.png")
    assert items[1].label_path is None
    assert items[0].stem == "bonn/bonn_000000_000001"


def test_discovery_with_a_labels_root_and_a_glob(tmp_path):
    _touch(tmp_path / "photos/2024/a.jpg")
    _touch(tmp_path / "photos/2024/b.PNG")
    _touch(tmp_path / "photos/2025/c.jpeg")
    _touch(tmp_path / "labels/2024/a.png")
    opts = InferOptions("m", str(tmp_path / "photos/*/*"), str(tmp_path / "out"), labels=str(tmp_path / "labels"))
    items = discover_inputs(opts)
    assert [(it.rel, it.label_path) for it in items] == [
        ("2024/a.jpg", str(tmp_path / "labels/2024/a.png")),
        ("2024/b.PNG", None),
        ("2025/c.jpeg", None),
    ]
    assert items[1].stem == "2024/b"


def test_options_are_validated_at_construction():
    opts = InferOptions("m", "root", "out", split="val", predict=PredictOptions(tile="256x512"))
    assert opts.predict.tile == (256, 512) and opts.source.endswith("root/leftImg8bit/val")
    again = dataclasses.replace(opts, overwrite=True)  # re-validating changes nothing
    assert again.source == opts.source and again.predict == opts.predict
    assert PredictOptions(tile="0").tile is None
    with pytest.raises(OptionsError, match="--tile"):
        PredictOptions(tile="big")
    with pytest.raises(OptionsError, match="run-id"):
        InferOptions("m", "i", "o", run_id="a/b")


def test_crf_on_top_k_probabilities_equals_the_crf_on_the_same_dense_probabilities(monkeypatch):
    """A tiled image's TopK goes through the CRF's downsampling and band update like the dense
    map holding the same values (zero elsewhere)."""
    from segops.inference.crf import refine

    rng = np.random.default_rng(3)
    h, w = 96, 160
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[:, w // 2 :] //= 3  # an edge for the bilateral kernel
    dense = np.zeros((h, w, labels.NUM_CLASSES), np.float32)
    ids = np.stack([rng.permutation(6)[:TOP_K] for _ in range(h * w)]).reshape(h, w, TOP_K)
    vals = rng.dirichlet(np.ones(TOP_K) * 0.7, size=(h, w)).astype(np.float16).astype(np.float32)
    np.put_along_axis(dense, ids, vals, axis=2)
    top = TopK(h, w, labels.NUM_CLASSES)
    top.put(slice(None), slice(None), dense.copy())
    params = crf.CRFParams(target_pixels=h * w // 16)  # scale 4: downsampling and the band update
    expected = refine(dense, image, params).labels
    np.testing.assert_array_equal(refine(top, image, params).labels, expected)
    monkeypatch.setattr(probabilities, "STRIP_PIXELS", w * 4 * 5)  # downsampled 5 rows of cells at a time
    np.testing.assert_array_equal(refine(top, image, params).labels, expected)
