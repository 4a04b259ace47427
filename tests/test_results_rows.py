"""The results rows (segops.inference.rows) and the run protocol of the results table
(segops.inference.table.begin_run / commit_run), without a pipeline: rows built by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segops.core import labels
from segops.core.label_sets import BUILTIN_NAMES, load_label_set
from segops.inference import table
from segops.inference.discovery import WorkItem
from segops.inference.rows import (
    COLUMNS,
    STAGES,
    class_columns,
    columns_for,
    columns_markdown,
    metrics_row,
    metrics_schema,
)
from segops.inference.stage_values import ImageExample, Segmented

ROAD, CAR, IGNORE = 0, 13, 255
PYTHON_TYPES = {"string": str, "int64": int, "int32": int, "double": float, "bool": bool}
DOCS = Path(__file__).parents[1] / "docs"


def segmented(path: str = "/in/a.png", labelled: bool = True, crf: bool = True, size: int = 100) -> Segmented:
    """A 2x4 image: ground truth road | car with one ignored pixel; the model mistakes one car
    pixel for road, the CRF (when it ran) corrects it."""
    gt = np.array([[ROAD, ROAD, CAR, CAR], [ROAD, ROAD, CAR, IGNORE]], np.uint8)
    before = np.array([[ROAD, ROAD, ROAD, CAR], [ROAD, ROAD, CAR, CAR]], np.uint8)
    after = np.array([[ROAD, ROAD, CAR, CAR], [ROAD, ROAD, CAR, CAR]], np.uint8) if crf else None
    item = WorkItem(path, Path(path).name, "/gt/a.png" if labelled else None, size, 1700000000.5)
    example = ImageExample(item, np.zeros((2, 4, 3), np.uint8), gt if labelled else None)
    return Segmented(example, before, after, 0.75, 0.125, 40.0, 9.0 if crf else None)


def test_the_schema_and_the_row_come_from_one_column_list():
    schema = metrics_schema()
    row = metrics_row(segmented(), model_id="unet-1", run_id="r1")
    assert schema.names == [c.name for c in COLUMNS] == list(row)
    assert len(set(schema.names)) == len(schema.names)
    assert [f.nullable for f in schema] == [c.nullable for c in COLUMNS]
    for column, field in zip(COLUMNS, schema, strict=True):
        value = row[field.name]
        assert pa.array([value], type=field.type).to_pylist() == [value], field.name
        if value is not None and column.arrow in PYTHON_TYPES:
            assert type(value) is PYTHON_TYPES[column.arrow], field.name
    assert json.loads(schema.metadata[b"segops.classes"]) == list(labels.CLASS_NAMES)
    assert pa.Table.from_pylist([row], schema=schema).num_rows == 1


def per_class_columns(label_set) -> list[str]:
    return [f"{s}_{stage}_{name}" for s in ("iou", "dice") for stage in STAGES for name in class_columns(label_set)]


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_only_the_per_class_columns_follow_the_label_set(name):
    """Two scores per class and stage; every other column is the same whatever the label set."""
    label_set = load_label_set(name)
    names = [c.name for c in columns_for(label_set)]
    per_class = per_class_columns(label_set)
    assert len(per_class) == 2 * len(STAGES) * label_set.num_classes
    assert len(set(names)) == len(names) and set(per_class) <= set(names)
    cityscapes_per_class = set(per_class_columns(load_label_set(None)))
    assert [n for n in names if n not in per_class] == [c.name for c in COLUMNS if c.name not in cityscapes_per_class]


def test_the_columns_table_in_docs_infer_md_is_the_one_COLUMNS_writes():
    lines = (DOCS / "infer.md").read_text().splitlines()
    start = lines.index("| column | type | meaning |")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    assert "\n".join(lines[start:end]) + "\n" == columns_markdown()


def test_row_values_match_scores_worked_out_by_hand():
    row = metrics_row(segmented(), model_id="unet-1", run_id="r1")
    assert {k: row[k] for k in ("path", "rel_path", "label_path", "input_size", "input_mtime", "height", "width")} == {
        "path": "/in/a.png", "rel_path": "a.png", "label_path": "/gt/a.png", "input_size": 100,
        "input_mtime": 1700000000.5, "height": 2, "width": 4}  # fmt: skip
    assert (row["model_id"], row["run_id"], row["crf"], row["has_labels"]) == ("unet-1", "r1", True, True)
    assert (row["inference_ms"], row["crf_ms"], row["mean_confidence"], row["low_confidence_fraction"]) == (40.0, 9.0, 0.75, 0.125)
    assert row["crf_changed_fraction"] == 1 / 8
    assert row["class_pixels"] == [4 if c in (ROAD, CAR) else 0 for c in range(labels.NUM_CLASSES)]  # after the CRF
    # before: 7 pixels scored (one ignored), 6 right; road TP 4 FP 1, car TP 2 FN 1
    assert row["pixel_accuracy_before"] == pytest.approx(6 / 7)
    assert (row["iou_before_road"], row["dice_before_road"]) == pytest.approx((4 / 5, 8 / 9))
    assert (row["iou_before_car"], row["dice_before_car"]) == pytest.approx((2 / 3, 4 / 5))
    assert row["mean_iou_before"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert row["mean_dice_before"] == pytest.approx((8 / 9 + 4 / 5) / 2)
    assert row["iou_before_traffic_light"] is None and row["dice_after_sky"] is None  # in neither
    confusion = np.zeros((labels.NUM_CLASSES, labels.NUM_CLASSES), np.int64)
    confusion[ROAD, ROAD], confusion[CAR, ROAD], confusion[CAR, CAR] = 4, 1, 2
    assert row["confusion_before"] == confusion.ravel().tolist()
    assert row["pixel_accuracy_after"] == row["iou_after_car"] == row["mean_iou_after"] == 1.0


def test_exactly_the_nullable_columns_are_null_without_labels_or_crf():
    row = metrics_row(segmented(labelled=False, crf=False), model_id="unet-1", run_id="r1")
    assert {k for k, v in row.items() if v is None} == {c.name for c in COLUMNS if c.nullable}
    assert (row["crf"], row["has_labels"], row["class_pixels"][ROAD]) == (False, False, 5)  # the argmax


# --------------------------------------------------------------------------------------------
# the run protocol


def stage(out: str, run_id: str, rows: list[dict], name: str = "part-0.parquet") -> Path:
    staging = Path(table.staging_dir(out, run_id))
    staging.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=metrics_schema()), str(staging / name))
    return staging


def test_begin_then_commit_merges_once_per_run_and_cleans_its_staging(tmp_path):
    out = str(tmp_path / "out")
    left_over = stage(out, "r1", [metrics_row(segmented("/in/old.png"), model_id="m", run_id="r1")])
    assert table.begin_run(out, "r1") == 0  # a new, empty table; a killed attempt's rows removed
    assert not left_over.exists()
    first = [metrics_row(segmented(f"/in/{i}.png"), model_id="m", run_id="r1") for i in range(3)]
    stage(out, "r1", first)
    assert (table.commit_run(out, "r1", "m").version, Path(table.staging_dir(out, "r1")).exists()) == (1, False)

    assert table.begin_run(out, "r2") == 1
    redone = metrics_row(segmented("/in/1.png", size=200), model_id="m", run_id="r2")
    stale_copy = {**redone, "input_size": 150}  # staged twice (a retried bundle): the last one wins
    stage(out, "r2", [stale_copy], "part-0.parquet")
    stage(out, "r2", [redone, metrics_row(segmented("/in/3.png"), model_id="m", run_id="r2")], "part-1.parquet")
    committed = table.commit_run(out, "r2", "m")
    assert (committed.version, committed.rows, committed.replaced) == (2, 2, 1)
    rows = {r["path"]: r for r in table.read_metrics(out, columns=["path", "input_size", "run_id"]).to_pylist()}
    assert sorted(rows) == [f"/in/{i}.png" for i in range(4)]
    assert (rows["/in/1.png"]["input_size"], rows["/in/1.png"]["run_id"], rows["/in/0.png"]["run_id"]) == (200, "r2", "r1")
    merges = [h for h in table.open_table(out).history() if h.get("operation") == "MERGE"]
    assert sorted(h[table.RUN_ID_PROPERTY] for h in merges) == ["r1", "r2"]

    assert table.begin_run(out, "r3") == 2  # another model's row of one image: a second row
    stage(out, "r3", [metrics_row(segmented("/in/0.png"), model_id="m2", run_id="r3")])
    assert table.commit_run(out, "r3", "m2").version == 3
    keys = table.read_metrics(out, columns=["path", "model_id"]).to_pylist()
    assert sorted((k["path"], k["model_id"]) for k in keys if k["path"] == "/in/0.png") == [("/in/0.png", "m"), ("/in/0.png", "m2")]

    assert table.begin_run(out, "r4") == 3
    assert table.commit_run(out, "r4", "m").version is None  # nothing staged: no new version
    assert table.open_table(out).version() == 3


def test_a_failed_commit_leaves_its_staging_to_the_next_attempt(tmp_path):
    out = str(tmp_path / "out")
    table.begin_run(out, "r1")
    staging = Path(table.staging_dir(out, "r1"))
    staging.mkdir(parents=True)
    (staging / "part-0.parquet").write_bytes(b"not parquet")  # a run killed mid-write, then committed
    with pytest.raises(pa.ArrowInvalid):
        table.commit_run(out, "r1", "m")
    assert staging.exists() and table.open_table(out).version() == 0  # nothing committed
    table.begin_run(out, "r1")
    assert not staging.exists()

