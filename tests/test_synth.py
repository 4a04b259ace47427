"""The built-in synthetic dataset: Cityscapes layout, determinism, and labels that agree with
cityscapesScripts' own rasterisation of our polygons."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.json2labelImg import json2labelImg
from click.testing import CliRunner
from conftest import read_png, tree_bytes

from segops.commands.synth import command as synth_command
from segops.core import labels, layout
from segops.core.imageio import png_header
from segops.datasets import synth

COUNTS = {"train": 8, "val": 3, "test": 2}
SIZE = (64, 128)
SUFFIXES = ("gtFine_labelIds.png", "gtFine_instanceIds.png", "gtFine_color.png", "gtFine_polygons.json")
STEM = re.compile(r"^([a-z]+)_(\d{6})_(\d{6})$")


def _stems(root: Path, split: str) -> list[tuple[str, str]]:
    return sorted((p.parent.name, p.name[: -len("_leftImg8bit.png")])
                  for p in (root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth")
    summary = synth.generate_dataset(str(root), COUNTS, height=SIZE[0], width=SIZE[1], seed=0)
    return root, summary


def test_layout_and_naming_are_exactly_cityscapes(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    files = set(tree_bytes(root))
    expected = {layout.SYNTH_MANIFEST_FILE}
    for split, n in COUNTS.items():
        stems = _stems(root, split)
        assert len(stems) == n
        for city, stem in stems:
            m = STEM.match(stem)
            assert m and m.group(1) == city and m.group(3) == "000019", stem
            assert city in synth.CITIES[split]
            expected.add(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")
            expected.update(f"gtFine/{split}/{city}/{stem}_{suffix}" for suffix in SUFFIXES)
        assert summary["splits"][split] == {"images": n, "files": 5 * n,
                                            "cities": sorted({c for c, _ in stems})}
    assert files == expected  # nothing else, in particular no temporary files
    # cities differ between splits, as in the real dataset
    cities = {s: {p.name for p in (root / "leftImg8bit" / s).iterdir()} for s in COUNTS}
    assert not (cities["train"] & cities["val"]) and not (cities["val"] & cities["test"])


def test_png_formats(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    h, w = SIZE
    city, stem = _stems(root, "train")[0]
    gt = root / "gtFine" / "train" / city
    formats = {
        root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png": (8, 2),  # 8-bit RGB
        gt / f"{stem}_gtFine_labelIds.png": (8, 0),  # 8-bit gray
        gt / f"{stem}_gtFine_instanceIds.png": (16, 0),  # 16-bit gray
        gt / f"{stem}_gtFine_color.png": (8, 2),
    }
    for path, (depth, color_type) in formats.items():
        hdr = png_header(path.read_bytes())
        assert (hdr.height, hdr.width, hdr.bit_depth, hdr.color_type) == (h, w, depth, color_type), path.name
    doc = json.loads((gt / f"{stem}_gtFine_polygons.json").read_text())
    assert set(doc) == {"imgHeight", "imgWidth", "objects"}
    assert (doc["imgHeight"], doc["imgWidth"]) == (h, w)
    for obj in doc["objects"]:
        assert set(obj) == {"label", "polygon"} and obj["label"] in name2label
        pts = np.array(obj["polygon"])
        assert pts.ndim == 2 and pts.shape[1] == 2 and len(pts) >= 3
        assert pts.min() >= 0 and pts[:, 0].max() < w and pts[:, 1].max() < h


def test_same_seed_same_bytes_other_seed_other_images(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = dataset
    reference = tree_bytes(root)
    # a rerun over the same directory rewrites identical bytes and leaves no temporary file
    synth.generate_dataset(str(root), COUNTS, height=SIZE[0], width=SIZE[1], seed=0)
    assert tree_bytes(root) == reference
    # two workers produce the same bytes as one
    again = tmp_path / "again"
    synth.generate_dataset(str(again), COUNTS, height=SIZE[0], width=SIZE[1], seed=0, workers=2)
    assert tree_bytes(again) == reference
    other = tmp_path / "other"
    synth.generate_dataset(str(other), COUNTS, height=SIZE[0], width=SIZE[1], seed=1)
    other_files = tree_bytes(other)
    assert set(other_files) == set(reference)
    images = [k for k in reference if k.endswith("_leftImg8bit.png")]
    assert all(other_files[k] != reference[k] for k in images)


def test_an_image_does_not_depend_on_the_counts(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = dataset
    synth.generate_dataset(str(tmp_path), {"val": 1, "train": 2}, height=SIZE[0], width=SIZE[1], seed=0)
    small = tree_bytes(tmp_path)
    full = tree_bytes(root)
    assert len(small) == 1 + 5 * 3
    # a rerun with larger counts, then smaller ones again: the extra images are reported, not deleted
    synth.generate_dataset(str(tmp_path), {"val": 2, "train": 2}, height=SIZE[0], width=SIZE[1], seed=0)
    summary = synth.generate_dataset(str(tmp_path), {"val": 1, "train": 2}, height=SIZE[0], width=SIZE[1], seed=0)
    assert summary["other_images"] == {"train": 0, "val": 1}
    for name, data in small.items():
        if name != layout.SYNTH_MANIFEST_FILE:
            assert full[name] == data, name


def _labelled_gt(root: Path) -> list[Path]:
    return sorted(p for s in ("train", "val") for p in (root / "gtFine" / s).glob("*/*_gtFine_polygons.json"))


def test_label_ids_are_the_official_rasterisation_of_the_polygons(dataset: tuple[Path, dict],
                                                                  tmp_path: Path) -> None:
    root, _ = dataset
    for poly in _labelled_gt(root) + sorted((root / "gtFine" / "test").glob("*/*_gtFine_polygons.json")):
        oracle = tmp_path / "oracle.png"
        json2labelImg(str(poly), str(oracle), "ids")  # cityscapesScripts (Pillow)
        ours = read_png(Path(str(poly).replace("_polygons.json", "_labelIds.png")))
        agreement = float((ours == read_png(oracle)).mean())
        assert agreement >= 0.995, (poly.name, agreement)


def test_instance_ids_follow_the_cityscapes_encoding(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    n_instances = 0
    for poly in _labelled_gt(root):
        lab = read_png(Path(str(poly).replace("_polygons.json", "_labelIds.png"))).astype(np.int64)
        inst = read_png(Path(str(poly).replace("_polygons.json", "_instanceIds.png"))).astype(np.int64)
        is_instance = inst >= 1000
        np.testing.assert_array_equal(inst[is_instance] // 1000, lab[is_instance])
        np.testing.assert_array_equal(inst[~is_instance], lab[~is_instance])
        has_inst = np.array([lb.has_instances for lb in sorted(labels.LABELS, key=lambda lb: lb.id)
                             if lb.id >= 0])
        assert has_inst[lab[is_instance]].all()
        assert not has_inst[lab[~is_instance]].any()  # every instance-class pixel has an instance id
        # k counts per class from 0: ids of one class are 0..n-1 (some may be fully occluded)
        doc = json.loads(poly.read_text())
        for name in {o["label"] for o in doc["objects"]}:
            lb = labels.NAME_TO_LABEL[name]
            if lb.has_instances:
                n = sum(o["label"] == name for o in doc["objects"])
                ks = np.unique(inst[lab == lb.id]) - lb.id * 1000
                assert ((ks >= 0) & (ks < n)).all()
                n_instances += len(ks)
    assert n_instances > 20


def test_color_png_is_the_label_colour_lut(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for poly in _labelled_gt(root) + sorted((root / "gtFine" / "test").glob("*/*_polygons.json")):
        lab = read_png(Path(str(poly).replace("_polygons.json", "_labelIds.png")))
        color = cv2.cvtColor(read_png(Path(str(poly).replace("_polygons.json", "_color.png"))), cv2.COLOR_BGR2RGB)
        expected = np.array([name2label_by_id(i).color for i in range(34)], np.uint8)[lab]
        np.testing.assert_array_equal(color, expected)


def name2label_by_id(label_id: int):
    return next(lb for lb in name2label.values() if lb.id == label_id)


def test_only_valid_ids_all_classes_and_street_like_imbalance(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    counts = np.zeros(256, np.int64)
    for poly in sorted((root / "gtFine" / "train").glob("*/*_polygons.json")):
        lab = read_png(Path(str(poly).replace("_polygons.json", "_labelIds.png")))
        assert labels.unknown_label_ids(lab) == []
        counts += np.bincount(lab.ravel(), minlength=256)
    train_counts = np.bincount(labels.LABEL_ID_TO_TRAIN_ID, weights=counts, minlength=256)[:19]
    missing = [labels.CLASS_NAMES[i] for i in np.flatnonzero(train_counts == 0)]
    assert missing == []
    share = counts / counts.sum()
    ids = {name: labels.NAME_TO_LABEL[name].id for name in ("road", "building", "pole", "traffic sign", "car")}
    big = share[ids["road"]] + share[ids["building"]]
    small = share[ids["pole"]] + share[ids["traffic sign"]]
    assert big > 0.3 and big > 10 * small
    assert share[ids["car"]] > 0.03
    assert (share[:7].sum() > 0.02) and (share[:7].sum() < 0.3)  # some void pixels, not too many
    # rare classes are rare: each under 2% of pixels
    for name in ("rider", "truck", "bus", "train", "motorcycle"):
        assert 0 < share[labels.NAME_TO_LABEL[name].id] < 0.02, name


def test_test_split_has_no_usable_labels(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    polys = sorted((root / "gtFine" / "test").glob("*/*_polygons.json"))
    assert len(polys) == COUNTS["test"]
    for poly in polys:
        lab = read_png(Path(str(poly).replace("_polygons.json", "_labelIds.png")))
        inst = read_png(Path(str(poly).replace("_polygons.json", "_instanceIds.png")))
        assert set(np.unique(lab)) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(inst, lab)
        assert (labels.to_train_ids(lab) == labels.IGNORE_ID).all()
        assert {o["label"] for o in json.loads(poly.read_text())["objects"]} <= synth.TEST_VOID_LABELS
        image = read_png(Path(str(poly).replace("gtFine", "leftImg8bit", 1).replace("_gtFine_polygons.json",
                                                                               "_leftImg8bit.png")))
        assert image.std() > 20  # the image itself is a full street scene


def test_one_large_image(tmp_path: Path) -> None:
    out = tmp_path / "big"
    synth.generate_dataset(str(out), {"train": 1}, height=512, width=1024, seed=3)
    city, stem = synth.frame_stem("train", 0)
    gt = out / "gtFine" / "train" / city
    image = read_png(out / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png")
    lab = read_png(gt / f"{stem}_gtFine_labelIds.png")
    assert image.shape == (512, 1024, 3) and lab.shape == (512, 1024)
    json2labelImg(str(gt / f"{stem}_gtFine_polygons.json"), str(tmp_path / "o.png"), "ids")
    assert float((lab == read_png(tmp_path / "o.png")).mean()) >= 0.995
    present = set(np.unique(labels.to_train_ids(lab)).tolist()) - {labels.IGNORE_ID}
    assert len(present) >= 8


def test_cli_writes_and_summarises(tmp_path: Path) -> None:
    result = CliRunner().invoke(synth_command, [str(tmp_path / "d"), "--train", "2", "--val", "1", "--test", "0",
                                                "--size", "48x96", "--seed", "5"])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("synth: wrote 3 images (train 2, val 1, test 0)")
    assert len(list((tmp_path / "d" / "leftImg8bit").rglob("*.png"))) == 3
    assert "warning" not in result.output
    again = CliRunner().invoke(synth_command, [str(tmp_path / "d"), "--train", "1", "--val", "1", "--test", "0",
                                               "--size", "48x96", "--seed", "5"])
    assert again.exit_code == 0
    assert "holds 1 more train image(s)" in again.output
    assert json.loads((tmp_path / "d" / layout.SYNTH_MANIFEST_FILE).read_text())["options"]["seed"] == 5


@pytest.mark.parametrize("size", ["256", "256x", "axb", "16x512", "256*512"])
def test_cli_rejects_a_bad_size(tmp_path: Path, size: str) -> None:
    result = CliRunner().invoke(synth_command, [str(tmp_path / "d"), "--size", size])
    assert result.exit_code == 2
    assert "--size" in result.output
    assert not (tmp_path / "d").exists()


def test_api_rejects_bad_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown split"):
        synth.generate_dataset(str(tmp_path), {"training": 2})
    with pytest.raises(ValueError, match="non-negative"):
        synth.generate_dataset(str(tmp_path), {"train": -1})
