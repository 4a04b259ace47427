"""tf.data pipeline: geometry applied identically to image/label/weights, no interpolated labels,
deterministic (seed, epoch) order for exact resume, corrupt records skipped and counted."""

import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from trainutil import write_prepared, write_shards

from segops.training import input_pipeline as ip
from segops.training.options import AugmentConfig, PipelineConfig


def _encoded_example(h=24, w=40, seed=0):
    """Image whose red channel encodes the label, weight = label + 1: any misalignment between the
    three after augmentation shows up as a mismatch."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 19, (h // 4, w // 4)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    label[:, :3] = 255
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.where(label == 255, 250, label * 10)
    weight = label.astype(np.float32) + 1
    return image, label, weight


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.5, 2.0)])
def test_augment_keeps_image_label_and_weights_aligned(scale):
    image, label, weight = _encoded_example()
    cfg = AugmentConfig(crop=(16, 24), scale_range=scale, brightness=0, contrast=0, saturation=0)
    for i in range(8):
        key = tf.constant([3, i], tf.int64)
        img, lab, wt = (t.numpy() for t in ip.augment(image, label, weight, key, cfg))
        assert img.shape == (16, 24, 3) and lab.shape == (16, 24) and wt.shape == (16, 24)
        # Nearest neighbour for labels: only values that exist in the source (or 255 padding).
        assert set(np.unique(lab)) <= set(np.unique(label)) | {255}
        real = lab != 255
        np.testing.assert_array_equal(wt[real], lab[real].astype(np.float32) + 1)
        assert set(np.unique(wt[~real])) <= {0.0, 256.0}  # padding (0) or the source's ignore strip
        if scale == (1.0, 1.0):  # scale 1 samples whole pixels: the image is a crop (maybe flipped)
            np.testing.assert_allclose(img[..., 0][real], lab[real] * 10.0, atol=1e-3)


def test_augment_flips_and_jitters_with_seed():
    image, label, weight = _encoded_example(seed=1)
    cfg = AugmentConfig(crop=(24, 40), scale_range=(1.0, 1.0))
    flips = set()
    for i in range(12):
        key = tf.constant([0, i], tf.int64)
        img, lab, _ = (t.numpy() for t in ip.augment(image, label, weight, key, cfg))
        flips.add(bool(np.array_equal(lab, label[:, ::-1])))
        assert np.array_equal(lab, label) or np.array_equal(lab, label[:, ::-1])
        assert img.min() >= 0 and img.max() <= 255
        again = ip.augment(image, label, weight, key, cfg)[0].numpy()
        np.testing.assert_array_equal(img, again)  # stateless: same key, same result
    assert flips == {True, False}


def _train_batches(root, **kw):
    files = ip.shard_paths(str(root), "train")
    cfg = PipelineConfig(batch_size=3, shuffle_buffer=4)
    aug = AugmentConfig(crop=(16, 16))
    args = {"seed": 7, "steps_per_epoch": 3, "initial_epoch": 0, "epochs": 3, "num_records": 7, **kw}
    return [(x.numpy(), y.numpy()) for x, y in ip.train_dataset(files, aug, cfg, **args)]


def test_training_order_is_a_function_of_seed_and_epoch(tmp_path):
    write_prepared(str(tmp_path), {"train": 7}, height=16, width=32, num_shards=3)
    full = _train_batches(tmp_path)
    assert len(full) == 9  # exactly steps_per_epoch batches per epoch (7 records, 3x3 per epoch)
    again = _train_batches(tmp_path)
    resumed = _train_batches(tmp_path, initial_epoch=2)
    for (x1, y1), (x2, y2) in zip(full, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    for (x1, y1), (x2, y2) in zip(full[6:], resumed, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(full[0][0], full[3][0])  # epochs differ
    other_seed = _train_batches(tmp_path, seed=8)
    assert not np.array_equal(full[0][0], other_seed[0][0])
    assert full[0][1].shape == (3, 16, 16)  # no weight maps: the targets are the labels alone


def test_corrupt_records_are_skipped_counted_and_warned(tmp_path, caplog):
    data = write_prepared(str(tmp_path), {"val": 6}, height=16, width=32, num_shards=2)
    shard0, shard1 = ip.shard_paths(str(tmp_path), "val")
    raw = bytearray(Path(shard0).read_bytes())
    first_len = int.from_bytes(raw[:8], "little")
    raw[12 + first_len // 2] ^= 0xFF  # flip a byte inside the first record's payload
    Path(shard0).write_bytes(bytes(raw))
    with open(shard1, "ab") as f:
        f.write(b"this is not a tfrecord")  # garbage appended at the end of the other shard
    corrupt = ip.CorruptRecords()
    cfg = PipelineConfig(batch_size=2)
    with caplog.at_level(logging.WARNING, logger="segops.training.input_pipeline"):
        batches = [y.numpy() for _, y in ip.eval_dataset([shard0, shard1], cfg, corrupt=corrupt)]
        batches += [y.numpy() for _, y in ip.eval_dataset([shard0, shard1], cfg, corrupt=corrupt)]  # 2nd epoch
    labels = np.concatenate(batches)
    assert labels.shape[0] == 10  # 5 good records x 2 passes
    assert corrupt.count == 2  # counted once each, however often read
    reasons = sorted(e["reason"] for e in corrupt.entries())
    assert reasons == ["bad data checksum", "bad length checksum; the rest of the shard is skipped"]
    assert sum("skipping corrupt record" in r.message for r in caplog.records) == 2
    # The good records are all there: shard0 held records 0, 2, 4 (record 0 corrupted), shard1 1, 3, 5.
    expected = {data["val"][i][1].tobytes() for i in (1, 2, 3, 4, 5)}
    assert {lab.astype(np.uint8).tobytes() for lab in labels[:5]} == expected


def test_eval_pads_to_stride_with_ignore_and_resizes(tmp_path):
    data = write_prepared(str(tmp_path), {"val": 3}, height=20, width=36, weight_maps=True, num_shards=1)
    files = ip.shard_paths(str(tmp_path), "val")
    cfg = PipelineConfig(batch_size=3, weight_maps=True)
    x, y = next(iter(ip.eval_dataset(files, cfg, stride=8)))
    assert x.shape == (3, 24, 40, 3) and y.shape == (3, 24, 40, 2)
    np.testing.assert_array_equal(y[0, :20, :36, 0].numpy(), data["val"][0][1])
    np.testing.assert_allclose(y[0, :20, :36, 1].numpy(), data["val"][0][2])  # weight map decoded
    assert (y[:, 20:, :, 0].numpy() == 255).all() and (y[:, :, 36:, 0].numpy() == 255).all()
    assert (x[:, 20:].numpy() == 0).all()
    x, y = next(iter(ip.eval_dataset(files, cfg, size=(10, 18), stride=1)))
    assert x.shape == (3, 10, 18, 3)
    assert set(np.unique(y[..., 0].numpy())) <= set(np.unique(data["val"][0][1])) | set(
        np.unique(data["val"][1][1])
    ) | set(np.unique(data["val"][2][1]))


def test_small_split_is_read_again_within_an_epoch(tmp_path):
    write_shards(str(tmp_path), "train", [(np.zeros((8, 8, 3), np.uint8), np.full((8, 8), i, np.uint8), None) for i in range(2)], 1)
    files = ip.shard_paths(str(tmp_path), "train")
    ds = ip.train_dataset(
        files, AugmentConfig(crop=(8, 8), scale_range=(1, 1)), PipelineConfig(batch_size=3),
        seed=0, steps_per_epoch=2, initial_epoch=0, epochs=1, num_records=2,
    )  # fmt: skip
    batches = [y.numpy() for _, y in ds]
    assert len(batches) == 2  # 6 crops from 2 records
    seen = np.concatenate(batches)[:, 0, 0]
    assert sorted(set(seen.tolist())) == [0.0, 1.0]
