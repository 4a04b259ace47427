"""segops review: selection rules over a hand-made results table, the exported files in Label
Studio's and pycocotools' own readers, and the loop synth -> infer -> select -> export -> a
person's correction -> import -> prepare, down to the corrected pixels in the TFRecords."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from click.testing import CliRunner
from label_studio_sdk.converter.brush import decode_rle as ls_decode_rle  # the SDK's own reader
from label_studio_sdk.converter.brush import mask2rle as ls_mask2rle
from trainutil import synth_val_and_tiny_unet

from segops.cli import cli
from segops.core import fs, imageio, labels, records
from segops.inference import table
from segops.inference.discovery import WorkItem, cityscapes_label_for
from segops.inference.masks import mask_paths
from segops.inference.options import InferOptions
from segops.inference.rows import metrics_schema
from segops.prepare.options import PrepareOptions
from segops.review import ReviewError, brush
from segops.review.export import ExportOptions, export_selection, label_studio_url_root
from segops.review.importer import follow_instances, import_corrections
from segops.review.select import SelectError, SelectOptions, read_selection, select
from workflows.infer import run_infer
from workflows.prepare import run_prepare

H, W = 32, 64
CAR = labels.NAME_TO_LABEL["car"]


# --------------------------------------------------------------------------------------------
# selection rules, on a results table written by hand


def _row(i: int, conf: float, change: float | None, miou: float | None, car_pixels: int, model: str = "m1") -> dict:
    row = dict.fromkeys(metrics_schema().names)
    counts = [0] * labels.NUM_CLASSES
    counts[CAR.train_id] = car_pixels
    row.update(path=f"/data/img{i:02d}.png", rel_path=f"img{i:02d}.png", input_size=1000 + i, input_mtime=1.7e9,
               height=H, width=W, model_id=model, run_id="hand", crf=change is not None, has_labels=miou is not None,
               inference_ms=1.0, mean_confidence=conf, low_confidence_fraction=0.0, crf_changed_fraction=change,
               mean_iou_after=miou, class_pixels=counts)  # fmt: skip  every non-nullable column set
    return row


CONF = [0.9, 0.5, 0.7, 0.3, 0.8, 0.6, 0.95, 0.4]
CHANGE = [0.01, 0.2, None, 0.05, 0.3, 0.02, 0.1, 0.0]
MIOU = [0.8, None, 0.2, 0.6, None, 0.1, 0.9, 0.5]
CARS = [0, 50, 0, 3, 0, 500, 0, 0]


@pytest.fixture(scope="module")
def hand_table(tmp_path_factory) -> str:
    import pyarrow as pa
    from deltalake import write_deltalake

    out = str(tmp_path_factory.mktemp("hand") / "infer")
    rows = [_row(i, *v) for i, v in enumerate(zip(CONF, CHANGE, MIOU, CARS, strict=True))]
    write_deltalake(table.table_uri(out), pa.Table.from_pylist(rows, schema=metrics_schema()))
    return out


def _picked(out: str, **kw) -> list[tuple[int, str]]:
    sel = select(out, SelectOptions(**kw)).to_pylist()
    assert [r["rank"] for r in sel] == list(range(len(sel)))
    return [(int(r["rel_path"][3:5]), r["reasons"]) for r in sel]


def test_each_rule_ranks_by_its_column(hand_table):
    assert _picked(hand_table, lowest_confidence=3) == [(i, "lowest_confidence") for i in np.argsort(CONF)[:3]]
    change = {i: c for i, c in enumerate(CHANGE) if c is not None}
    assert _picked(hand_table, largest_crf_change=2) == [(i, "largest_crf_change") for i in sorted(change, key=lambda i: -change[i])[:2]]
    miou = {i: m for i, m in enumerate(MIOU) if m is not None}
    assert _picked(hand_table, lowest_miou=10) == [(i, "lowest_miou") for i in sorted(miou, key=miou.get)]
    assert _picked(hand_table, rare_classes=5, classes=("car",), min_class_pixels=3) == [(5, "rare_classes"), (1, "rare_classes"), (3, "rare_classes")]


def test_rules_combine_in_order_with_reasons_and_cap(hand_table):
    picked = _picked(hand_table, lowest_confidence=2, lowest_miou=2)
    assert picked == [(3, "lowest_confidence"), (7, "lowest_confidence"), (5, "lowest_miou"), (2, "lowest_miou")]
    both = _picked(hand_table, lowest_confidence=4, lowest_miou=3)  # 7 and 5 are in both
    assert [i for i, _ in both] == [3, 7, 1, 5, 2]
    assert dict(both)[7] == dict(both)[5] == "lowest_confidence,lowest_miou"
    assert _picked(hand_table, lowest_confidence=4, lowest_miou=3, cap=2) == both[:2]


def test_random_sample_is_seeded_and_avoids_rule_picks(hand_table):
    first = _picked(hand_table, lowest_confidence=2, random=4, seed=7)
    assert first == _picked(hand_table, lowest_confidence=2, random=4, seed=7)
    sampled = [i for i, why in first if why == "random"]
    assert len(sampled) == 4 and not {3, 7} & set(sampled)
    others = {tuple(i for i, why in _picked(hand_table, lowest_confidence=2, random=4, seed=s) if why == "random")
              for s in range(6)}  # fmt: skip
    assert len(others) > 1  # the seed matters


def test_bad_options_and_ambiguous_model(hand_table, tmp_path):
    with pytest.raises(SelectError, match="no rule"):
        SelectOptions()
    with pytest.raises(SelectError, match="'bogus'"):  # checked against the table's label set
        select(hand_table, SelectOptions(rare_classes=1, classes=("bogus",)))
    import pyarrow as pa
    from deltalake import write_deltalake

    out = str(tmp_path / "infer")
    rows = [_row(0, 0.5, None, None, 0, "m1"), _row(1, 0.5, None, None, 0, "m2")]
    write_deltalake(table.table_uri(out), pa.Table.from_pylist(rows, schema=metrics_schema()))
    with pytest.raises(SelectError, match="m1, m2"):
        select(out, SelectOptions(random=1))
    assert [r["model_id"] for r in select(out, SelectOptions(random=5, model_id="m2")).to_pylist()] == ["m2"]


def test_a_table_from_before_class_pixels_gains_the_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    out, schema = str(tmp_path / "infer"), metrics_schema()
    old = pa.schema([f for f in schema if f.name != "class_pixels"])
    first = {k: v for k, v in _row(0, 0.5, None, None, 0).items() if k != "class_pixels"}
    write_deltalake(table.table_uri(out), pa.Table.from_pylist([first], schema=old))
    Path(table.staging_dir(out, "r1")).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([_row(1, 0.5, None, None, 9)], schema=schema),
                   str(Path(table.staging_dir(out, "r1")) / "part.parquet"))  # fmt: skip
    assert table.commit_run(out, "r1", "m1").rows == 1
    rows = {r["path"]: r["class_pixels"] for r in table.read_metrics(out, columns=["path", "class_pixels"]).to_pylist()}
    assert rows["/data/img00.png"] is None and rows["/data/img01.png"][CAR.train_id] == 9
    assert _picked(out, rare_classes=5, classes=("car",)) == [(1, "rare_classes")]


# --------------------------------------------------------------------------------------------
# Label Studio's brush encoding


def test_brush_rle_matches_label_studio_code():
    rng = np.random.default_rng(3)
    mask = rng.random((37, 53)) < 0.4
    mask[5:30, 2:50] = True  # long runs as well as single pixels
    ours = brush.mask_to_rle(mask)
    assert ((ls_decode_rle(ours).reshape(37, 53, 4)[:, :, 3] > 0) == mask).all()
    theirs = ls_mask2rle(mask.astype(np.uint8) * 255)
    assert (brush.rle_to_mask(theirs, 37, 53) == mask).all()
    assert ours == theirs


# --------------------------------------------------------------------------------------------
# the loop on the built-in dataset with a tiny model


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    model_dir, data = synth_val_and_tiny_unet(root, n_val=3, height=H, width=W, data_seed=5, model_seed=1)
    out = str(root / "infer")
    run_infer(InferOptions(str(model_dir), str(data / "leftImg8bit" / "val"), out))
    result = CliRunner().invoke(cli, ["review", "select", out, "--lowest-confidence", "1", "--random", "5", "--seed", "1"])
    assert result.exit_code == 0, result.output
    selection = read_selection(str(Path(out) / "review" / "selection.parquet"))
    assert selection.num_rows == 3 and "3 image(s) selected" in result.output
    result = CliRunner().invoke(cli, ["review", "export", out])
    assert result.exit_code == 0, result.output
    return root, data, out, selection


def _predicted(out: str, row: dict) -> np.ndarray:
    return imageio.decode_label_png(Path(mask_paths(out, WorkItem(row["path"], row["rel_path"]))["trainIds"]).read_bytes())


def test_exports_load_in_the_tools_readers(loop):
    from pycocotools.coco import COCO

    _, data, out, selection = loop
    rows = {r["path"]: r for r in selection.to_pylist()}
    coco = COCO(str(Path(out) / "review" / "coco_rle.json"))
    assert {img["segops_path"] for img in coco.dataset["images"]} == set(rows)
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == set(labels.CLASS_NAMES)
    for img in coco.dataset["images"]:
        pred = _predicted(out, rows[img["segops_path"]])
        painted = np.zeros(pred.shape, np.int32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            lb = labels.ID_TO_LABEL[ann["category_id"]]
            assert (coco.annToMask(ann).astype(bool) == (pred == lb.train_id)).all()
            painted += coco.annToMask(ann)
        assert (painted == 1).all()  # the classes tile the image
    tasks = json.loads((Path(out) / "review" / "label_studio_tasks.json").read_text())
    import xml.etree.ElementTree as ET

    config = ET.fromstring((Path(out) / "review" / "label_studio_config.xml").read_text())
    (image,), (brushes,) = config.findall("Image"), config.findall("BrushLabels")
    assert brushes.get("toName") == image.get("name") and image.get("value") == "$" + image.get("name")
    assert [lb.get("value") for lb in brushes.findall("Label")] == list(labels.CLASS_NAMES)
    for task in tasks:
        pred = _predicted(out, rows[task["data"]["segops_path"]])
        # relative to the dataset root, so that one local-files storage on DATA/leftImg8bit below
        # Label Studio's document root DATA serves it (docs/review.md, bench/check_label_studio.py)
        assert task["data"]["image"] == "/data/local-files/?d=leftImg8bit/val/" + rows[task["data"]["segops_path"]]["rel_path"]
        assert task["data"]["segops_path"] == str(data / "leftImg8bit" / "val" / rows[task["data"]["segops_path"]]["rel_path"])
        for result in task["predictions"][0]["result"]:
            (name,) = result["value"]["brushlabels"]
            assert name in labels.CLASS_NAMES and result["from_name"] == brushes.get("name")
            assert result["to_name"] == image.get("name") and task["data"][image.get("name")]
            h, w = result["original_height"], result["original_width"]
            decoded = ls_decode_rle(result["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0
            assert (decoded == (pred == labels.NAME_TO_LABEL[name].train_id)).all()


def test_corrected_pixels_arrive_in_the_tfrecords(loop):
    root, data, out, selection = loop
    tasks = json.loads((Path(out) / "review" / "label_studio_tasks.json").read_text())
    fixed, untouched = tasks[0], tasks[1]
    h, w = H, W
    box = np.zeros((h, w), bool)
    box[4:12, 10:30] = True  # the person paints a car over whatever the model said there
    car = {"id": "fix", "from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": w,
           "original_height": h, "value": {"format": "rle", "rle": ls_mask2rle(box.astype(np.uint8) * 255),
                                           "brushlabels": ["car"]}}  # fmt: skip
    fixed["annotations"] = [{"result": [], "was_cancelled": True},
                            {"result": fixed.pop("predictions")[0]["result"] + [car], "was_cancelled": False}]  # fmt: skip
    untouched["annotations"] = []
    exported = root / "label_studio_export.json"
    exported.write_text(json.dumps(tasks))
    report = import_corrections(str(exported))
    path = fixed["data"]["segops_path"]
    assert len(report.written) == 1 and untouched["data"]["segops_path"] in report.skipped
    assert report.written[0] == path.replace("/leftImg8bit/", "/gtFine/").replace("_leftImg8bit.png", "_gtFine_labelIds.png")

    prepared = root / "prepared"
    run_prepare(PrepareOptions(str(data), str(prepared), weight_maps=False))
    import tensorflow as tf

    frame = Path(path).name.replace("_leftImg8bit.png", "")
    found = [records.decode_example(r.numpy()) for r in tf.data.TFRecordDataset(sorted(map(str, prepared.glob("val/*.tfrecord"))))]
    (example,) = [e for e in found if e["frame_id"] == frame]
    (row,) = [r for r in selection.to_pylist() if r["path"] == path]
    expected = _predicted(out, row)
    expected[box] = CAR.train_id
    assert (example["label"] == expected).all()
    assert (expected != _predicted(out, row)).any()


def test_coco_import_and_unknown_names(loop, tmp_path):
    root, data, out, selection = loop
    coco = json.loads((Path(out) / "review" / "coco_rle.json").read_text())
    for cat in coco["categories"]:
        cat["name"] = {"car": "automobile", "sky": "heaven"}.get(cat["name"], cat["name"])
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(coco))
    used = {ann["category_id"] for ann in coco["annotations"]}
    targets = [Path(p.replace("/leftImg8bit/", "/gtFine/").replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
               for p in (img["segops_path"] for img in coco["images"])]  # fmt: skip
    before = [t.read_bytes() for t in targets]
    wanted = sorted(n for n, lb in (("automobile", CAR), ("heaven", labels.NAME_TO_LABEL["sky"])) if lb.id in used)
    assert wanted, "the tiny model predicts neither car nor sky: pick other classes"
    with pytest.raises(ReviewError, match=", ".join(f"'{n}'" for n in wanted)):
        import_corrections(str(renamed))
    assert [t.read_bytes() for t in targets] == before  # nothing written
    result = CliRunner().invoke(cli, ["review", "import", str(Path(out) / "review" / "coco_rle.json")])
    assert result.exit_code == 0, result.output
    for img, target in zip(coco["images"], targets, strict=True):
        row = {"path": img["segops_path"], "rel_path": img["file_name"]}
        assert (imageio.decode_label_png(target.read_bytes()) == labels.to_label_ids(_predicted(out, row))).all()


def test_label_studio_urls_resolve_under_the_image_root_without_segops_path(loop, tmp_path):
    """A Label Studio export whose tasks lost ``segops_path`` (tasks made by syncing a storage):
    the ``?d=`` path, percent-encoded or not, with or without a host, under ``--image-root`` (the
    document root for today's URLs; the infer run's INPUT for URLs from before they started at
    leftImg8bit/)."""
    _, data, out, selection = loop
    task = json.loads((Path(out) / "review" / "label_studio_tasks.json").read_text())[0]
    path = task["data"].pop("segops_path")
    task["annotations"] = [{"result": task.pop("predictions")[0]["result"], "was_cancelled": False}]
    rel = fs.relpath(path, str(data))
    old_rel = fs.relpath(path, str(data / "leftImg8bit" / "val"))
    for url, root in [(f"/data/local-files/?d={rel}", data), (f"http://127.0.0.1:8080/data/local-files/?d={quote(rel, safe='')}", data),
                      (f"/data/local-files/?d={old_rel}", data / "leftImg8bit" / "val")]:  # fmt: skip
        task["data"]["image"] = url
        exported = tmp_path / "export.json"
        exported.write_text(json.dumps([task]))
        with pytest.raises(ReviewError, match="no --image-root"):
            import_corrections(str(exported))
        report = import_corrections(str(exported), image_root=str(root))
        assert report.written == [cityscapes_label_for(path)], url


def test_label_studio_url_root_is_the_directory_above_the_image_tree():
    assert label_studio_url_root("/d/cs/leftImg8bit/val/aachen/a_leftImg8bit.png", "/d/cs/leftImg8bit/val") == "/d/cs"
    assert label_studio_url_root("/d/cs/leftImg8bit/val/aachen/a_leftImg8bit.png", "/d/cs") == "/d/cs"
    assert label_studio_url_root("/archive/2026/cam1/f.jpg", "/archive/2026") == "/archive"
    assert label_studio_url_root("/f.jpg", "/") == "/"


def test_instances_follow_the_corrected_classes():
    inst = np.array([[26001, 26001, 7], [24000, 11, 11]], np.int32)
    new = np.array([[26, 7, 7], [24, 26, 11]], np.uint8)
    assert follow_instances(inst, new).tolist() == [[26001, 7, 7], [24000, 26, 11]]


def test_export_options_refuse_unknown_format(loop):
    with pytest.raises(ReviewError, match="pascal"):
        ExportOptions(formats=("pascal",))
    _, _, out, selection = loop
    with pytest.raises(ReviewError, match="does not contain"):
        export_selection(out, selection, out, ExportOptions(image_root="/nowhere"))
