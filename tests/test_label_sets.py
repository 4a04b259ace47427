"""Label sets as data: the file format's validation, the lookups, the built-ins."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_png

from segops.core import label_sets, labels
from segops.core.label_sets import LabelSetError, label_set_from_json, load_label_set

FOUR = {
    "name": "four",
    "labels": [
        {"id": 0, "name": "void", "train_id": 255, "color": [0, 0, 0]},
        {"id": 3, "name": "ground", "train_id": 0, "color": [128, 64, 128], "category": "flat"},
        {"id": 5, "name": "wall", "train_id": 1, "color": [70, 70, 70]},
        {"id": 9, "name": "sky", "train_id": 2, "color": [70, 130, 180]},
        {"id": 12, "name": "thing", "train_id": 3, "color": [220, 20, 60]},
    ],
}


def test_builtin_cityscapes_is_todays_label_table_exactly():
    cs = load_label_set("cityscapes")
    assert cs is load_label_set(None) and cs.is_default
    assert cs.labels == labels.LABELS and cs.train_labels == labels.TRAIN_LABELS
    assert (cs.num_classes, cs.class_names) == (labels.NUM_CLASSES, labels.CLASS_NAMES)
    for ours, theirs in ((cs.label_to_train, labels.LABEL_ID_TO_TRAIN_ID), (cs.train_to_label, labels.TRAIN_ID_TO_LABEL_ID),
                         (cs.train_to_color, labels.TRAIN_ID_TO_COLOR), (cs.label_to_color, labels.LABEL_ID_TO_COLOR),
                         (cs.valid_label_id, labels.VALID_LABEL_ID)):  # fmt: skip
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    # the recorded form reads back to the same table
    again = label_sets.recorded_label_set(json.loads(json.dumps(cs.to_json())), "manifest")
    assert again.labels == cs.labels and again.digest == cs.digest


def test_builtin_camvid_and_ade20k():
    camvid = load_label_set("camvid11")
    assert camvid.class_names == ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                                  "Pedestrian", "Bicyclist")  # fmt: skip
    assert camvid.label_to_train[11] == 255 and camvid.train_to_label[255] == 11
    ade = load_label_set("ade20k150")
    assert ade.num_classes == 150 and ade.class_names[:4] == ("wall", "building", "sky", "floor")
    assert ade.class_names[-1] == "flag" and ade.class_names[7] == "bed"
    # SceneParse150 annotations: 0 is "other" (ignored), value k is class k-1
    assert ade.label_to_train[0] == 255 and ade.label_to_train[1] == 0 and ade.label_to_train[150] == 149
    assert tuple(ade.train_to_color[0]) == (120, 120, 120) and tuple(ade.train_to_color[149]) == (92, 0, 255)
    assert len({lb.color for lb in ade.train_labels}) > 140  # the palette, not one repeated colour
    assert len({camvid.digest, ade.digest, load_label_set("cityscapes").digest}) == 3


def test_luts_round_trip_on_a_custom_set(tmp_path):
    path = tmp_path / "four.json"
    path.write_text(json.dumps(FOUR))
    four = load_label_set(str(path))
    assert (four.name, four.num_classes, four.class_names) == ("four", 4, ("ground", "wall", "sky", "thing"))
    label_ids = np.array([[0, 3, 5], [9, 12, 3]], np.uint8)
    train = four.to_train_ids(label_ids)
    assert train.tolist() == [[255, 0, 1], [2, 3, 0]]
    assert four.to_label_ids(train).tolist() == label_ids.tolist()  # ignore -> the void id, 0
    assert four.colorize(train)[0, 1].tolist() == [128, 64, 128] and four.colorize(train)[0, 0].tolist() == [0, 0, 0]
    assert four.unknown_label_ids(np.array([[0, 4, 12, 200]], np.uint8)) == [4, 200]
    assert four.class_id("sky") == 2
    with pytest.raises(LabelSetError, match="no class 'car'"):
        four.class_id("car")


def _with(index: int, **changes) -> dict:
    data = json.loads(json.dumps(FOUR))
    data["labels"][index].update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with(1, id=256), r"labels\[1\]\.id: expected an int 0\.\.255"),
        (_with(2, id=3), r"labels\[2\]\.id: 3 repeats labels\[1\]"),
        (_with(2, name="ground"), r"labels\[2\]\.name: 'ground' repeats"),
        (_with(3, train_id=7), r"train ids must be 0\.\.C-1 without gaps; 2 is missing"),
        (_with(3, train_id=300), r"labels\[3\]\.train_id: expected 0\.\.C-1 or 255"),
        (_with(1, color=[1, 2]), r"labels\[1\]\.color: expected 3 ints 0\.\.255"),
        (_with(1, color=[1, 2, 256]), r"labels\[1\]\.color"),
        (_with(1, ignore_in_eval=True), r"labels\[1\]\.ignore_in_eval: must be false"),
        (_with(1, colour=[1, 2, 3]), r"labels\[1\]\.colour: unknown field"),
        ({"name": "x", "labels": [{"id": 1, "name": "a", "color": [0, 0, 0]}]}, r"labels\[0\]\.train_id: missing"),
        ({"name": "", "labels": []}, r"name: expected a non-empty string"),
        ({"name": "x", "labels": [{"id": 0, "name": "v", "train_id": 255, "color": [0, 0, 0]}]}, "no class to train"),
    ],
)
def test_invalid_files_give_one_line_errors(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LabelSetError, match=message) as err:
        load_label_set(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_unreadable_or_unknown_sets(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(LabelSetError, match="not JSON"):
        load_label_set(str(tmp_path / "broken.json"))
    with pytest.raises(LabelSetError, match=r"neither a built-in \(cityscapes, camvid11, ade20k150\) nor a file"):
        load_label_set("pascal")


def test_recorded_set_with_a_tampered_table_is_refused():
    record = label_set_from_json(FOUR).to_json()
    record["labels"][1]["color"] = [1, 1, 1]
    with pytest.raises(LabelSetError, match="does not match its table"):
        label_sets.recorded_label_set(record, "model.json")
    assert label_sets.recorded_label_set(None, "old manifest").is_default


# --------------------------------------------------------------------------------------------
# a non-Cityscapes taxonomy end to end: prepare -> train -> infer -> review export

H, W = 32, 64
FOUR_THING = json.loads(json.dumps(FOUR))
FOUR_THING["labels"][4]["has_instances"] = True  # "thing": the U-Net border term's components


def _four_scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB, labelIds in FOUR's ids): sky over wall over ground, a few things, a void corner."""
    rng = np.random.default_rng(seed)
    label = np.full((H, W), 9, np.uint8)
    label[H // 4 : H // 2] = 5
    label[H // 2 :] = 3
    for _ in range(2):
        r, c = int(rng.integers(H // 2, H - 5)), int(rng.integers(0, W - 8))
        label[r : r + 4, c : c + 8] = 12
    label[:3, :3] = 0
    colours = np.zeros((256, 3), np.uint8)
    colours[[0, 3, 5, 9, 12]] = [(0, 0, 0), (90, 60, 90), (70, 70, 70), (80, 140, 200), (220, 30, 60)]
    noise = rng.integers(-20, 21, (H, W, 3))
    return np.clip(colours[label].astype(int) + noise, 0, 255).astype(np.uint8), label


@pytest.fixture(scope="module")
def four_run(tmp_path_factory):
    from click.testing import CliRunner
    from conftest import Frame, write_frame

    from segops.cli import cli
    from segops.inference.options import InferOptions
    from segops.training.loop import train
    from segops.training.options import TrainOptions
    from workflows.infer import run_infer

    root = tmp_path_factory.mktemp("four")
    set_file = root / "four.json"
    set_file.write_text(json.dumps(FOUR_THING))
    for i, split in enumerate(["train"] * 4 + ["val"] * 2):
        rgb, label = _four_scene(i)
        write_frame(root / "data", Frame(split, "town", f"town_{i:06d}_000019", rgb, label, None))
    result = CliRunner().invoke(cli, ["prepare", str(root / "data"), str(root / "prepared"), "--label-set", str(set_file)])
    assert result.exit_code == 0, result.output
    opts = TrainOptions.from_flat(prepared=str(root / "prepared"), out=str(root / "model"), epochs=1, model="unet",
                                  depth=2, base_filters=4, batch_size=2, crop=(H, W), verbose=0)  # fmt: skip
    train(opts)
    out = root / "infer"
    run_infer(InferOptions(str(root / "model"), str(root / "data" / "leftImg8bit" / "val"), str(out), crf=False))
    for args in (["review", "select", str(out), "--random", "5"], ["review", "export", str(out)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    return root, load_label_set(str(set_file))


def test_prepare_records_the_label_set_and_counts_its_classes(four_run):
    root, four = four_run
    manifest = json.loads((root / "prepared" / "manifest.json").read_text())
    assert manifest["label_set"]["name"] == "four" and manifest["label_set"]["digest"] == four.digest
    assert label_sets.recorded_label_set(manifest["label_set"], "manifest").labels == four.labels
    stats = json.loads((root / "prepared" / "stats.json").read_text())
    assert stats["class_names"] == list(four.class_names)
    expected = sum(np.bincount(four.to_train_ids(_four_scene(i)[1]).ravel(), minlength=256)[:4] for i in range(4))
    assert stats["splits"]["train"]["pixel_counts"] == expected.tolist()
    weights = json.loads((root / "prepared" / "class_weights.json").read_text())
    assert all(len(w) == 4 for w in weights["schemes"].values())


def test_train_exports_the_label_set(four_run):
    from segops.models import export_dir

    root, four = four_run
    info = export_dir.load_info(str(root / "model"))
    export_dir.check_compatible(info)
    assert (info.num_classes, tuple(info.class_names)) == (4, four.class_names)
    model_json = json.loads((root / "model" / "best" / "model.json").read_text())
    assert [(t["name"], t["id"], t["train_id"]) for t in model_json["label_table"]] == [
        ("ground", 3, 0), ("wall", 5, 1), ("sky", 9, 2), ("thing", 12, 3)]  # fmt: skip
    assert model_json["label_set"]["digest"] == four.digest
    assert set(info.metrics["val_iou_per_class"]) == set(four.class_names)


def test_infer_masks_rows_and_summary_follow_the_label_set(four_run):
    from conftest import read_png

    from segops.inference import table

    root, four = four_run
    out = root / "infer"
    masks = sorted((out / "masks").rglob("*_trainIds.png"))
    assert len(masks) == 2
    for path in masks:
        train_ids = read_png(path)
        assert set(np.unique(train_ids)) <= {0, 1, 2, 3}
        label_ids = read_png(Path(str(path).replace("_trainIds", "_labelIds")))
        assert np.array_equal(label_ids, four.train_to_label[train_ids])
        assert set(np.unique(label_ids)) <= {3, 5, 9, 12}
        colour = read_png(Path(str(path).replace("_trainIds", "_color")))[..., ::-1]  # BGR on disk
        assert np.array_equal(colour, four.train_to_color[train_ids])
    rows = table.read_metrics(str(out))
    assert rows.num_rows == 2 and "iou_before_thing" in rows.column_names and "iou_before_road" not in rows.column_names
    assert all(len(cm) == 16 for cm in rows.column("confusion_before").to_pylist())
    assert all(len(px) == 4 for px in rows.column("class_pixels").to_pylist())
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["before_crf"]["dataset_iou"]) == list(four.class_names)
    assert summary["label_set"] == {"name": "four", "digest": four.digest, "classes": list(four.class_names)}
    assert table.table_label_set(table.open_table(str(out))).digest == four.digest


def test_review_export_follows_the_label_set(four_run):
    root, four = four_run
    review = root / "infer" / "review"
    config = (review / "label_studio_config.xml").read_text()
    assert '<Label value="thing" background="#dc143c"/>' in config and "road" not in config
    coco = json.loads((review / "coco_rle.json").read_text())
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(3, "ground"), (5, "wall"), (9, "sky"), (12, "thing")]
    assert {a["category_id"] for a in coco["annotations"]} <= {3, 5, 9, 12}


def test_the_table_refuses_a_model_of_another_label_set(four_run, tmp_path):
    import keras

    from segops.inference import table
    from segops.inference.options import InferOptions
    from segops.models import export_dir
    from workflows.infer import run_infer

    root, _ = four_run
    out = root / "infer"
    inp = keras.Input((None, None, 3))
    export_dir.export_model(keras.Model(inp, keras.layers.Conv2D(19, 1)(inp)), str(tmp_path / "cs"),
                            export_dir.ModelInfo("pixel", 19, (32, 32), 1))  # fmt: skip
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    version = table.open_table(str(out)).version()
    with pytest.raises(table.TableError, match=r"holds rows of label set 'four' \(4 classes.*this model predicts label set 'cityscapes'"):
        run_infer(InferOptions(str(tmp_path / "cs"), str(root / "data" / "leftImg8bit" / "val"), str(out), crf=False))
    assert table.open_table(str(out)).version() == version
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_a_wrong_label_set_file_fails_prepare_in_one_line_and_writes_nothing(tmp_path):
    from click.testing import CliRunner
    from conftest import make_dataset

    from segops.cli import cli

    make_dataset(tmp_path / "data", {"train": 1})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_with(3, train_id=7)))
    result = CliRunner().invoke(cli, ["prepare", str(tmp_path / "data"), str(tmp_path / "out"), "--label-set", str(bad)])
    assert result.exit_code == 2
    assert "--label-set: label set" in result.output and "2 is missing" in result.output
    assert [line for line in result.output.splitlines() if "Error" in line][0].count("missing") == 1
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# a model card's class_map: a 5-class model relabelled into Cityscapes

FIVE = ["road", "car", "truck", "tree", "unknown"]
FIVE_MAP = {"road": "road", "car": "car", "truck": "car", "tree": "vegetation"}  # "unknown" unmapped


@pytest.fixture(scope="module")
def five_class_model(tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("five")
    # road follows R, car and truck G, tree B; "unknown" wins (a constant) where all three are dark
    kernel = np.zeros((1, 1, 3, 5), np.float32)
    kernel[0, 0, [0, 1, 1, 2], [0, 1, 2, 3]] = [0.05, 0.05, 0.04, 0.05]
    bias = np.array([0, 0, 0, 0, 6], np.float32)
    inp = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(5, 1)
    model = keras.Model(inp, conv(inp))
    conv.set_weights([kernel, bias])
    model.save(str(root / "five.keras"))
    images = root / "images"
    for i in range(2):
        write_png(images / f"img{i}.png", np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8))
    return root, kernel[0, 0], bias


def _card(root: Path, **fields) -> Path:
    card = {"classes": FIVE, "label_set": "cityscapes", "class_map": FIVE_MAP, "output": {"kind": "logits"}, **fields}
    path = root / "five.keras.card.json"
    path.write_text(json.dumps({k: v for k, v in card.items() if v is not None}))
    return path


def test_a_card_class_map_relabels_into_cityscapes_as_numpy_does(five_class_model, tmp_path):
    from click.testing import CliRunner
    from conftest import read_png

    from segops.cli import cli

    root, kernel, bias = five_class_model
    _card(root)
    result = CliRunner().invoke(cli, ["infer", str(root / "five.keras"), str(root / "images"), str(tmp_path / "out"), "--no-crf"])
    assert result.exit_code == 0, result.output
    cs = load_label_set("cityscapes")
    seen = set()
    for i in range(2):
        rgb = read_png(root / "images" / f"img{i}.png")[..., ::-1].astype(np.float64)
        logits = rgb @ kernel + bias
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        scores = np.stack([probs[..., 0], probs[..., 1] + probs[..., 2], probs[..., 3], probs[..., 4]], axis=-1)
        expected = np.array([0, 13, 8, 255], np.uint8)[scores.argmax(-1)]
        mask = read_png(tmp_path / "out" / "masks" / f"img{i}_trainIds.png")
        assert np.array_equal(mask, expected)
        assert np.array_equal(read_png(tmp_path / "out" / "masks" / f"img{i}_labelIds.png"), cs.train_to_label[expected])
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 13, 8, 255}  # every mapped target and the unmapped class occur


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"class_map": {"road": "road", "lorry": "car"}}, "class_map names 'lorry', not one of the card's classes"),
        ({"class_map": {"road": "street"}}, "class_map maps onto 'street', not a class of the Cityscapes label table"),
        ({"class_map": None}, "classes lists 5 classes; segops evaluates the 19 of the Cityscapes label table"),
        ({"label_set": "pascal"}, "label_set: label set"),
    ],
)
def test_a_wrong_mapping_fails_in_one_line_and_writes_nothing(five_class_model, tmp_path, fields, words):
    from click.testing import CliRunner

    from segops.cli import cli

    root, _, _ = five_class_model
    _card(root, **fields)
    result = CliRunner().invoke(cli, ["infer", str(root / "five.keras"), str(root / "images"), str(tmp_path / "out"), "--no-crf"])
    assert result.exit_code != 0 and words in result.output, result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "out").exists()


def test_the_report_follows_the_label_set(four_run, tmp_path):
    from click.testing import CliRunner

    from segops.cli import cli

    root, four = four_run
    args = ["report", "--infer", str(root / "infer"), "--prepared", str(root / "prepared"), "--model", str(root / "model"),
            "--out", str(tmp_path / "report")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "report.html").read_text()
    assert all(f"<td>{name}</td>" in page for name in four.class_names) and "<td>road</td>" not in page


def test_compare_counts_transitions_in_the_label_sets_classes(four_run, tmp_path):
    """A second 4-class model (a 1x1 conv with seeded random weights) run into a copy of the
    four-class OUT: `segops compare` sums 4x4 transitions that equal a numpy count of the first
    model's masks (read before) against the second's, named by the set's classes."""
    import shutil

    import keras
    from conftest import read_png

    from segops.inference.options import InferOptions
    from segops.models import export_dir
    from segops.report.compare import compare, summary
    from workflows.infer import run_infer

    root, four = four_run
    out = tmp_path / "infer"
    shutil.copytree(root / "infer", out)
    old_masks = {p.relative_to(out): read_png(p) for p in (out / "masks").rglob("*_trainIds.png")}
    keras.utils.set_random_seed(5)
    inp = keras.Input((None, None, 3))
    export_dir.export_model(keras.Model(inp, keras.layers.Conv2D(4, 1)(inp / 255.0)), str(tmp_path / "b"),
                            export_dir.ModelInfo("pixel", 4, (32, 64), 1, class_names=list(four.class_names),
                                                 label_set=four.to_json()))  # fmt: skip
    new_id = export_dir.load_info(str(tmp_path / "b")).model_id
    run_infer(InferOptions(str(tmp_path / "b"), str(root / "data" / "leftImg8bit" / "val"), str(out), crf=False))
    expected = np.zeros((4, 4), np.int64)
    for rel, old in old_masks.items():
        new = read_png(out / rel)
        np.add.at(expected, (old.ravel(), new.ravel()), 1)
    result = compare(str(out), new_id)
    assert result.label_set.digest == four.digest and result.images.num_rows == len(old_masks)
    assert np.array_equal(result.transitions, expected)
    data = summary(result)
    assert data["classes"] == list(four.class_names) and data["label_set"] == "four"
    assert {t["from"] for t in data["largest_transitions"]} <= set(four.class_names)
    assert data["agreement"] == pytest.approx(np.trace(expected) / expected.sum())


def test_review_import_writes_the_label_sets_ids(four_run, tmp_path):
    """The COCO export of the predicted masks imported back with ``--label-set``: each image's
    gtFine labelIds are the set's ids of the prediction (infer's _labelIds mask); a Cityscapes
    name is refused, naming the set's names, before anything is written."""
    import shutil

    from click.testing import CliRunner
    from conftest import read_png

    from segops.cli import cli

    root, four = four_run
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    coco_text = (root / "infer" / "review" / "coco_rle.json").read_text().replace(str(root / "data"), str(data))
    coco = json.loads(coco_text)
    exported = tmp_path / "coco.json"
    exported.write_text(coco_text)
    result = CliRunner().invoke(cli, ["review", "import", str(exported), "--label-set", str(root / "four.json")])
    assert result.exit_code == 0, result.output
    assert f"{len(coco['images'])} labelIds PNG(s) written" in result.output
    for img in coco["images"]:
        target = Path(img["segops_path"].replace("/leftImg8bit/", "/gtFine/").replace("_leftImg8bit.png",
                                                                                   "_gtFine_labelIds.png"))  # fmt: skip
        frame = Path(img["segops_path"]).name.replace("_leftImg8bit.png", "")
        (predicted,) = (root / "infer" / "masks").rglob(f"{frame}_labelIds.png")
        assert np.array_equal(read_png(target), read_png(predicted))
        assert set(np.unique(read_png(target))) <= {3, 5, 9, 12}
    before = {p: p.read_bytes() for p in data.rglob("*_gtFine_labelIds.png")}
    for cat in coco["categories"]:
        cat["name"] = "car" if cat["name"] == "sky" else cat["name"]
    exported.write_text(json.dumps(coco))
    result = CliRunner().invoke(cli, ["review", "import", str(exported), "--label-set", str(root / "four.json")])
    assert result.exit_code == 1 and "'car'" in result.output and "label set 'four' has" in result.output
    assert {p: p.read_bytes() for p in data.rglob("*_gtFine_labelIds.png")} == before
