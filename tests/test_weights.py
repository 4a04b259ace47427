"""Class weights against hand-computed numbers; U-Net border term against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import brute_force_border

from segops.core.labels import IGNORE_ID, NUM_CLASSES
from segops.prepare import class_weights as CW
from segops.prepare import weight_maps as WM


def _counts(values: dict[int, int]) -> np.ndarray:
    out = np.zeros(NUM_CLASSES, dtype=np.int64)
    for c, v in values.items():
        out[c] = v
    return out


# Two images of 100 pixels. Class pixels: road 60, sidewalk 30, building 10 (100 labelled in all);
# road is in both images (200 px), sidewalk and building each in one image (100 px).
PIXELS = _counts({0: 60, 1: 30, 2: 10})
IMAGE_PIXELS = _counts({0: 200, 1: 100, 2: 100})


def test_median_frequency_by_hand():
    # freq = 60/200 = 0.3, 30/100 = 0.3, 10/100 = 0.1; median 0.3 -> weights 1, 1, 3
    w = CW.median_frequency_weights(PIXELS, IMAGE_PIXELS)
    np.testing.assert_allclose(w[:3], [1.0, 1.0, 3.0])
    assert (w[3:] == CW.ABSENT_CLASS_WEIGHT).all()


def test_enet_by_hand():
    # p = 0.6, 0.3, 0.1 -> 1/ln(1.62), 1/ln(1.32), 1/ln(1.12)
    w = CW.enet_weights(PIXELS)
    np.testing.assert_allclose(w[:3], [2.0728561, 3.6018937, 8.8238913], rtol=1e-6)
    assert (w[3:] == 0).all()


def test_inverse_frequency_by_hand():
    # 1/p = 5/3, 10/3, 10; mean 5 -> 1/3, 2/3, 2 (mean over present classes is 1)
    w = CW.inverse_frequency_weights(PIXELS)
    np.testing.assert_allclose(w[:3], [1 / 3, 2 / 3, 2.0])
    assert w[:3].mean() == pytest.approx(1.0)
    assert (w[3:] == 0).all()


def test_all_schemes_named_finite_and_empty_stats_give_zeros():
    all_w = CW.class_weights(PIXELS, IMAGE_PIXELS)
    assert list(all_w) == list(CW.SCHEMES)
    assert all(len(v) == NUM_CLASSES and all(math.isfinite(x) for x in v) for v in all_w.values())
    empty = CW.class_weights(np.zeros(NUM_CLASSES, np.int64), np.zeros(NUM_CLASSES, np.int64))
    assert all(v == [0.0] * NUM_CLASSES for v in empty.values())


@pytest.mark.parametrize(("power", "expected"), [(1.0, [4.0, 9.0, 0.0]), (0.5, [2.0, 3.0, 0.0]), (0.0, [1.0, 1.0, 0.0])])
def test_class_weight_power_tempers_the_weights_and_keeps_absent_classes_at_zero(power, expected):
    from types import SimpleNamespace

    from segops.training.options import TrainOptions
    from segops.training.prepared import resolve_class_weights

    weights = [4.0, 9.0, 0.0] + [1.0] * (NUM_CLASSES - 3)
    data = SimpleNamespace(class_weights={"schemes": {"enet": weights}}, label_set=SimpleNamespace(num_classes=NUM_CLASSES))
    opts = TrainOptions.from_flat(prepared="p", out="o", class_weights="enet", class_weight_power=power)
    scheme, got = resolve_class_weights(opts, data)  # type: ignore[arg-type]
    assert scheme == "enet" and got[:3] == pytest.approx(expected) and got[3:] == [1.0] * (NUM_CLASSES - 3)


def test_class_weight_lut_maps_ignore_to_zero():
    lut = CW.class_weight_lut(np.arange(1, NUM_CLASSES + 1))
    assert lut[0] == 1 and lut[18] == 19 and lut[IGNORE_ID] == 0 and lut[19] == 0


# --- instances -------------------------------------------------------------------------------


def test_instances_from_ids_numbers_instances_and_skips_stuff_and_crowds():
    ids = np.array(
        [
            [7, 7, 26000, 26000],
            [26, 26, 26001, 24000],  # 26 = a "car group" (crowd), not an instance
            [7, 24000, 24000, 24000],
        ],
        dtype=np.int32,
    )
    inst = WM.instances_from_ids(ids).labels
    assert inst[0, 0] == 0 and inst[1, 0] == 0
    assert len({inst[0, 2], inst[1, 2], inst[1, 3]}) == 3  # three distinct instances
    assert (inst[ids == 24000] == inst[1, 3]).all()
    assert sorted(np.unique(inst)) == [0, 1, 2, 3]


def test_instances_from_label_uses_8_connected_components_of_thing_classes():
    label = np.full((6, 8), 7, np.uint8)  # road (stuff: never an instance)
    label[0:2, 0:2] = 26  # car A
    label[2, 2] = 26  # touches A diagonally -> same component
    label[4:6, 5:8] = 26  # car B
    label[0:2, 6:8] = 24  # person
    found = WM.instances_from_label(label)
    inst = found.labels
    assert inst[0, 0] == inst[2, 2] != 0
    assert len({inst[0, 0], inst[5, 7], inst[0, 7]}) == 3
    assert (inst[label == 7] == 0).all()
    assert sorted(map(tuple, found.boxes.tolist())) == sorted(
        [(0, 2, 0, 2), (4, 5, 5, 7), (0, 1, 6, 7)]
    )  # row0, row1, col0, col1


def test_instance_boxes_from_ids_and_from_a_map_agree():
    ids = np.zeros((20, 30), np.int32)
    ids[2:5, 3:9] = 26000
    ids[10:18, 1:2] = 26001
    ids[6, 20:30] = 24005
    from_ids = WM.instances_from_ids(ids)
    from_map = WM.instances_from_map(from_ids.labels)
    np.testing.assert_array_equal(from_ids.boxes, from_map.boxes)
    assert sorted(map(tuple, from_ids.boxes.tolist())) == [(2, 4, 3, 8), (6, 6, 20, 29), (10, 17, 1, 1)]


# --- border term -----------------------------------------------------------------------------


def _toy_instances() -> np.ndarray:
    inst = np.zeros((30, 44), np.int32)
    inst[3:9, 4:14] = 1
    inst[9:14, 6:20] = 2  # touches instance 1
    inst[20:27, 28:40] = 3
    inst[1:4, 36:41] = 4
    inst[24, 2] = 5  # a single pixel
    return inst


@pytest.mark.parametrize(("w0", "sigma"), [(10.0, 5.0), (10.0, 2.0), (3.0, 8.0)])
def test_border_term_matches_brute_force(w0, sigma):
    inst = _toy_instances()
    got = WM.unet_border_term(inst, w0, sigma).to_dense()
    expected = brute_force_border(inst, w0, sigma)
    # approximations: terms below the tolerance are dropped; values are kept in float16
    np.testing.assert_allclose(got, expected, rtol=2**-11, atol=WM.BORDER_TOLERANCE)
    assert got.max() == pytest.approx(expected.max(), rel=2**-11)
    assert (expected > 1.0).sum() > 20  # the fixture does exercise the term


def test_border_term_is_zero_with_fewer_than_two_instances():
    inst = np.zeros((10, 10), np.int32)
    inst[2:4, 2:4] = 1
    assert WM.unet_border_term(inst, 10, 5).value.size == 0
    assert WM.unet_border_term(np.zeros((10, 10), np.int32), 10, 5).value.size == 0


def test_weight_map_adds_border_and_zeroes_ignore():
    inst = _toy_instances()
    train_ids = np.zeros(inst.shape, np.uint8)
    train_ids[inst > 0] = 13
    train_ids[:, :3] = IGNORE_ID
    cw = np.linspace(0.5, 2.0, NUM_CLASSES)
    border = WM.unet_border_term(inst, 10, 5)
    got = WM.weight_map(train_ids, CW.class_weight_lut(cw), border)
    expected = np.where(train_ids == IGNORE_ID, 0.0, cw[np.minimum(train_ids, 18)] + border.to_dense())
    assert got.dtype == np.float16  # what records store
    np.testing.assert_array_equal(got, expected.astype(np.float16))  # rounded once, from float32 sums


def test_effective_sigma_scales_with_height_only_when_asked():
    assert WM.effective_sigma(5.0, 256, None) == 5.0
    assert WM.effective_sigma(5.0, 256, 1024) == 1.25


def test_border_term_runs_round_trip():
    index = np.array([3, 4, 5, 9, 20, 21, 39])
    value = np.linspace(1, 7, index.size)
    b = WM.BorderTerm.from_pixels(index, value, 5, 8)
    assert b.starts.tolist() == [3, 9, 20, 39] and b.lengths.tolist() == [3, 1, 2, 1]
    np.testing.assert_array_equal(b.flat_index(), index)
    np.testing.assert_array_equal(b.to_dense().ravel()[index], value.astype(np.float16))
