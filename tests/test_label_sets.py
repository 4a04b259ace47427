"""Label sets as data: the file format's validation, the lookups, the built-ins."""

import json

import numpy as np
import pytest

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
