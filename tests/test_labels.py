"""The label table against cityscapesscripts' own table (an independent copy of the truth)."""

import numpy as np
from cityscapesscripts.helpers import labels as cs

from segops.core import labels


def test_table_matches_cityscapesscripts_field_by_field():
    ours = {lb.name: lb for lb in labels.LABELS}
    theirs = {lb.name: lb for lb in cs.labels}
    assert set(ours) == set(theirs)
    for name, t in theirs.items():
        o = ours[name]
        assert (o.id, o.train_id, o.category, o.category_id) == (t.id, t.trainId, t.category, t.categoryId), name
        assert (o.has_instances, o.ignore_in_eval, o.color) == (t.hasInstances, t.ignoreInEval, t.color), name


def test_label_to_train_lut_matches_cityscapesscripts():
    for t in cs.labels:
        if t.id < 0:
            continue
        expected = t.trainId if 0 <= t.trainId < 255 else 255
        assert labels.LABEL_ID_TO_TRAIN_ID[t.id] == expected, t.name


def test_nineteen_eval_classes_in_trainid_order():
    assert labels.NUM_CLASSES == 19
    assert labels.CLASS_NAMES == tuple(cs.trainId2label[i].name for i in range(19))


def test_train_to_label_and_colour_roundtrip():
    train = np.arange(19, dtype=np.uint8).reshape(1, 19)
    assert np.array_equal(labels.to_train_ids(labels.to_label_ids(train)), train)
    assert labels.to_label_ids(np.array([255], np.uint8))[0] == 0
    for i in range(19):
        assert tuple(labels.colorize(np.array([[i]], np.uint8))[0, 0]) == cs.trainId2label[i].color


def test_unknown_ids_are_reported():
    arr = np.array([[7, 8, 34], [200, 7, 0]], dtype=np.uint8)
    assert labels.unknown_label_ids(arr) == [34, 200]
    assert labels.unknown_label_ids(np.array([[0, 33]], np.uint8)) == []
