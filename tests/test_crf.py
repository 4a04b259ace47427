"""Dense-CRF refinement: it improves noisy maps, and the fast path agrees with the baseline."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from segops.core import imageio, labels
from segops.core.options import OptionsError
from segops.datasets.synth import generate_dataset
from segops.inference import crf


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    return (e / e.sum(axis=2, keepdims=True)).astype(np.float32)


def _noisy_probs(gt: np.ndarray, seed: int, blur: float, region_noise: float, pixel_noise: float) -> np.ndarray:
    """Softened one-hot of ``gt`` (trainIds, 255 -> road): blurry edges, blobby and per-pixel errors."""
    rng = np.random.default_rng(seed)
    h, w = gt.shape
    onehot = np.eye(labels.NUM_CLASSES, dtype=np.float32)[np.where(gt == 255, 0, gt)]
    logits = 5.0 * cv2.GaussianBlur(onehot, (0, 0), blur) if blur else 5.0 * onehot
    coarse = rng.normal(0, 1, (max(h // 16, 2), max(w // 16, 2), labels.NUM_CLASSES)).astype(np.float32)
    logits += region_noise * cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, -1)
    logits += rng.normal(0, pixel_noise, logits.shape).astype(np.float32)
    return _softmax(logits)


@pytest.fixture(scope="module")
def synth_scene(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    """A 512x1024 synthetic street scene (RGB, trainIds) from the built-in generator."""
    root = tmp_path_factory.mktemp("crf_synth")
    generate_dataset(str(root), {"val": 1}, 512, 1024, seed=3)
    image_path = next(root.glob("leftImg8bit/val/*/*_leftImg8bit.png"))
    label_path = next(root.glob("gtFine/val/*/*_gtFine_labelIds.png"))
    rgb = imageio.decode_rgb_image(image_path.read_bytes())
    gt = labels.to_train_ids(imageio.decode_label_png(label_path.read_bytes()))
    return rgb, gt


def _blocks_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three colour regions with a disc; probabilities blurred across the edges plus salt noise."""
    rng = np.random.default_rng(seed)
    gt = np.full((96, 160), 10, np.uint8)  # sky
    gt[40:, :] = 0  # road
    gt[20:80, 100:150] = 2  # building
    cv2.circle(gt, (50, 60), 18, 13, -1)  # car
    rgb = labels.colorize(gt).astype(np.int16) + rng.normal(0, 8, (*gt.shape, 3)).astype(np.int16)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    probs = _noisy_probs(gt, seed, blur=4.0, region_noise=0.0, pixel_noise=2.5)
    return rgb, gt, probs


@pytest.mark.parametrize("scale", [1, 2])
def test_crf_moves_a_noisy_map_towards_the_true_edges(scale):
    rgb, gt, probs = _blocks_case()
    before = (probs.argmax(axis=2) == gt).mean()
    result = crf.refine(probs, rgb, crf.CRFParams(scale=scale))
    after = (result.labels == gt).mean()
    assert before < 0.6  # the case is genuinely noisy: salt on every pixel
    # The default appearance kernel (srgb 5) sees the image's colour noise (std 8), so it mends
    # less salt than pydensecrf's example kernel (0.96 against 0.998 at scale 1): 0.95, not 0.97.
    assert after > 0.95


def test_fast_path_agrees_with_full_resolution_baseline_on_a_realistic_scene(synth_scene):
    """Softened one-hot of a synthetic scene with CNN-like errors: edges blurred over ~8 px and
    blobby wrong regions (argmax ~80 % accurate); the CRF at auto scale (2 for 512x1024)."""
    rgb, gt = synth_scene
    probs = _noisy_probs(gt, seed=1, blur=4.0, region_noise=1.2, pixel_noise=0.0)
    baseline = crf.dense_crf_reference(probs, rgb).argmax(axis=2)
    assert (baseline != probs.argmax(axis=2)).mean() > 0.02  # the CRF does change this map
    fast = crf.refine(probs, rgb)
    assert fast.scale == 2 and 0 < fast.band_fraction < 0.2
    assert (fast.labels == baseline).mean() >= 0.99


def test_the_appearance_kernel_spans_the_same_share_of_any_image_height():
    """The default sxy (pixels at 1024 rows) is sxy * 96 / 1024 px at the 96 rows of this case; a
    96-row image under reference height 96 keeps sxy px; reference 0 takes the pixels as given."""
    rgb, _, probs = _blocks_case()
    params = crf.CRFParams(scale=1)
    at_96_rows = params.bilateral_sxy * 96 / 1024
    assert params.for_height(96).bilateral_sxy == pytest.approx(at_96_rows)
    assert params.for_height(1024) == crf.CRFParams(scale=1, bilateral_reference_height=0)
    fixed_small = crf.CRFParams(scale=1, bilateral_sxy=at_96_rows, bilateral_reference_height=0)
    np.testing.assert_array_equal(crf.refine(probs, rgb, params).labels, crf.refine(probs, rgb, fixed_small).labels)
    np.testing.assert_array_equal(crf.dense_crf_reference(probs, rgb, params),
                                  crf.dense_crf_reference(probs, rgb, fixed_small))  # fmt: skip
    same_share = crf.CRFParams(scale=1, bilateral_reference_height=96)
    fixed_pixels = crf.CRFParams(scale=1, bilateral_reference_height=0)
    wide, narrow = crf.refine(probs, rgb, fixed_pixels).labels, crf.refine(probs, rgb, params).labels
    np.testing.assert_array_equal(crf.refine(probs, rgb, same_share).labels, wide)
    assert (wide != narrow).any()  # the kernel size matters on this case
    with pytest.raises(OptionsError, match="reference_height"):
        crf.CRFParams(bilateral_reference_height=-1)


def test_output_is_uint8_labels_of_the_input_size_for_odd_sizes():
    rng = np.random.default_rng(2)
    probs = _softmax(rng.normal(0, 2, (37, 53, labels.NUM_CLASSES)).astype(np.float32))
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for scale in (1, 3):  # 3 does not divide 37 or 53: the non-integer area-resize path
        result = crf.refine(probs, rgb, crf.CRFParams(scale=scale))
        assert result.labels.shape == (37, 53) and result.labels.dtype == np.uint8
        assert result.labels.max() < labels.NUM_CLASSES


def test_classes_without_mass_are_dropped_and_never_predicted():
    rgb, gt, _ = _blocks_case(seed=4)
    probs = _noisy_probs(gt, seed=4, blur=3.0, region_noise=0.0, pixel_noise=1.0)
    probs[..., 5:9] = 1e-6  # pole .. vegetation: no mass anywhere
    probs /= probs.sum(axis=2, keepdims=True)
    result = crf.refine(probs, rgb, crf.CRFParams(scale=1))
    assert not set(range(5, 9)) & set(result.classes.tolist())
    assert not np.isin(result.labels, np.arange(5, 9)).any()
    reference = crf.dense_crf_reference(probs, rgb).argmax(axis=2)
    assert (result.labels == reference).mean() > 0.999  # dropping them changes (almost) nothing


def test_a_single_class_with_mass_needs_no_crf():
    probs = np.full((20, 30, labels.NUM_CLASSES), 1e-6, np.float32)
    probs[..., 10] = 1.0
    result = crf.refine(probs, np.zeros((20, 30, 3), np.uint8))
    assert result.classes.tolist() == [10]
    assert (result.labels == 10).all() and result.labels.dtype == np.uint8


def test_auto_scale_targets_the_crf_pixel_budget():
    params = crf.CRFParams()
    assert params.scale_for(1024, 2048) == 4
    assert params.scale_for(64, 128) == 1
    assert crf.full_resolution(params).scale_for(1024, 2048) == 1


def test_bad_parameters_and_shapes_are_refused():
    with pytest.raises(ValueError, match="iterations"):
        crf.CRFParams(iterations=0)
    with pytest.raises(ValueError, match="image must be uint8"):
        crf.refine(np.ones((4, 4, 19), np.float32) / 19, np.zeros((4, 5, 3), np.uint8))
