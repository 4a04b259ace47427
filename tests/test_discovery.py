"""Listing the Cityscapes layout: pairs, problems, splits, things to ignore, the fingerprint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import Frame, make_dataset, tiny_scene, write_frame

from segops.datasets.cityscapes import DiscoveryError, discover


def _add_real_layout_noise(root: Path) -> None:
    """Files a real Cityscapes download has next to what prepare reads."""
    for rel in (
        "README",
        "license.txt",
        "gtCoarse/train/aachen/aachen_000000_000019_gtCoarse_labelIds.png",
        "gtFine/train/aachen/aachen_000000_000019_gtFine_color.png",
        "gtFine/train/aachen/aachen_000000_000019_gtFine_polygons.json",
        "leftImg8bit/train/aachen/nested/aachen_000099_000019_leftImg8bit.png",  # too deep
        "leftImg8bit/train_extra/bad_honnef/bad_honnef_000000_000000_leftImg8bit.png",  # no gtFine
        "camera/train/aachen/aachen_000000_000019_camera.json",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def test_real_layout_pairs_and_ignored_files(tmp_path):
    frames = make_dataset(tmp_path, {"train": 3, "val": 2, "test": 1})
    _add_real_layout_noise(tmp_path)
    listing = discover(str(tmp_path))
    assert listing.splits == ["train", "val", "test"]
    assert listing.unlabeled_splits == ["test"]
    assert listing.problems == []
    assert listing.skipped == {"train_extra": "leftImg8bit/train_extra has no gtFine/train_extra labels"}
    got = {(p.split, p.city, p.frame_id, p.source, p.labelled, p.instance is not None) for p in listing.pairs}
    expected = {(f.split, f.city, f.frame_id, f.image_rel, f.split != "test", f.split != "test") for f in frames}
    assert got == expected
    train = listing.pairs_in("train")[0]
    assert train.label == str(tmp_path / train.source.replace("leftImg8bit/", "gtFine/", 1)).replace(
        "_leftImg8bit.png", "_gtFine_labelIds.png"
    )
    assert train.image_bytes == (tmp_path / train.source).stat().st_size


def test_missing_label_orphan_label_and_duplicate_are_reported(tmp_path):
    make_dataset(tmp_path, {"train": 2, "val": 1})
    image, label, instance = tiny_scene(7)
    write_frame(tmp_path, Frame("train", "ulm", "ulm_000001_000019", image, None, None))  # no label
    write_frame(tmp_path, Frame("train", "ulm", "ulm_000002_000019", None, label, instance))  # no image
    dup = Frame("val", "aachen", "aachen_000000_000019", image, label, None)  # same frame id as train's
    write_frame(tmp_path, dup)
    listing = discover(str(tmp_path))
    problems = {(p.path, p.split, p.reason.split(":")[0]) for p in listing.problems}
    assert problems == {
        ("leftImg8bit/train/ulm/ulm_000001_000019_leftImg8bit.png", "train", "image without label"),
        ("gtFine/train/ulm/ulm_000002_000019_gtFine_labelIds.png", "train", "label without image"),
        (dup.image_rel, "val", "duplicate frame id"),
    }
    assert all(p.stage == "discover" for p in listing.problems)
    assert "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png" in next(
        p.reason for p in listing.problems if p.split == "val"
    )  # says which copy is kept
    assert [p.frame_id for p in listing.pairs] == ["aachen_000000_000019", "bochum_000001_000019", "aachen_000002_000019"]


def test_test_split_without_any_label_files_is_still_listed(tmp_path):
    make_dataset(tmp_path, {"train": 1, "test": 2})
    shutil.rmtree(tmp_path / "gtFine" / "test")
    listing = discover(str(tmp_path))
    assert [p.split for p in listing.pairs] == ["train", "test", "test"]
    assert listing.problems == []


def test_unlabeled_splits_can_be_treated_as_labelled(tmp_path):
    make_dataset(tmp_path, {"train": 1, "test": 1})
    listing = discover(str(tmp_path), unlabeled_splits=())
    assert listing.unlabeled_splits == [] and all(p.labelled for p in listing.pairs)


def test_requested_splits(tmp_path):
    make_dataset(tmp_path, {"train": 2, "val": 1})
    assert [p.split for p in discover(str(tmp_path), ["val"]).pairs] == ["val"]
    with pytest.raises(DiscoveryError, match="split\\(s\\) nope not found"):
        discover(str(tmp_path), ["nope"])


def test_empty_listing_fails_clearly(tmp_path):
    (tmp_path / "leftImg8bit").mkdir()
    with pytest.raises(DiscoveryError, match="no Cityscapes images under"):
        discover(str(tmp_path))


def test_fingerprint_is_stable_and_tracks_paths_and_sizes(tmp_path):
    frames = make_dataset(tmp_path, {"train": 2})
    first = discover(str(tmp_path))
    assert first.fingerprint == discover(str(tmp_path) + "/").fingerprint
    assert first.files == 2 * 3  # image, labelIds, instanceIds
    with open(tmp_path / frames[0].image_rel, "ab") as f:
        f.write(b"\0")
    assert discover(str(tmp_path)).fingerprint != first.fingerprint
