"""What every model source shares: :class:`ModelSource` (a model file or directory, described,
checked, not yet loaded), :class:`Preprocessing` (how uint8 RGB images become the model's input
and its output becomes probabilities at input resolution) and :class:`PreparedModel` (a loaded
network behind the numpy ``predict`` that :mod:`segops.inference.tiling` calls).

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
from segops.models import export_dir
from segops.models.export_dir import ModelError, ModelInfo

LOG = logging.getLogger(__name__)

CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NHWC", "NCHW")
OUTPUT_KINDS = ("logits", "probabilities")
DIGEST_CHARS = 16


@dataclass(frozen=True)
class Preprocessing:
    """The model's input and output conventions. Input: images resized to ``size`` (H, W) when
    set (else padded to a multiple of ``stride`` by the tiler), channels in ``channels`` order,
    normalised as ``(x - mean) / std`` (0..255 units) or, for keras-hub converters, ``x * scale +
    offset``, laid out as ``layout``. Output: ``output_kind`` per class, laid out as
    ``output_layout``, at any resolution (resized back to the input's)."""

    channels: str = "RGB"
    layout: str = "NHWC"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None
    size: tuple[int, int] | None = None
    stride: int = 1
    interpolation: str = "bilinear"
    antialias: bool = False
    output_kind: str = "logits"
    output_layout: str = "NHWC"
    # a card's class_map: per model class, the label-set train id it adds to (-1: unmapped), and
    # the label set's class count; None: the model's classes are the label set's
    class_map: tuple[int, ...] | None = None
    mapped_classes: int = 0

    def model_input(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] RGB -> the float32 tensor the network takes."""
        x = images.astype(np.float32)
        if self.size is not None and tuple(x.shape[1:3]) != self.size:
            x = resize(x, self.size, self.interpolation, self.antialias)
        if self.channels == "BGR":
            x = x[..., ::-1]
        if self.mean is not None:
            x = x - np.asarray(self.mean, np.float32)
        if self.std is not None:
            x = x / np.asarray(self.std, np.float32)
        if self.scale is not None:
            x = x * np.asarray(self.scale, np.float32)
        if self.offset is not None:
            x = x + np.asarray(self.offset, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)

    def probabilities(self, output: np.ndarray, height: int, width: int) -> np.ndarray:
        """The network's output -> float32 [N, height, width, C] probabilities."""
        out = np.asarray(output, dtype=np.float32)
        if self.output_layout == "NCHW":
            out = out.transpose(0, 2, 3, 1)
        if self.output_kind == "logits":
            out = softmax(out)
        if self.class_map is not None:  # before resizing: fewer channels, and both are linear
            out = out @ class_map_matrix(self.class_map, self.mapped_classes)
        if out.shape[1:3] != (height, width):
            # probabilities, not logits, are interpolated: a convex mix of distributions sums to 1
            out = resize(out, (height, width), "bilinear", False)
        return np.ascontiguousarray(out, dtype=np.float32)


def class_map_matrix(class_map: tuple[int, ...], mapped_classes: int) -> np.ndarray:
    """[model classes, label-set classes (+1 when some are unmapped)] 0/1 matrix: probabilities
    @ it sums the model classes mapped onto each label-set class; the extra last column collects
    the unmapped ones (its argmax is written as ignore)."""
    unmapped = any(t < 0 for t in class_map)
    m = np.zeros((len(class_map), mapped_classes + unmapped), np.float32)
    for source, target in enumerate(class_map):
        m[source, target if target >= 0 else mapped_classes] = 1.0
    return m


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def resize(x: np.ndarray, size: tuple[int, int], interpolation: str, antialias: bool) -> np.ndarray:
    """[N, H, W, C] float32 resized to ``size`` by TensorFlow's image resize (the op Keras'
    resizing layers and keras-hub's image converters use, half-pixel centres)."""
    import tensorflow as tf

    return tf.image.resize(x, size, method=interpolation, antialias=antialias).numpy()


class PreparedModel:
    """A loaded network ``call`` (float32 input -> output, numpy) behind ``predict``: uint8
    [N, H, W, 3] RGB -> float32 [N, H, W, C] probabilities, with ``preprocessing`` applied."""

    def __init__(self, call: Callable[[np.ndarray], np.ndarray], preprocessing: Preprocessing) -> None:
        self._call = call
        self.preprocessing = preprocessing

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = self._call(self.preprocessing.model_input(images))
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
