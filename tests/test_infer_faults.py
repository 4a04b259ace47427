"""`segops infer` over an archive nobody inspected: every bad-input kind dead-lettered with its
reason while every good image lands (one pipeline run, one test per kind), a model failure
retried image by image, and native crashes in the decoder and the CRF isolated (second run)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from bad_inputs import bomb_jpeg, bomb_png, png
from PIL import Image
from trainutil import synth_val_and_tiny_unet

from segops.core import isolation, labels
from segops.inference.batch_retry import RetryingModelHandler
from segops.inference.discovery import WorkItem
from segops.inference.options import InferOptions, PredictOptions
from segops.inference.sources import open_source
from segops.inference.stage_values import ImageExample
from segops.inference.table import read_metrics
from workflows.infer import run_infer

H, W = 32, 64
TILE = (32, 64)  # small tile: the 96x256 image is cut into tiles like a huge frame would be
ROOT_READS_ALL = hasattr(os, "geteuid") and os.geteuid() == 0


def pil_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


# name -> (stage, words of the reason) for inputs that must be dead-lettered
BAD = {
    "zero.png": ("decode", "empty file"),
    "truncated.png": ("decode", "truncated PNG"),
    "truncated.jpg": ("decode", "corrupt or truncated image"),
    "text.png": ("decode", "not a PNG or JPEG file"),
    "sixteen_bit.png": ("decode", "16-bit PNG"),
    "bomb.png": ("decode", "100000x100000 = 10000000000 pixels, over the limit"),
    "bomb.jpg": ("decode", "65000x65000 = 4225000000 pixels, over the limit"),
    "unreadable.png": ("read", "Permission denied"),
    "broken_link.png": ("list", "broken symbolic link"),
}
# name -> how it must land (all get masks and a row)
GOOD = ["plain.png", "sub dir ü/straße mit leerzeichen.png", "gray.png", "gray_as_rgb.png", "palette.png",
        "rgba.png", "cmyk.jpg", "progressive.jpg", "exif_rotated.jpg", "exif_reference.png", "large.png",
        "label_wrong_size.png", "label_unknown_ids.png"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synth_val_and_tiny_unet(tmp_path_factory.mktemp("faults"), 3, H, W, data_seed=11, model_seed=3)


def _frames(data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    images = sorted((data / "leftImg8bit" / "val").rglob("*.png"))
    return [(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB),
             cv2.imread(str(p).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit", "_gtFine_labelIds"),
                        cv2.IMREAD_UNCHANGED)) for p in images]  # fmt: skip


@pytest.fixture(scope="module")
def bad_archive_run(tiny, tmp_path_factory):
    model, data = tiny
    (rgb, label), (rgb2, _), (rgb3, _) = _frames(data)
    root = tmp_path_factory.mktemp("bad_archive")
    arc, gt = root / "archive", root / "labels"
    (arc / "sub dir ü").mkdir(parents=True)
    gt.mkdir()
    files = {
        "plain.png": png(rgb),
        "sub dir ü/straße mit leerzeichen.png": png(rgb2),
        "gray.png": png(rgb3[..., 0]),
        "gray_as_rgb.png": png(np.repeat(rgb3[..., :1], 3, axis=2)),
        "palette.png": pil_bytes(Image.fromarray(rgb2).convert("P"), "PNG"),
        "rgba.png": pil_bytes(Image.fromarray(np.dstack([rgb, np.arange(H * W).reshape(H, W).astype(np.uint8)])), "PNG"),
        "cmyk.jpg": pil_bytes(Image.fromarray(rgb2).convert("CMYK"), "JPEG", quality=95),
        "progressive.jpg": pil_bytes(Image.fromarray(rgb3), "JPEG", progressive=True, quality=95),
        "large.png": png(np.tile(rgb, (3, 4, 1))),
        "label_wrong_size.png": png(rgb),
        "label_unknown_ids.png": png(rgb2),
        "zero.png": b"",
        "truncated.jpg": pil_bytes(Image.fromarray(rgb), "JPEG")[:300],
        "text.png": b"this is a text file, not an image\n",
        "sixteen_bit.png": png(rgb.astype(np.uint16) * 257),
        "bomb.png": bomb_png(100_000, 100_000),
        "bomb.jpg": bomb_jpeg(65_000, 65_000),
        "unreadable.png": png(rgb3),
    }
    files["truncated.png"] = files["plain.png"][: len(files["plain.png"]) // 2]
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    files["exif_rotated.jpg"] = pil_bytes(Image.fromarray(rgb3), "JPEG", quality=95, exif=exif.tobytes())
    stored = cv2.cvtColor(cv2.imdecode(np.frombuffer(pil_bytes(Image.fromarray(rgb3), "JPEG", quality=95), np.uint8),
                                       cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)  # fmt: skip
    files["exif_reference.png"] = png(np.ascontiguousarray(np.rot90(stored, k=-1)))  # what a viewer shows
    for name, data_ in files.items():
        (arc / name).write_bytes(data_)
    (arc / "unreadable.png").chmod(0)
    (arc / "broken_link.png").symlink_to(arc / "no_such_file.png")
    (gt / "plain.png").write_bytes(png(label))
    (gt / "label_wrong_size.png").write_bytes(png(label[: H // 2]))
    bad_ids = label.copy()
    bad_ids[0, :3] = 200
    (gt / "label_unknown_ids.png").write_bytes(png(bad_ids))
    out = root / "out"
    options = InferOptions(str(model), str(arc), str(out), labels=str(gt), predict=PredictOptions(tile=TILE, tile_overlap=8))
    report = run_infer(options)
    dead = [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]
    rows = {r["rel_path"]: r for r in read_metrics(str(out)).to_pylist()}
    return arc, out, report, dead, rows


def mask(out: Path, rel: str) -> np.ndarray:
    stem = os.path.splitext(rel)[0]
    arr = cv2.imread(str(out / "masks" / f"{stem}_trainIds.png"), cv2.IMREAD_UNCHANGED)
    assert arr is not None, rel
    return arr


def _dead_by_name(dead):
    return {os.path.basename(d["path"]): d for d in dead}


def test_counts_every_good_image_lands_and_nothing_else(bad_archive_run):
    _, _, report, dead, rows = bad_archive_run
    unreadable_lands = ROOT_READS_ALL
    assert sorted(rows) == sorted(GOOD + (["unreadable.png"] if unreadable_lands else []))
    assert report.processed == len(rows)
    decode_or_list = {os.path.basename(d["path"]) for d in dead if d["stage"] != "label"}
    assert decode_or_list == set(BAD) - ({"unreadable.png"} if unreadable_lands else set())


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_dead_lettered_with_its_reason(bad_archive_run, name):
    arc, out, _, dead, rows = bad_archive_run
    if name == "unreadable.png" and ROOT_READS_ALL:
        pytest.skip("running as root: file permissions do not stop root from reading")
    stage, words = BAD[name]
    entry = _dead_by_name(dead)[name]
    assert entry["path"] == str(arc / name)
    assert entry["stage"] == stage and words in entry["reason"], entry
    assert name not in rows
    assert not (out / "masks" / f"{os.path.splitext(name)[0]}_trainIds.png").exists()


def test_good_images_masks_match_their_shape_and_rows(bad_archive_run):
    _, out, _, _, rows = bad_archive_run
    for rel in GOOD:
        m = mask(out, rel)
        row = rows[rel]
        assert m.shape == (row["height"], row["width"]), rel
        assert m.max() < labels.NUM_CLASSES
    assert rows["plain.png"]["has_labels"] and rows["plain.png"]["mean_iou_after"] is not None
    assert (rows["large.png"]["height"], rows["large.png"]["width"]) == (3 * H, 4 * W)


@pytest.mark.parametrize("name, reference", [("gray.png", "gray_as_rgb.png"), ("rgba.png", "plain.png"),
                                             ("exif_rotated.jpg", "exif_reference.png")])  # fmt: skip
def test_accepted_format_is_segmented_as_its_converted_image(bad_archive_run, name, reference):
    """Grayscale is replicated to RGB, alpha ignored, the EXIF orientation applied (the mask is
    the one of the image as a viewer shows it, rotated 90 degrees: 64x32)."""
    _, out, _, _, _ = bad_archive_run
    np.testing.assert_array_equal(mask(out, name), mask(out, reference))
    if name == "exif_rotated.jpg":
        assert mask(out, name).shape == (W, H)


@pytest.mark.parametrize("name", ["palette.png", "cmyk.jpg", "progressive.jpg"])
def test_other_accepted_formats_land_with_colour(bad_archive_run, name):
    _, out, _, _, rows = bad_archive_run
    assert (rows[name]["height"], rows[name]["width"]) == (H, W)
    assert 0 < rows[name]["mean_confidence"] <= 1


@pytest.mark.parametrize("name, words", [("label_wrong_size.png", "is 64x16, the image is 64x32"),
                                         ("label_unknown_ids.png", "unknown label ids [200]")])  # fmt: skip
def test_bad_ground_truth_keeps_the_mask_and_dead_letters_the_label(bad_archive_run, name, words):
    arc, out, _, dead, rows = bad_archive_run
    (entry,) = [d for d in dead if d["stage"] == "label" and d["image"] == str(arc / name)]
    assert entry["path"].endswith(f"labels/{name}") and words in entry["reason"]
    assert rows[name]["has_labels"] is False and rows[name]["mean_iou_after"] is None
    assert mask(out, name).shape == (H, W)


def test_failed_batch_is_retried_image_by_image(tiny, monkeypatch):
    model, data = tiny
    frames = _frames(data)
    handler = RetryingModelHandler(open_source(str(model)), PredictOptions(batch_size=3))
    loaded = handler.load_model()
    batch = [ImageExample(WorkItem(f"/a/{i}.png", f"{i}.png"), rgb, None) for i, (rgb, _) in enumerate(frames)]
    monkeypatch.setenv(isolation.CRASH_ENV, "inference:1.png")
    preds = list(handler.run_inference(batch, loaded))
    assert [p.example.item.rel for p in preds] == ["0.png", "1.png", "2.png"]
    assert preds[1].probabilities is None and "model call failed on this image alone" in preds[1].error
    monkeypatch.delenv(isolation.CRASH_ENV)
    for p in (preds[0], preds[2]):
        alone = handler.run_inference([p.example], loaded)[0].probabilities
        assert p.error is None
        np.testing.assert_allclose(p.probabilities, alone, atol=1e-6)


def test_native_crashes_cost_one_image_each(tiny, tmp_path, monkeypatch):
    """os.abort() in the decoder's and the CRF's helper process (test hook) and a failing model
    call: each dead-letters its image only; the run finishes and the others land."""
    model, data = tiny
    frames = _frames(data)
    arc = tmp_path / "archive"
    arc.mkdir()
    names = ["decode_crash.png", "crf_crash.png", "model_fails.png", "good_1.png", "good_2.png"]
    for i, name in enumerate(names):
        (arc / name).write_bytes(png(frames[i % len(frames)][0]))
    monkeypatch.setenv(isolation.CRASH_ENV, "decode:decode_crash.png, crf:crf_crash.png, inference:model_fails.png")
    out = tmp_path / "out"
    report = run_infer(InferOptions(str(model), str(arc), str(out)))
    dead = _dead_by_name(json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines())
    assert set(dead) == {"decode_crash.png", "crf_crash.png", "model_fails.png"}
    assert dead["decode_crash.png"]["stage"] == "decode" and dead["decode_crash.png"]["reason"].startswith("crashed in decode")
    assert dead["crf_crash.png"]["stage"] == "crf" and dead["crf_crash.png"]["reason"].startswith("crashed in crf")
    assert dead["model_fails.png"]["stage"] == "inference"
    assert "model call failed on this image alone" in dead["model_fails.png"]["reason"]
    assert sorted(read_metrics(str(out), ["rel_path"]).column("rel_path").to_pylist()) == ["good_1.png", "good_2.png"]
    assert report.processed == 2 and report.dead_lettered == 3
    np.testing.assert_array_equal(mask(out, "good_1.png").shape, (H, W))
