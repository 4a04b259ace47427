"""`segops infer` end to end on tiny images (DirectRunner): masks, Parquet rows, summary, reruns."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from agreement import assert_labels_agree
from click.testing import CliRunner
from conftest import write_png

from segops.cli import cli
from segops.core import labels, metrics
from segops.inference import crf
from segops.inference.masks import mask_paths
from segops.inference.options import InferOptions
from segops.inference.table import open_table, read_metrics
from segops.models import export_dir
from workflows.infer import run_infer

H, W = 60, 100  # not a multiple of the model stride (8): padding is exercised
CITIES = {"aachen": ["aachen_000000_000019", "aachen_000001_000019"], "bremen": ["bremen_000000_000019"]}


def prototype_model(temperature: float = 0.002) -> keras.Model:
    """1x1 conv whose logits are -T * ||rgb - colour_k||^2 (+ a per-pixel constant): it predicts
    the class whose official colour is nearest, so predictions follow the painted scene."""
    inp = keras.Input((None, None, 3))
    out = keras.layers.Conv2D(labels.NUM_CLASSES, 1)(inp)
    model = keras.Model(inp, out)
    colours = labels.TRAIN_ID_TO_COLOR[: labels.NUM_CLASSES].astype(np.float32)
    kernel = (2 * temperature * colours.T)[None, None]
    bias = -temperature * (colours**2).sum(axis=1)
    model.layers[-1].set_weights([kernel, bias])
    return model


def scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB painted in the official colours + noise, labelIds) with an ignored band at the bottom."""
    rng = np.random.default_rng(seed)
    train = np.full((H, W), 10, np.uint8)  # sky
    train[12:30] = 2  # building
    train[30:] = 0  # road
    train[30:, :15] = 1  # sidewalk
    y, x = int(rng.integers(32, 44)), int(rng.integers(20, 70))
    train[y : y + 10, x : x + 22] = 13  # car
    train[8:40, 80 + seed % 5 : 84 + seed % 5] = 5  # pole
    if seed % 2:
        train[20:45, 40:46] = 11  # person
    label_ids = labels.to_label_ids(train)
    label_ids[H - 5 :] = 1  # ego vehicle: ignored in evaluation
    rgb = labels.LABEL_ID_TO_COLOR[label_ids].astype(np.float32) + rng.normal(0, 30, (H, W, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), label_ids


def read_png(path: str | Path) -> np.ndarray:
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert arr is not None, path
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if arr.ndim == 3 else arr


def make_cityscapes(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write leftImg8bit/val + gtFine/val; returns image path -> (rgb, labelIds)."""
    frames = {}
    seed = 0
    for city, stems in CITIES.items():
        for stem in stems:
            rgb, label_ids = scene(seed)
            seed += 1
            image_path = root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png"
            write_png(image_path, rgb)
            write_png(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", label_ids)
            frames[str(image_path)] = (rgb, label_ids)
    return frames


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    keras.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("model")
    export_dir.export_model(prototype_model(), str(out / "best"), export_dir.ModelInfo("proto", labels.NUM_CLASSES, (H, W), 8))
    (out / "model.json").write_text(json.dumps({"default_export": "best"}))
    return str(out)


@pytest.fixture(scope="module")
def serving(model_dir):
    return export_dir.load_serving_fn(model_dir)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    root = tmp_path_factory.mktemp("cityscapes")
    return root, make_cityscapes(root)


@pytest.fixture(scope="module")
def first_run(model_dir, dataset, tmp_path_factory):
    root, _ = dataset
    out = tmp_path_factory.mktemp("infer_out")
    options = InferOptions(model_dir, str(root), str(out), split="val", overlay=True, run_id="first")
    return run_infer(options), options


def _probs(serving, rgb: np.ndarray) -> np.ndarray:
    return serving(images=rgb[None])["probabilities"].numpy()[0]


def _nan_to_none(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def test_masks_are_the_crf_result_with_consistent_label_and_colour_pngs(first_run, dataset, serving):
    report, options = first_run
    _, frames = dataset
    assert (report.found, report.processed, report.skipped, report.dead_lettered) == (3, 3, 0, 0)
    for path, (rgb, _) in frames.items():
        item = next(it for it in _items(options) if it.path == path)
        paths = mask_paths(options.output, item, overlay=True)
        assert paths["trainIds"].endswith(f"/masks/{item.rel.split('_leftImg8bit')[0]}_trainIds.png")
        train = read_png(paths["trainIds"])
        expected = crf.refine(_probs(serving, rgb), rgb, crf.CRFParams()).labels
        np.testing.assert_array_equal(train, expected)
        np.testing.assert_array_equal(read_png(paths["labelIds"]), labels.TRAIN_ID_TO_LABEL_ID[train])
        np.testing.assert_array_equal(read_png(paths["color"]), labels.colorize(train))
        overlay = cv2.imread(paths["overlay"])
        assert overlay is not None and overlay.shape == (H, W, 3)


def _items(options):
    from segops.inference.discovery import discover_inputs

    return discover_inputs(options)


def test_parquet_rows_equal_an_independent_numpy_computation(first_run, dataset, serving):
    report, options = first_run
    _, frames = dataset
    table = read_metrics(options.output)
    assert table.num_rows == 3
    rows = {r["path"]: r for r in table.to_pylist()}
    for path, (rgb, label_ids) in frames.items():
        row = rows[path]
        probs = _probs(serving, rgb)
        gt = labels.to_train_ids(label_ids)
        item = next(it for it in _items(options) if it.path == path)
        after = read_png(mask_paths(options.output, item)["trainIds"])
        assert (row["height"], row["width"], row["crf"], row["has_labels"]) == (H, W, True, True)
        assert row["model_id"] == report.model_id and row["run_id"] == "first"
        assert row["inference_ms"] > 0 and row["crf_ms"] > 0
        assert row["mean_confidence"] == pytest.approx(float(probs.max(axis=2).mean()), rel=1e-5)
        for stage, pred in (("before", probs.argmax(axis=2)), ("after", after)):
            cm = metrics.confusion_matrix(gt, pred)
            assert row[f"confusion_{stage}"] == cm.ravel().tolist()
            iou, dice = metrics.iou_per_class(cm), metrics.dice_per_class(cm)
            for k, name in enumerate(labels.CLASS_NAMES):
                col = name.replace(" ", "_")
                assert row[f"iou_{stage}_{col}"] == pytest.approx(_nan_to_none(iou[k]), abs=1e-12)
                assert row[f"dice_{stage}_{col}"] == pytest.approx(_nan_to_none(dice[k]), abs=1e-12)
            assert row[f"mean_iou_{stage}"] == pytest.approx(np.nanmean(iou))
            assert row[f"pixel_accuracy_{stage}"] == pytest.approx(np.trace(cm) / cm.sum())
            # classes in neither ground truth nor prediction have no score: null, not 0
            absent = [n for k, n in enumerate(labels.CLASS_NAMES) if cm[k].sum() + cm[:, k].sum() == 0]
            assert absent and all(row[f"iou_{stage}_{n.replace(' ', '_')}"] is None for n in absent)


def test_summary_equals_cityscapes_evaluation_of_the_label_id_masks(first_run, dataset):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    report, options = first_run
    root, frames = dataset
    summary = json.loads((Path(options.output) / "summary.json").read_text())
    assert summary == json.loads(json.dumps(report.summary))
    predictions, ground_truth = [], []
    for path in sorted(frames):
        item = next(it for it in _items(options) if it.path == path)
        predictions.append(mask_paths(options.output, item)["labelIds"])
        ground_truth.append(item.label_path)
    args = cs_eval.args
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    result = cs_eval.evaluateImgLists(predictions, ground_truth, args)
    after = summary["after_crf"]
    for name in labels.CLASS_NAMES:
        expected = result["classScores"][name]
        if math.isnan(expected):
            assert after["dataset_iou"][name] is None
        else:
            assert after["dataset_iou"][name] == pytest.approx(expected, abs=1e-6)
    assert after["dataset_miou"] == pytest.approx(result["averageScoreClasses"], abs=1e-6)
    # the other number, named differently: mean over images of per-image mIoU
    per_image = [r["mean_iou_after"] for r in read_metrics(options.output).to_pylist()]
    assert after["mean_of_per_image_miou"] == pytest.approx(np.mean(per_image))
    assert summary["before_crf"]["dataset_miou"] is not None and summary["labelled_images"] == 3


def test_rerun_skips_everything_overwrite_reprocesses_and_rows_never_duplicate(model_dir, dataset, tmp_path):
    root, _ = dataset
    out = tmp_path / "out"

    def run(**kw):
        return run_infer(InferOptions(model_dir, str(root / "leftImg8bit" / "val"), str(out), **kw))

    def keys():
        table = read_metrics(str(out), ["path", "model_id", "run_id"])
        pairs = list(zip(table.column("path").to_pylist(), table.column("model_id").to_pylist(), strict=True))
        assert len(pairs) == len(set(pairs)) == 3
        return sorted(table.column("run_id").to_pylist())

    first = run(run_id="r1")
    masks = {p: p.read_bytes() for p in (out / "masks").rglob("*.png")}
    assert first.processed == 3 and keys() == ["r1"] * 3

    second = run(run_id="r2")
    assert (second.processed, second.skipped, second.dead_lettered) == (0, 3, 0)
    assert keys() == ["r1"] * 3
    assert {p: p.read_bytes() for p in (out / "masks").rglob("*.png")} == masks
    assert json.loads((out / "summary.json").read_text())["after_crf"] == first.summary["after_crf"]

    # one input changed since its row was written (new modification time): only it is redone,
    # its old row replaced in the same transaction
    changed = next((root / "leftImg8bit" / "val" / "bremen").glob("*.png"))
    os.utime(changed, (changed.stat().st_atime, changed.stat().st_mtime + 60))
    third = run(run_id="r3")
    assert (third.processed, third.skipped, third.pruned_rows) == (1, 2, 1)
    assert keys() == ["r1", "r1", "r3"]
    assert {p: p.read_bytes() for p in (out / "masks").rglob("*.png")} == masks  # same pixels, same masks

    fourth = run(run_id="r4", overwrite=True)
    assert (fourth.processed, fourth.skipped, fourth.pruned_rows) == (3, 0, 3)
    assert keys() == ["r4"] * 3
    assert {p: p.read_bytes() for p in (out / "masks").rglob("*.png")} == masks  # same model, same masks
    versions = [open_table(str(out), run_id=r).version() for r in ("r1", "r3", "r4")]
    assert versions == sorted(versions) and second.table_version == first.table_version  # nothing to commit
    assert sorted(open_table(str(out), run_id="r1").to_pyarrow_table().column("run_id").to_pylist()) == ["r1"] * 3


def test_reusing_a_run_id_keeps_the_rows_it_did_not_redo(model_dir, dataset, tmp_path):
    root, _ = dataset
    out = tmp_path / "out"

    def run():
        return run_infer(InferOptions(model_dir, str(root / "leftImg8bit" / "val"), str(out), run_id="nightly"))

    assert run().processed == 3
    changed = next((root / "leftImg8bit" / "val").rglob("*.png"))  # the restarted job must redo one image
    os.utime(changed, (changed.stat().st_atime, changed.stat().st_mtime + 60))
    again = run()
    assert (again.processed, again.skipped, again.pruned_rows) == (1, 2, 1)
    table = read_metrics(str(out), ["path", "run_id"])
    assert sorted(table.column("path").to_pylist()) == sorted(str(p) for p in (root / "leftImg8bit" / "val").rglob("*.png"))
    assert set(table.column("run_id").to_pylist()) == {"nightly"}


def test_bad_inputs_are_dead_lettered_and_the_rest_lands(model_dir, tmp_path):
    root = tmp_path / "data"
    good_rgb, good_label = scene(7)
    city = root / "leftImg8bit" / "val" / "ulm"
    gt = root / "gtFine" / "val" / "ulm"
    write_png(city / "ulm_000000_000001_leftImg8bit.png", good_rgb)
    write_png(gt / "ulm_000000_000001_gtFine_labelIds.png", good_label)
    data = (city / "ulm_000000_000001_leftImg8bit.png").read_bytes()
    (city / "ulm_000000_000002_leftImg8bit.png").write_bytes(data[: len(data) // 2])  # truncated
    (city / "ulm_000000_000003_leftImg8bit.png").write_bytes(b"not an image at all")
    write_png(city / "ulm_000000_000004_leftImg8bit.png", good_rgb)
    write_png(gt / "ulm_000000_000004_gtFine_labelIds.png", good_label[:, :50])  # wrong size
    write_png(city / "ulm_000000_000005_leftImg8bit.png", good_rgb)
    bad_ids = good_label.copy()
    bad_ids[0, 0] = 200
    write_png(gt / "ulm_000000_000005_gtFine_labelIds.png", bad_ids)  # unknown label id
    write_png(city / "ulm_000000_000006_leftImg8bit.png", np.zeros((H * 2, W, 3), np.uint8))  # too big

    out = tmp_path / "out"
    report = run_infer(InferOptions(model_dir, str(root / "leftImg8bit" / "val"), str(out), max_pixels=H * W))
    assert (report.found, report.processed, report.dead_lettered) == (6, 3, 5)
    dead = {Path(d["path"]).name.split("_leftImg8bit")[0].split("_gtFine")[0]: d for d in map(json.loads, (out / "dead_letter.jsonl").read_text().splitlines())}
    assert set(dead) == {f"ulm_000000_00000{i}" for i in (2, 3, 4, 5, 6)}
    assert [dead[f"ulm_000000_00000{i}"]["stage"] for i in (2, 3, 4, 5, 6)] == ["decode", "decode", "label", "label", "decode"]
    assert "truncated" in dead["ulm_000000_000002"]["reason"]
    assert "not a" in dead["ulm_000000_000003"]["reason"]
    assert "is 50x60" in dead["ulm_000000_000004"]["reason"]  # bad ground truth: the image still lands
    assert "unknown label ids [200]" in dead["ulm_000000_000005"]["reason"]
    assert "over the limit" in dead["ulm_000000_000006"]["reason"]
    table = read_metrics(str(out))
    assert sorted(table.column("path").to_pylist()) == [str(city / f"ulm_000000_00000{i}_leftImg8bit.png") for i in (1, 4, 5)]
    assert table.column("has_labels").to_pylist() == [p.endswith("01_leftImg8bit.png") for p in table.column("path").to_pylist()]
    assert (out / "masks" / "ulm" / "ulm_000000_000004_trainIds.png").exists()
    assert not (out / "masks" / "ulm" / "ulm_000000_000002_trainIds.png").exists()


def test_unlabelled_images_in_any_layout_get_masks_and_confidence_only(model_dir, tmp_path, serving):
    root = tmp_path / "archive"
    rgb_a, _ = scene(1)
    rgb_b, _ = scene(2)
    write_png(root / "a.png", rgb_a)
    (root / "sub" / "deeper").mkdir(parents=True)
    assert cv2.imwrite(str(root / "sub" / "deeper" / "b.JPG"), cv2.cvtColor(rgb_b, cv2.COLOR_RGB2BGR))
    (root / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    report = run_infer(InferOptions(model_dir, str(root), str(out), crf=False))
    assert (report.found, report.processed, report.dead_lettered) == (2, 2, 0)
    train = read_png(out / "masks" / "a_trainIds.png")
    assert_labels_agree(train, _probs(serving, rgb_a))  # --no-crf: argmax (the pipeline's batch shape may round differently)
    assert (out / "masks" / "sub" / "deeper" / "b_color.png").exists()
    rows = read_metrics(str(out)).to_pylist()
    for row in rows:
        assert row["has_labels"] is False and row["crf"] is False and row["crf_ms"] is None
        assert row["mean_iou_before"] is None and row["confusion_before"] is None and row["iou_after_road"] is None
        assert 0 < row["mean_confidence"] <= 1 and 0 <= row["low_confidence_fraction"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labelled_images"] == 0 and summary["before_crf"] is None and summary["images"] == 2


def test_glob_input_and_labels_root(model_dir, dataset, tmp_path):
    root, frames = dataset
    out = tmp_path / "out"
    options = InferOptions(model_dir, str(root / "leftImg8bit" / "val" / "aachen" / "*_leftImg8bit.png"), str(out), labels=str(root / "gtFine" / "val" / "aachen"), crf=False)
    report = run_infer(options)
    assert report.processed == 2 and report.summary["labelled_images"] == 2
    assert sorted(p.name for p in (out / "masks").glob("*_labelIds.png")) == [
        "aachen_000000_000019_labelIds.png",
        "aachen_000001_000019_labelIds.png",
    ]


def test_missing_or_incompatible_model_fails_before_the_pipeline(tmp_path, dataset):
    root, _ = dataset
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["infer", str(tmp_path / "no_model"), str(root), str(out), "--split", "val"])
    assert result.exit_code != 0 and "model.json" in result.output and "segops train" in result.output
    assert not out.exists()

    bad = tmp_path / "seven"
    inp = keras.Input((None, None, 3))
    export_dir.export_model(keras.Model(inp, keras.layers.Conv2D(7, 1)(inp)), str(bad), export_dir.ModelInfo("x", 7, (8, 8), 1, class_names=[f"c{i}" for i in range(7)]))
    result = CliRunner().invoke(cli, ["infer", str(bad), str(root), str(out), "--split", "val"])
    assert result.exit_code != 0 and "7 classes" in result.output
    assert not out.exists()


@pytest.mark.slow
def test_cli_multiprocessing_runner_gives_the_same_outputs(model_dir, dataset, first_run, tmp_path):
    """Beam options after `--`: two worker processes, each loading its own model."""
    root, _ = dataset
    _, first_options = first_run
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        ["infer", model_dir, str(root), str(out), "--split", "val", "--overlay", "--",
         "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "processed 3" in result.output and "dataset mIoU" in result.output
    ours = {p.relative_to(out): p.read_bytes() for p in (out / "masks").rglob("*.png")}
    reference = {p.relative_to(first_options.output): p.read_bytes() for p in Path(first_options.output, "masks").rglob("*.png")}
    assert ours == reference and len(ours) == 9
    summary = json.loads((out / "summary.json").read_text())
    assert summary["after_crf"]["dataset_iou"] == json.loads(Path(first_options.output, "summary.json").read_text())["after_crf"]["dataset_iou"]
    shutil.rmtree(out)
