"""What changed between two models (segops.inference.previous, segops.report.compare, `segops
compare`, `review select --ranking`): model A then model B into one OUT, every number checked
against numpy on the masks A wrote (read before B's run) and those B wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from trainutil import synth_val_and_tiny_unet

from segops.cli import cli
from segops.core import imageio, labels, metrics
from segops.inference import table
from segops.inference.discovery import WorkItem
from segops.inference.masks import mask_paths
from segops.inference.options import InferOptions
from segops.inference.previous import (
    MODEL_KEY,
    PREVIOUS_KEY,
    PreviousMask,
    compare_with_existing,
    mask_model_id,
    provenance_texts,
)
from segops.inference.rows import metrics_schema
from segops.models import export_dir
from workflows.infer import run_infer

H, W, N = 32, 64, 4
NEW_COLUMNS = ("previous_model_id", "agreement_with_previous", "transitions_from_previous")


def by_hand(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Transition counts class by class, the slow way."""
    counts = np.zeros((labels.NUM_CLASSES, labels.NUM_CLASSES), np.int64)
    for i in range(labels.NUM_CLASSES):
        for j in range(labels.NUM_CLASSES):
            counts[i, j] = np.count_nonzero((before == i) & (after == j))
    return counts


def train_id_masks(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "masks").rglob("*_trainIds.png"))}


def mask_name(out: Path, row: dict) -> str:
    """The trainIds mask of a row, relative to ``out`` (the keys of :func:`train_id_masks`)."""
    return str(Path(mask_paths(str(out), WorkItem(row["path"], row["rel_path"]))["trainIds"]).relative_to(out))


def pixels(data: bytes) -> np.ndarray:
    return imageio.decode_label_png(data)


# --------------------------------------------------------------------------------------------
# the provenance chunks and the comparison at write time, without a pipeline


def test_text_chunks_round_trip_and_leave_a_valid_png():
    from PIL import Image

    mask = (np.arange(H * W).reshape(H, W) % labels.NUM_CLASSES).astype(np.uint8)
    plain = imageio.encode_mask_png(mask)
    tagged = imageio.with_png_text(plain, {MODEL_KEY: "unet-ü1", "other": "x"})
    imageio.check_png_chunks(tagged)  # every CRC right, IDAT and IEND in place
    assert (pixels(tagged) == mask).all()
    assert imageio.png_text(tagged) == {MODEL_KEY: "unet-ü1", "other": "x"}
    with Image.open(__import__("io").BytesIO(tagged)) as im:  # another reader agrees
        assert im.text[MODEL_KEY] == "unet-ü1"
    assert mask_model_id(tagged) == "unet-ü1" and mask_model_id(plain) is None and imageio.png_text(b"GIF89a") == {}
    with pytest.raises(ValueError):
        imageio.with_png_text(plain, {"": "x"})


def test_each_kind_of_existing_mask():
    rng = np.random.default_rng(0)
    old = rng.integers(0, labels.NUM_CLASSES, (H, W), dtype=np.uint8)
    new = np.where(rng.random((H, W)) < 0.3, rng.integers(0, labels.NUM_CLASSES, (H, W)), old).astype(np.uint8)
    plain = imageio.encode_mask_png(old)

    def written_by(model: str, previous: PreviousMask | None = None, mask: np.ndarray = old) -> bytes:
        return imageio.with_png_text(imageio.encode_mask_png(mask), provenance_texts(model, previous))

    other = compare_with_existing(written_by("A"), new, "B")
    assert other.model_id == "A" and (other.transitions == by_hand(old, new)).all()
    assert other.agreement == pytest.approx(np.mean(old == new))
    unknown = compare_with_existing(plain, new, "B")  # an older run's mask: compared, its model unknown
    assert unknown.model_id is None and (unknown.transitions == other.transitions).all()
    # this model's own mask (a rerun): what that mask recorded carries over while its pixels are the same
    carried = compare_with_existing(written_by("B", other, new), new, "B")
    assert carried.model_id == "A" and (carried.transitions == other.transitions).all()
    assert compare_with_existing(written_by("B", None, new), new, "B") is None
    assert compare_with_existing(written_by("B", other, old), new, "B") is None  # the input changed
    for unusable in (None, b"", b"not a png", plain[:-20], imageio.encode_mask_png(old[:, :-1]),
                     imageio.encode_mask_png(np.full((H, W), 255, np.uint8))):  # fmt: skip
        assert compare_with_existing(unusable, new, "B") is None
    assert PreviousMask.from_text(None) is None and PreviousMask.from_text('{"model_id": 1}') is None
    assert PREVIOUS_KEY not in provenance_texts("B", None)


# --------------------------------------------------------------------------------------------
# model A, then model B into the same OUT


def tiny_unet(path: Path, seed: int) -> Path:
    import keras

    from segops.models import build_model

    keras.utils.set_random_seed(seed)
    export_dir.export_model(build_model("unet", depth=2, base_filters=4), str(path),
                            export_dir.ModelInfo("unet", labels.NUM_CLASSES, (H, W), 4))  # fmt: skip
    return path


def infer(model: Path, data: Path, out: Path, run_id: str):
    return run_infer(InferOptions(str(model), str(data), str(out), split="val", run_id=run_id))


def rows_of(out: Path, model: str) -> dict[str, dict]:
    return {r["rel_path"]: r for r in table.read_metrics(str(out), model_id=model).to_pylist()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    model_a, data = synth_val_and_tiny_unet(root, N, H, W, data_seed=7, model_seed=1)
    model_b = tiny_unet(root / "model_b", seed=2)
    out = root / "out"
    a = infer(model_a, data, out, "a")
    masks_a = train_id_masks(out)
    old_out = root / "old_out"  # A's OUT as an older segops left it, before B's run (below)
    shutil.copytree(out, old_out)
    b = infer(model_b, data, out, "b")
    return {"root": root, "data": data, "out": out, "old_out": old_out, "a": a.model_id, "b": b.model_id,
            "model_b": model_b, "masks_a": masks_a, "masks_b": train_id_masks(out), "report_b": b}  # fmt: skip


def test_rows_of_the_new_model_record_what_its_masks_replaced(runs):
    a, b, masks_a, masks_b = runs["a"], runs["b"], runs["masks_a"], runs["masks_b"]
    assert a != b and len(masks_a) == len(masks_b) == N and runs["report_b"].processed == N
    assert {mask_model_id(m) for m in masks_a.values()} == {a} and {mask_model_id(m) for m in masks_b.values()} == {b}
    rows_a, rows_b = rows_of(runs["out"], a), rows_of(runs["out"], b)
    assert all(r[c] is None for r in rows_a.values() for c in NEW_COLUMNS)  # A replaced nothing
    for row in rows_b.values():
        name = mask_name(runs["out"], row)
        before, after = pixels(masks_a[name]), pixels(masks_b[name])
        assert row["previous_model_id"] == a
        assert row["agreement_with_previous"] == pytest.approx(np.mean(before == after))
        assert row["transitions_from_previous"] == by_hand(before, after).ravel().tolist()
    assert any(r["agreement_with_previous"] < 1 for r in rows_b.values())  # two random nets disagree


def test_compare_prints_and_writes_per_image_and_dataset_numbers(runs):
    out, a, b = runs["out"], runs["a"], runs["b"]
    result = CliRunner().invoke(cli, ["compare", str(out), "--model", b, "--top", "3"])
    assert result.exit_code == 0, result.output
    images = pq.read_table(out / "review" / f"compare_{a}_{b}.parquet").to_pylist()
    summary = json.loads((out / "review" / f"compare_{a}_{b}.json").read_text())
    rows_a, rows_b = rows_of(out, a), rows_of(out, b)
    assert [r["rank"] for r in images] == list(range(N))
    changed = [r["changed_fraction"] for r in images]
    assert changed == sorted(changed, reverse=True) and [r["score"] for r in images] == changed
    total, equal = np.zeros((19, 19), np.int64), 0
    cm_a, cm_b = np.zeros((19, 19), np.int64), np.zeros((19, 19), np.int64)
    for r in images:
        row_a, row_b = rows_a[r["rel_path"]], rows_b[r["rel_path"]]
        transitions = np.array(row_b["transitions_from_previous"]).reshape(19, 19)
        total += transitions
        equal += int(np.trace(transitions))
        assert r["agreement"] == pytest.approx(1 - r["changed_fraction"]) == row_b["agreement_with_previous"]
        assert (r["miou_old"], r["miou_new"]) == (row_a["mean_iou_after"], row_b["mean_iou_after"])  # the CRF's masks
        assert r["miou_change"] == pytest.approx(r["miou_new"] - r["miou_old"])
        cm_a += np.array(row_a["confusion_after"]).reshape(19, 19)
        cm_b += np.array(row_b["confusion_after"]).reshape(19, 19)
    assert summary["images_compared"] == N and summary["previous_model_unknown"] == 0
    assert summary["pixels_compared"] == N * H * W and summary["agreement"] == pytest.approx(equal / (N * H * W))
    assert summary["transitions"] == total.tolist()
    assert summary["dataset_miou"]["old"] == pytest.approx(metrics.mean_iou(cm_a))
    assert summary["dataset_miou"]["new"] == pytest.approx(metrics.mean_iou(cm_b))
    off = total.copy()
    np.fill_diagonal(off, 0)
    i, j = np.unravel_index(np.argmax(off), off.shape)
    largest = summary["largest_transitions"][0]
    assert (largest["from"], largest["to"], largest["pixels"]) == (labels.CLASS_NAMES[i], labels.CLASS_NAMES[j], off[i, j])
    assert len(summary["largest_transitions"]) == 3 and len(summary["most_changed"]) == 3
    assert f"{labels.CLASS_NAMES[i]} -> {labels.CLASS_NAMES[j]}  {100 * off[i, j] / total.sum():.1f} %" in result.output
    assert f"pixel agreement {100 * summary['agreement']:.1f} %" in result.output
    assert images[0]["rel_path"] in result.output.split("most-changed images:")[1].splitlines()[2]


def test_review_select_takes_the_comparison_as_its_ranking(runs):
    out, a, b = runs["out"], runs["a"], runs["b"]
    ranking = out / "review" / f"compare_{a}_{b}.parquet"
    if not ranking.exists():
        assert CliRunner().invoke(cli, ["compare", str(out), "--model", b]).exit_code == 0
    result = CliRunner().invoke(cli, ["review", "select", str(out), "--ranking", str(ranking), "--ranked", "2",
                                      "--lowest-confidence", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    selection = pq.read_table(out / "review" / "selection.parquet").to_pylist()
    expected = pq.read_table(ranking).column("path").to_pylist()[:2]
    assert [r["path"] for r in selection[:2]] == expected and {r["model_id"] for r in selection} == {b}
    assert [r["reasons"].split(",")[0] for r in selection[:2]] == ["ranked", "ranked"]
    alone = CliRunner().invoke(cli, ["review", "select", str(out), "--ranked", "2"])
    assert alone.exit_code != 0 and "--ranking FILE" in alone.output


def test_a_rerun_with_nothing_new_changes_nothing(runs):
    out = runs["out"]
    version = table.open_table(str(out)).version()
    report = infer(runs["model_b"], runs["data"], out, "b-again")
    assert report.processed == 0 and table.open_table(str(out)).version() == version
    assert train_id_masks(out) == runs["masks_b"]


def test_redoing_the_new_models_images_keeps_what_its_masks_replaced(runs):
    """A rerun of B over its own masks (--overwrite here; a run killed before its commit alike)
    replaced nothing itself: the comparison its masks recorded carries over, pixels unchanged."""
    out, a, b = runs["out"], runs["a"], runs["b"]
    before = rows_of(out, b)
    report = run_infer(InferOptions(str(runs["model_b"]), str(runs["data"]), str(out), split="val", run_id="b-redo",
                                    overwrite=True))  # fmt: skip
    after = rows_of(out, b)
    assert report.processed == N and {r["run_id"] for r in after.values()} == {"b-redo"}
    for rel, row in after.items():
        assert row["previous_model_id"] == a
        assert [row[c] for c in NEW_COLUMNS[1:]] == [before[rel][c] for c in NEW_COLUMNS[1:]]
    assert train_id_masks(out) == runs["masks_b"]


def test_masks_and_a_table_of_an_older_segops_compare_with_an_unknown_model(runs, tmp_path):
    """An OUT written before masks named their model and before the comparison columns existed:
    B's run evolves the table and compares; only an explicit --against names the old model."""
    out, a = runs["old_out"], runs["a"]
    for path in (out / "masks").rglob("*_trainIds.png"):  # masks as an older segops wrote them
        path.write_bytes(imageio.encode_mask_png(pixels(path.read_bytes())))
    rows = table.read_metrics(str(out)).drop_columns(list(NEW_COLUMNS))
    shutil.rmtree(out / "results")
    from deltalake import write_deltalake

    write_deltalake(table.table_uri(str(out)), rows)
    b = infer(runs["model_b"], runs["data"], out, "b-old").model_id
    assert set(table.open_table(str(out)).schema().to_arrow().names) == set(metrics_schema().names)  # evolved
    rows_b = rows_of(out, b)
    assert {r["previous_model_id"] for r in rows_b.values()} == {None}
    got = sorted(r["agreement_with_previous"] for r in rows_b.values())
    expected = sorted(np.mean(pixels(runs["masks_a"][k]) == pixels(runs["masks_b"][k])) for k in runs["masks_b"])
    assert got == pytest.approx(expected)
    assert train_id_masks(out).keys() == runs["masks_b"].keys()
    assert all((pixels(m) == pixels(runs["masks_b"][k])).all() for k, m in train_id_masks(out).items())
    refused = CliRunner().invoke(cli, ["compare", str(out), "--model", b])
    assert refused.exit_code != 0 and "--against" in refused.output
    named = CliRunner().invoke(cli, ["compare", str(out), "--model", b, "--against", a])
    assert named.exit_code == 0, named.output
    summary = json.loads((out / "review" / f"compare_{a}_{b}.json").read_text())
    assert summary["images_compared"] == summary["previous_model_unknown"] == N
    unknown = CliRunner().invoke(cli, ["compare", str(out), "--model", b, "--against", "nope"])
    assert unknown.exit_code != 0 and "has no rows" in unknown.output
