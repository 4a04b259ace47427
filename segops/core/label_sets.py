"""Label sets as data: a taxonomy's label table (as in cityscapesScripts' ``labels.py``), the
JSON file format it is read from, its validation, and every lookup derived from it.

A label set maps the ids stored in labelIds PNGs to the train ids a model predicts
(0..num_classes-1, 255 = ignore) and gives each a name and a colour. ``cityscapes`` (the
default, built from :mod:`segops.core.labels`, so its lookups are that module's), ``camvid11``
and ``ade20k150`` are built in; any other is a JSON file (docs/labels.md):

    {"name": "mine", "labels": [{"id": 0, "name": "void", "train_id": 255, "color": [0, 0, 0]},
                                {"id": 1, "name": "road", "train_id": 0, "color": [128, 64, 128],
                                 "category": "flat"}, ...]}

Every problem with a file is a one-line :class:`LabelSetError` naming the file and the field.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segops.core import labels
from segops.core.labels import IGNORE_ID, Label

DEFAULT_LABEL_SET = "cityscapes"
_DATA_DIR = Path(__file__).with_name("label_set_data")
BUILTIN_FILES = {"camvid11": "camvid11.json", "ade20k150": "ade20k150.json"}
BUILTIN_NAMES = (DEFAULT_LABEL_SET, *BUILTIN_FILES)
_REQUIRED = ("id", "name", "train_id", "color")
_OPTIONAL = {"category": "void", "category_id": 0, "has_instances": False}


class LabelSetError(ValueError):
    """A label set that cannot be read or is not valid (one line, naming the file and field)."""


def _frozen(lut: np.ndarray) -> np.ndarray:
    lut.flags.writeable = False
    return lut


@dataclass(frozen=True, eq=False)
class LabelSet:
    """One taxonomy: its labels (``id`` -1 is never rasterised, train id -1 or 255 is ignored)."""

    name: str
    labels: tuple[Label, ...]

    # --- classes in train-id order -----------------------------------------------------------

    @functools.cached_property
    def train_labels(self) -> tuple[Label, ...]:
        """One label per train id (the lowest labelId where several share one), in order."""
        first: dict[int, Label] = {}
        for lb in sorted(self.labels, key=lambda lb: lb.id):
            if 0 <= lb.train_id < IGNORE_ID and lb.train_id not in first:
                first[lb.train_id] = lb
        return tuple(first[t] for t in sorted(first))

    @property
    def num_classes(self) -> int:
        return len(self.train_labels)

    @functools.cached_property
    def class_names(self) -> tuple[str, ...]:
        return tuple(lb.name for lb in self.train_labels)

    @functools.cached_property
    def thing_label_ids(self) -> tuple[int, ...]:
        """labelIds of the classes with instances (the U-Net border term's components)."""
        return tuple(lb.id for lb in self.labels if lb.has_instances and lb.id >= 0)

    @property
    def table_title(self) -> str:
        """How messages name the set ("the Cityscapes label table" for the default, as always)."""
        return "Cityscapes label table" if self.is_default else f"label set {self.name!r}"

    @property
    def is_default(self) -> bool:
        return self.digest == cityscapes().digest

    # --- lookups (uint8 numpy arrays of 256 entries, read-only) ------------------------------

    @functools.cached_property
    def label_to_train(self) -> np.ndarray:
        """labelId -> trainId, 255 for ignored ids and ids outside the set."""
        lut = np.full(256, IGNORE_ID, dtype=np.uint8)
        for lb in self.labels:
            if lb.id >= 0:
                lut[lb.id] = lb.train_id if 0 <= lb.train_id < IGNORE_ID else IGNORE_ID
        return _frozen(lut)

    @functools.cached_property
    def valid_label_id(self) -> np.ndarray:
        valid = np.zeros(256, dtype=bool)
        valid[[lb.id for lb in self.labels if lb.id >= 0]] = True
        return _frozen(valid)

    @functools.cached_property
    def train_to_label(self) -> np.ndarray:
        """trainId -> labelId; ignore maps to the lowest ignored labelId (Cityscapes: 0, unlabeled)."""
        ignored = sorted(lb.id for lb in self.labels if lb.id >= 0 and not 0 <= lb.train_id < IGNORE_ID)
        lut = np.full(256, ignored[0] if ignored else 0, dtype=np.uint8)
        for lb in self.train_labels:
            lut[lb.train_id] = lb.id
        return _frozen(lut)

    @functools.cached_property
    def train_to_color(self) -> np.ndarray:
        """trainId -> RGB; ignore is black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        for lb in self.train_labels:
            lut[lb.train_id] = lb.color
        return _frozen(lut)

    @functools.cached_property
    def label_to_color(self) -> np.ndarray:
        """labelId -> RGB, as in a colour ground-truth PNG."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        for lb in self.labels:
            if lb.id >= 0:
                lut[lb.id] = lb.color
        return _frozen(lut)

    def to_train_ids(self, label_ids: np.ndarray) -> np.ndarray:
        return self.label_to_train[label_ids]

    def to_label_ids(self, train_ids: np.ndarray) -> np.ndarray:
        return self.train_to_label[train_ids]

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        return self.train_to_color[train_ids]

    def unknown_label_ids(self, label_ids: np.ndarray) -> list[int]:
        """Sorted ids present in ``label_ids`` that are not in the set (empty if all known)."""
        present = np.flatnonzero(np.bincount(label_ids.ravel(), minlength=256))
        return [int(i) for i in present if not self.valid_label_id[i]]

    def class_id(self, name: str) -> int:
        """The train id of a class name; LabelSetError naming the set's classes otherwise."""
        if name not in self.class_names:
            raise LabelSetError(f"label set {self.name!r} has no class {name!r}; classes: {', '.join(self.class_names)}")
        return self.class_names.index(name)

    # --- the table as JSON ---------------------------------------------------------------------

    def table(self) -> list[dict[str, Any]]:
        return [{"id": lb.id, "name": lb.name, "train_id": lb.train_id, "color": list(lb.color),
                 "category": lb.category, "category_id": lb.category_id, "has_instances": lb.has_instances,
                 "ignore_in_eval": lb.ignore_in_eval} for lb in self.labels]  # fmt: skip

    @functools.cached_property
    def digest(self) -> str:
        """sha256 (16 hex) of what the set means: ids, names, train ids, colours (not its name)."""
        canon = [[lb.id, lb.name, lb.train_id, list(lb.color), lb.ignore_in_eval] for lb in self.labels]
        return hashlib.sha256(json.dumps(sorted(canon), separators=(",", ":")).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        """What a manifest or model.json records: name, digest and the full table."""
        return {"name": self.name, "digest": self.digest, "labels": self.table()}


def _field_error(where: str, index: int, key: str, problem: str) -> LabelSetError:
    return LabelSetError(f"label set {where}: labels[{index}].{key}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_label(where: str, index: int, entry: Any) -> Label:
    if not isinstance(entry, dict):
        raise LabelSetError(f"label set {where}: labels[{index}]: expected an object, got {type(entry).__name__}")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise _field_error(where, index, missing[0], "missing")
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL) - {"ignore_in_eval"})
    if unknown:
        raise _field_error(where, index, unknown[0], "unknown field")
    lid, name, train_id, color = entry["id"], entry["name"], entry["train_id"], entry["color"]
    if not _is_int(lid) or not -1 <= lid <= 255:
        raise _field_error(where, index, "id", f"expected an int 0..255 (or -1: never in a mask), got {lid!r}")
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise _field_error(where, index, "name", f"expected a non-empty name without edge spaces, got {name!r}")
    if not _is_int(train_id) or not (-1 <= train_id < IGNORE_ID or train_id == IGNORE_ID):
        raise _field_error(where, index, "train_id", f"expected 0..C-1 or 255 (ignore), got {train_id!r}")
    if not (isinstance(color, list) and len(color) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in color)):
        raise _field_error(where, index, "color", f"expected 3 ints 0..255, got {color!r}")
    ignored = not 0 <= train_id < IGNORE_ID
    if lid == -1 and not ignored:
        raise _field_error(where, index, "train_id", "an id of -1 (never in a mask) cannot be trained: use 255")
    ignore_in_eval = entry.get("ignore_in_eval", ignored)
    if ignore_in_eval is not ignored:
        raise _field_error(where, index, "ignore_in_eval", f"must be {str(ignored).lower()} for train_id {train_id}")
    category, category_id, instances = (entry.get(k, v) for k, v in _OPTIONAL.items())
    if not isinstance(category, str) or not _is_int(category_id) or not isinstance(instances, bool):
        bad = next(k for k, ok in (("category", isinstance(category, str)), ("category_id", _is_int(category_id)),
                                   ("has_instances", isinstance(instances, bool))) if not ok)  # fmt: skip
        raise _field_error(where, index, bad, f"wrong type {type(entry[bad]).__name__}")
    return Label(name, lid, train_id, category, category_id, instances, ignore_in_eval, tuple(color))


def label_set_from_json(data: Any, where: str = "<json>") -> LabelSet:
    """Validate and build a label set from its JSON object (a file's, a manifest's, a card's)."""
    if not isinstance(data, dict):
        raise LabelSetError(f"label set {where}: expected an object with 'name' and 'labels'")
    name, entries = data.get("name"), data.get("labels")
    if not isinstance(name, str) or not name:
        raise LabelSetError(f"label set {where}: name: expected a non-empty string, got {name!r}")
    if not isinstance(entries, list) or not entries:
        raise LabelSetError(f"label set {where}: labels: expected a non-empty list")
    parsed = tuple(_parse_label(where, i, e) for i, e in enumerate(entries))
    seen_ids: dict[int, int] = {}
    seen_names: dict[str, int] = {}
    for i, lb in enumerate(parsed):
        if lb.id >= 0 and lb.id in seen_ids:
            raise _field_error(where, i, "id", f"{lb.id} repeats labels[{seen_ids[lb.id]}]")
        if lb.name in seen_names:
            raise _field_error(where, i, "name", f"{lb.name!r} repeats labels[{seen_names[lb.name]}]")
        seen_ids.setdefault(lb.id, i)
        seen_names[lb.name] = i
    train_ids = sorted({lb.train_id for lb in parsed if 0 <= lb.train_id < IGNORE_ID})
    if not train_ids:
        raise LabelSetError(f"label set {where}: labels: no class to train (every train_id is 255)")
    if train_ids != list(range(len(train_ids))):
        gap = next(t for t in range(len(train_ids) + 1) if t not in train_ids)
        raise LabelSetError(f"label set {where}: train ids must be 0..C-1 without gaps; {gap} is missing")
    return LabelSet(name=name, labels=parsed)


def read_label_set_file(path: str) -> LabelSet:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelSetError(f"label set {path}: cannot be read ({exc.__class__.__name__}: {exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelSetError(f"label set {path}: not JSON (line {exc.lineno}: {exc.msg})") from exc
    return label_set_from_json(data, path)


@functools.cache
def cityscapes() -> LabelSet:
    """The built-in default: exactly :data:`segops.core.labels.LABELS`."""
    return LabelSet(name=DEFAULT_LABEL_SET, labels=labels.LABELS)


@functools.cache
def _builtin(name: str) -> LabelSet:
    return read_label_set_file(str(_DATA_DIR / BUILTIN_FILES[name]))


def load_label_set(name_or_path: str | None) -> LabelSet:
    """A built-in by name (None = Cityscapes), else a label-set JSON file.

    Example:
        >>> camvid = load_label_set("camvid11")
        >>> camvid.num_classes, camvid.class_names[:3]
        (11, ('Sky', 'Building', 'Pole'))
        >>> load_label_set(None) is cityscapes() and cityscapes().num_classes == 19
        True
        >>> load_label_set("nope")
        Traceback (most recent call last):
        ...
        segops.core.label_sets.LabelSetError: label set 'nope' is neither a built-in (cityscapes, camvid11, ade20k150) nor a file
    """
    if name_or_path in (None, "", DEFAULT_LABEL_SET):
        return cityscapes()
    if name_or_path in BUILTIN_FILES:
        return _builtin(name_or_path)
    if not os.path.isfile(name_or_path):
        raise LabelSetError(f"label set {name_or_path!r} is neither a built-in ({', '.join(BUILTIN_NAMES)}) nor a file")
    return read_label_set_file(name_or_path)


def recorded_label_set(record: Any, where: str) -> LabelSet:
    """The label set a manifest or model.json recorded (Cityscapes when it records none: older
    outputs); a record whose table no longer matches its digest is refused."""
    if record is None:
        return cityscapes()
    found = label_set_from_json(record, where)
    if isinstance(record, dict) and record.get("digest") not in (None, found.digest):
        raise LabelSetError(f"label set {where}: digest {record['digest']} does not match its table ({found.digest})")
    return found
