"""What every model source shares: :class:`ModelSource` (a kind of model and one model of it:
which paths it claims, described, checked, not yet loaded) and :class:`PreparedModel` (a loaded
network behind the numpy ``predict`` that :mod:`segops.inference.tiling` calls, with its
:class:`~segops.inference.sources.preprocessing.Preprocessing` applied).

A source is picklable and cheap: Beam ships it to every worker inside the RunInference handler,
and each worker calls :meth:`ModelSource.load` once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from segops.core import labels
from segops.inference.sources.preprocessing import Preprocessing
from segops.models import export_dir
from segops.models.export_dir import ModelError, ModelInfo

LOG = logging.getLogger(__name__)

DIGEST_CHARS = 16


class PreparedModel:
    """A loaded network ``call`` (float32 input -> output, numpy) behind ``predict``: uint8
    [N, H, W, 3] RGB -> float32 [N, H, W, C] probabilities, with ``preprocessing`` applied. A
    network with a fixed batch (``preprocessing.batch``) is called on batches of exactly that
    size, the last one filled with copies of its last image."""

    def __init__(self, call: Callable[[np.ndarray], np.ndarray], preprocessing: Preprocessing) -> None:
        self._call = call
        self.preprocessing = preprocessing

    def predict(self, images: np.ndarray) -> np.ndarray:
        x = self.preprocessing.model_input(images)
        fixed = self.preprocessing.batch
        if not fixed or len(x) == fixed:
            out = self._call(x)
        else:
            parts = []
            for start in range(0, len(x), fixed):
                chunk = x[start : start + fixed]
                filled = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - len(chunk), axis=0)])
                parts.append(np.asarray(self._call(filled))[: len(chunk)])
            out = np.concatenate(parts)
        return self.preprocessing.probabilities(out, images.shape[1], images.shape[2])


@dataclass(frozen=True)
class ModelSource(ABC):
    """One kind of model `segops infer` can run, and one model of that kind. ``path``: the file
    or directory; ``info``: its id, classes and stride (what the pipeline and the results table
    need). A kind is a class that says which paths it :meth:`claims`, how it opens one
    (:meth:`open`: every check that needs no model code) and loads it on a worker
    (:meth:`load`); ``kind`` prefixes its model ids, ``suffixes`` name its files (a directory
    holding one such file is that file)."""

    kind: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    path: str
    info: ModelInfo

    @classmethod
    def claims(cls, path: str) -> bool:
        """Is ``path`` a model of this kind? Cheap: a name or a marker file, nothing parsed.
        By default: a file named with one of ``suffixes``."""
        return bool(cls.suffixes) and path.endswith(cls.suffixes) and os.path.isfile(path)

    @classmethod
    @abstractmethod
    def open(cls, path: str) -> ModelSource:
        """The model at ``path`` (one this kind claims), described and checked without running
        anything of it; raises ModelError (one line)."""

    @abstractmethod
    def load(self, threads: int = 0) -> Any:
        """The model: an object with ``predict(uint8 [N,H,W,3]) -> float32 [N,H,W,C]``."""


def set_tf_threads(threads: int) -> None:
    """TensorFlow's intra-op pool size (``--tf-threads``); a no-op once TF is initialised."""
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TF already initialised in this process: keep its pools
        LOG.info("TensorFlow already initialised; --tf-threads not applied in this process")


def files_inside(root: str) -> list[str]:
    """Every file under directory ``root``, sorted; a symlink resolving outside it is refused."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames):
            export_dir.check_inside(root, os.path.join(dirpath, name))
        for name in filenames:
            path = os.path.join(dirpath, name)
            export_dir.check_inside(root, path)
            found.append(path)
    return sorted(found)


def digest(paths: Iterable[str], root: str) -> str:
    """A short sha256 over the files' names (relative to ``root``) and bytes: the model id of a
    model that is not a segops export names its files and its card exactly."""
    h = hashlib.sha256()
    for path in paths:
        h.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:DIGEST_CHARS]


def refuse_class_count(path: str, what: str, count: Any, expected: int = labels.NUM_CLASSES) -> None:
    """Refuse a model predicting a known number of classes other than ``expected`` (its card's
    classes; the 19 Cityscapes trainIds by default; None or a negative count: unknown until it runs)."""
    if isinstance(count, int) and count >= 0 and count != expected:
        if expected == labels.NUM_CLASSES:
            raise ModelError(f"{path}: {what} {count} classes; segops evaluates the {labels.NUM_CLASSES} "
                             f"Cityscapes trainIds (list the model's classes in its card with a class_map)")  # fmt: skip
        raise ModelError(f"{path}: {what} {count} classes; its card lists {expected}")


def pick_tensor(path: str, role: str, tensors: Iterable[str], name: str | None, holder: str) -> str:
    """The ``holder``'s (model's, signature's) one input / output, or the card's ``name`` among several."""
    names = sorted(tensors)
    if name is not None:
        if name not in names:
            raise ModelError(f"{path}: the card names {role} {name!r}; the {holder} has {', '.join(names)}")
        return name
    if len(names) != 1:
        raise ModelError(f"{path}: the {holder} has {len(names)} {role}s ({', '.join(names)}): "
                         f"name the one to use in the card's {role}.name")  # fmt: skip
    return names[0]
