"""The prepare pipeline on a tiny hand-made dataset with every kind of bad input (DirectRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from bad_inputs import crc_broken, jpeg, png_chunks
from conftest import Frame, brute_force_border, make_dataset, tiny_scene, write_frame, write_png

from segops.core import labels
from segops.core.records import decode_example
from segops.datasets.cityscapes import discover
from segops.prepare.options import PrepareOptions
from segops.prepare.weight_maps import BORDER_TOLERANCE, instances_from_ids, instances_from_label
from workflows.prepare import run_prepare

H, W = 32, 64
MAX_PIXELS = H * W  # the "huge" image below is 4x this


def read_records(out: Path, split: str) -> list[bytes]:
    import tensorflow as tf

    files = sorted(str(p) for p in (out / split).glob(f"{split}-*-of-*.tfrecord"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def _bad_inputs(root: Path) -> dict[str, tuple[str, str, str]]:
    """Write one bad frame per kind into train; return kind -> (dead-letter path, stage, reason part)."""
    expected: dict[str, tuple[str, str, str]] = {}

    def frame(name: str, image=None, label=None) -> Frame:
        img, lab, _ = tiny_scene(int(name), H, W)
        f = Frame("train", "erfurt", f"erfurt_{name}_000019", img, lab, None)
        return write_frame(root, Frame(f.split, f.city, f.frame_id, img if image is None else image,
                                       lab if label is None else label, None))  # fmt: skip

    def rewrite(f: Frame, rel: str, data: bytes) -> None:
        (root / rel).write_bytes(data)

    f = frame("000001")  # corrupt: bytes zeroed in the middle of the compressed data
    rewrite(f, f.image_rel, crc_broken((root / f.image_rel).read_bytes()))
    expected["corrupt"] = (f.image_rel, "decode", "corrupt image PNG: CRC mismatch")
    f = frame("000002")  # truncated
    rewrite(f, f.image_rel, (root / f.image_rel).read_bytes()[: -200])
    expected["truncated"] = (f.image_rel, "decode", "truncated image PNG")
    f = frame("000003")
    rewrite(f, f.image_rel, b"")
    expected["empty"] = (f.image_rel, "decode", "empty file")
    f = frame("000004")  # a JPEG named .png
    rewrite(f, f.image_rel, jpeg(f.image))
    expected["not png"] = (f.image_rel, "decode", "not a PNG file")
    f = frame("000005", label=np.full((H, W - 4), 7, np.uint8))
    expected["size mismatch"] = (f.label_rel, "label", "size mismatch")
    bad_ids = tiny_scene(5, H, W)[1]
    bad_ids[0, 0], bad_ids[1, 1] = 40, 250
    f = frame("000006", label=bad_ids)
    expected["unknown ids"] = (f.label_rel, "label", "unknown label ids [40, 250]")
    f = frame("000007", image=np.full((H, W), 128, np.uint8))
    expected["grayscale"] = (f.image_rel, "decode", "grayscale")
    f = frame("000008", image=np.full((H, W, 3), 1000, np.uint16))
    expected["16-bit"] = (f.image_rel, "decode", "16-bit")
    big = tiny_scene(9, 2 * H, 2 * W)
    f = frame("000009", image=big[0], label=big[1])
    expected["too large"] = (f.image_rel, "decode", f"over the limit of {MAX_PIXELS}")
    f = frame("000010")
    rewrite(f, f.label_rel, (root / f.label_rel).read_bytes()[:40])
    expected["truncated label"] = (f.label_rel, "label", "truncated label PNG")
    # listing problems
    img, lab, _ = tiny_scene(11, H, W)
    f = write_frame(root, Frame("train", "erfurt", "erfurt_000011_000019", img, None, None))
    expected["no label"] = (f.image_rel, "discover", "image without label")
    f = write_frame(root, Frame("train", "erfurt", "erfurt_000012_000019", None, lab, None))
    expected["no image"] = (f.label_rel, "discover", "label without image")
    f = write_frame(root, Frame("val", "erfurt", "aachen_000000_000019", img, lab, None))
    expected["duplicate"] = (f.image_rel, "discover", "duplicate frame id")
    return expected


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    frames = make_dataset(root, {"train": 4, "val": 2, "test": 2}, H, W, seed=3)
    # one train frame without instanceIds: its border term comes from connected components
    (root / frames[1].instance_rel).unlink()
    frames[1] = Frame(frames[1].split, frames[1].city, frames[1].frame_id, frames[1].image, frames[1].label, None)
    bad = _bad_inputs(root)
    out = root.parent / "prepared"
    options = PrepareOptions(input=str(root), output=str(out), shards=2, max_pixels=MAX_PIXELS)
    manifest = run_prepare(options)
    return root, out, frames, bad, manifest


def _by_frame(out: Path, split: str) -> dict[str, dict]:
    return {(d := decode_example(r))["frame_id"]: d for r in read_records(out, split)}


def test_records_round_trip_pixel_for_pixel(prepared):
    root, out, frames, _, _ = prepared
    for split in ("train", "val", "test"):
        records = _by_frame(out, split)
        expected = [f for f in frames if f.split == split]
        assert sorted(records) == sorted(f.frame_id for f in expected)
        for f in expected:
            r = records[f.frame_id]
            assert r["image_png"] == (root / f.image_rel).read_bytes()  # the source bytes, as-is
            np.testing.assert_array_equal(r["image"], f.image)
            if split == "test":  # image-only: all-ignore label, no weight map
                assert (r["label"] == labels.IGNORE_ID).all() and r["weight"] is None
            else:
                np.testing.assert_array_equal(r["label"], labels.to_train_ids(f.label))
            assert (r["height"], r["width"], r["source"]) == (H, W, f.image_rel)
            assert (r["city"], r["split"], r["format"]) == (f.city, split, "png")


def _numpy_stats(frames: list[Frame]) -> dict:
    train_ids = [labels.to_train_ids(f.label) for f in frames]
    counts = np.array([[int((t == c).sum()) for c in range(19)] for t in train_ids])
    sizes = np.array([t.size for t in train_ids])
    return {
        "images": len(frames),
        "total_pixels": int(sizes.sum()),
        "ignore_pixels": int(sum((t == 255).sum() for t in train_ids)),
        "labelled_pixels": int(counts.sum()),
        "pixel_counts": counts.sum(0).tolist(),
        "image_counts": (counts > 0).sum(0).tolist(),
        "image_pixels": ((counts > 0) * sizes[:, None]).sum(0).tolist(),
    }


def test_stats_equal_an_independent_numpy_count(prepared):
    _, out, frames, _, _ = prepared
    stats = json.loads((out / "stats.json").read_text())
    assert stats["class_names"] == list(labels.CLASS_NAMES)
    for split in ("train", "val"):
        assert stats["splits"][split] == _numpy_stats([f for f in frames if f.split == split])
    assert stats["unlabeled_splits"] == {"test": {"images": 2}}


def test_class_weights_from_train_statistics(prepared):
    _, out, frames, _, _ = prepared
    cw = json.loads((out / "class_weights.json").read_text())
    s = _numpy_stats([f for f in frames if f.split == "train"])
    counts, img_px = np.array(s["pixel_counts"], float), np.array(s["image_pixels"], float)
    present = counts > 0
    freq = counts[present] / img_px[present]
    p = counts[present] / counts.sum()
    expected = {
        "median_frequency": np.median(freq) / freq,
        "enet": 1 / np.log(1.02 + p),
        "inverse_frequency": (1 / p) / (1 / p).mean(),
    }
    assert (cw["source_split"], cw["default_scheme"]) == ("train", "median_frequency")
    assert cw["class_names"] == list(labels.CLASS_NAMES) and cw["present"] == present.tolist()
    for name, w in expected.items():
        got = np.array(cw["schemes"][name])
        np.testing.assert_allclose(got[present], w, rtol=1e-12)
        assert (got[~present] == 0).all()


def test_weight_maps_equal_brute_force(prepared):
    _, out, frames, _, manifest = prepared
    cw = json.loads((out / "class_weights.json").read_text())
    lut = np.zeros(256)
    lut[:19] = cw["schemes"]["median_frequency"]
    checked_components = False
    for split in ("train", "val"):
        records = _by_frame(out, split)
        for f in (f for f in frames if f.split == split):
            if f.instance is not None:
                inst = instances_from_ids(f.instance).labels
            else:
                inst, checked_components = instances_from_label(f.label).labels, True
            t = labels.to_train_ids(f.label)
            expected = np.where(t == 255, 0.0, lut[t] + brute_force_border(inst, 10.0, 5.0))
            got = records[f.frame_id]["weight"]
            # float16 storage: ~1e-3 relative; dropped border terms: < BORDER_TOLERANCE
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=2 * BORDER_TOLERANCE)
            assert got.max() > lut.max()  # border terms are there
    assert checked_components
    assert manifest["weight_maps"]["enabled"] and manifest["weight_maps"]["w0"] == 10.0


def test_tf_parser_reads_the_same_label_and_weights(prepared):
    from segops.core.records import parse_example_tf

    _, out, _, _, _ = prepared
    raw = read_records(out, "train")[0]
    numpy_view = decode_example(raw)
    tf_view = parse_example_tf(raw)
    np.testing.assert_array_equal(tf_view["label"].numpy(), numpy_view["label"])
    np.testing.assert_array_equal(tf_view["image"].numpy(), numpy_view["image"])
    np.testing.assert_allclose(tf_view["weight"].numpy(), numpy_view["weight"])


def test_every_bad_input_is_dead_lettered_and_good_records_land(prepared):
    _, out, frames, bad, manifest = prepared
    lines = (out / "dead_letter.jsonl").read_text().splitlines()
    dead = [json.loads(line) for line in lines]
    assert len(dead) == len(bad)
    by_path = {d["path"]: d for d in dead}
    for kind, (path, stage, reason) in bad.items():
        assert path in by_path, kind
        assert by_path[path]["stage"] == stage, kind
        assert reason in by_path[path]["reason"], (kind, by_path[path]["reason"])
    assert all(set(d) == {"path", "stage", "reason", "split"} for d in dead)
    assert manifest["dead_letter"]["total"] == len(bad)
    counts = {s: (v["records"], v["dead_lettered"]) for s, v in manifest["splits"].items()}
    assert counts == {"train": (4, len(bad) - 1), "val": (2, 1), "test": (2, 0)}
    assert sum(manifest["dead_letter"]["by_reason"].values()) == len(bad)


def test_manifest_describes_the_run(prepared):
    root, out, _, _, manifest = prepared
    from segops.core.records import SCHEMA_VERSION

    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["fingerprint"]["sha256"] == discover(str(root)).fingerprint
    assert manifest["options"]["shards"] == 2 and manifest["options"]["max_pixels"] == MAX_PIXELS
    for split in ("train", "val", "test"):
        shards = manifest["splits"][split]["shards"]
        assert shards == [f"{split}/{split}-0000{i}-of-00002.tfrecord" for i in range(2)]
        assert all((out / s).is_file() for s in shards)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["train", "val", "test", "stats.json", "class_weights.json", "manifest.json", "dead_letter.jsonl"]
    )


# --- reruns ----------------------------------------------------------------------------------


def _snapshot(out: Path) -> dict:
    return {
        "records": {s: sorted(read_records(out, s)) for s in ("train", "val", "test")},
        "json": {n: (out / n).read_text() for n in ("stats.json", "class_weights.json", "dead_letter.jsonl")},
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*")),
    }


def test_rerun_is_identical_and_removes_stale_shards(tmp_path):
    root = tmp_path / "raw"
    make_dataset(root, {"train": 3, "val": 1, "test": 1}, H, W, seed=5)
    write_png(root / "leftImg8bit/train/jena/jena_000000_000019_leftImg8bit.png", np.zeros((H, W), np.uint8))
    write_png(root / "gtFine/train/jena/jena_000000_000019_gtFine_labelIds.png", np.zeros((H, W), np.uint8))
    out = tmp_path / "out"
    options = PrepareOptions(input=str(root), output=str(out), shards=3)
    first_manifest = run_prepare(options)
    first = _snapshot(out)
    assert len(first["records"]["train"]) == 3 and first["json"]["dead_letter.jsonl"].count("\n") == 1

    assert run_prepare(options) == first_manifest
    assert _snapshot(out) == first  # same records, same JSON, no extra files

    fewer = PrepareOptions(input=str(root), output=str(out), shards=1, weight_maps=False)
    manifest = run_prepare(fewer)
    again = _snapshot(out)
    assert [f for f in again["files"] if f.endswith(".tfrecord")] == [
        "test/test-00000-of-00001.tfrecord", "train/train-00000-of-00001.tfrecord", "val/val-00000-of-00001.tfrecord"
    ]  # fmt: skip
    assert len(manifest["removed_stale_shards"]) == 9
    assert again["json"] == first["json"]
    for split in ("train", "val", "test"):
        with_w = {d["frame_id"]: d for d in map(decode_example, first["records"][split])}
        without = {d["frame_id"]: d for d in map(decode_example, again["records"][split])}
        assert with_w.keys() == without.keys()
        for k, d in without.items():
            assert d["weight"] is None  # --no-weight-maps: empty weight feature
            assert d["image_png"] == with_w[k]["image_png"]
            np.testing.assert_array_equal(d["label"], with_w[k]["label"])


def test_writer_refuses_an_image_that_changed_after_validation(tmp_path):
    from workflows.prepare import AnalyzeFn, ExampleCoder

    (frame,) = make_dataset(tmp_path, {"train": 1}, H, W)
    analyze = AnalyzeFn(PrepareOptions(input=str(tmp_path), output=str(tmp_path / "out")))
    analyze.setup()
    (prepared,) = list(analyze.process(discover(str(tmp_path)).pairs[0]))
    coder = ExampleCoder()
    record = decode_example(coder.encode((prepared, None)))
    assert record["image_png"] == (tmp_path / frame.image_rel).read_bytes()
    write_png(tmp_path / frame.image_rel, np.ascontiguousarray(frame.image[::-1]))  # same size, new pixels
    with pytest.raises(RuntimeError, match="changed while the pipeline ran"):
        coder.encode((prepared, None))


def test_writer_notices_a_same_length_change_in_the_middle_of_the_image(tmp_path):
    from workflows.prepare import AnalyzeFn, ExampleCoder

    (frame,) = make_dataset(tmp_path, {"train": 1}, 512, 1024)
    analyze = AnalyzeFn(PrepareOptions(input=str(tmp_path), output=str(tmp_path / "out")))
    analyze.setup()
    (prepared,) = list(analyze.process(discover(str(tmp_path)).pairs[0]))
    path = tmp_path / frame.image_rel
    data = bytearray(path.read_bytes())
    assert len(data) > 4 << 16  # big enough that a head/tail sample would miss the middle
    data[len(data) // 2] ^= 0xFF  # one byte, length unchanged
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="changed while the pipeline ran"):
        ExampleCoder().encode((prepared, None))


def test_allocator_tuning_applies_on_glibc():
    import platform
    import sys

    from segops.prepare.analyze import keep_large_buffers_on_heap

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_large_buffers_on_heap() is expected


def test_png_chunk_walk_catches_each_kind_of_damage():
    from segops.core.imageio import BadInput, check_png_chunks

    _, buf = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    data = buf.tobytes()
    check_png_chunks(data)  # intact
    chunks = png_chunks(data)
    assert [c[4:8] for c in chunks][0] == b"IHDR" and chunks[-1][4:8] == b"IEND"
    no_idat = data[:8] + b"".join(c for c in chunks if c[4:8] != b"IDAT")
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0x01
    cases = {
        "no image data": no_idat,
        "CRC mismatch in chunk 'IDAT'": bytes(damaged),
        "ends inside a chunk": data[: len(data) // 2],
        "ends before its IEND": data[: -len(chunks[-1])],
    }
    for reason, bad in cases.items():
        with pytest.raises(BadInput, match=reason):
            check_png_chunks(bad)
