"""Everything `segops infer` does that is not Beam plumbing.

* :class:`InferOptions`: the typed options of the pipeline (CLI flags map onto it).
* Input discovery (:func:`discover_inputs`) through Beam ``FileSystems.match``: a directory, a
  glob, or a Cityscapes split; ground truth found in the ``gtFine`` mirror or under ``--labels``.
* The model handler (:class:`SegmentationModelHandler`), a Beam ``ModelHandler`` that loads the
  exported SavedModel signature once per worker process and runs same-size batches; images of
  any size are reflection-padded to a multiple of the model's stride (and cropped back), and
  images larger than the tile are run as overlapping tiles blended with pyramid weights.
* Per-image rows (:func:`metrics_row`) with their explicit Parquet schema (:func:`metrics_schema`),
  and the run bookkeeping that keeps the table free of duplicates: which images to skip
  (:func:`plan`), pruning rows that this run is about to replace (:func:`prune_rows`), and the
  dataset summary recomputed from the table alone (:func:`summarize`).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import math
import os
import posixpath
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from segops.core import fs, imageio, labels, metrics
from segops.crf import CRFParams

LOG = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"
CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelIds.png"
MASK_KINDS = ("trainIds", "labelIds", "color")
METRICS_DIR = "metrics.parquet"
MASKS_DIR = "masks"
SUMMARY_FILE = "summary.json"
DEAD_LETTER_FILE = "dead_letter.jsonl"
MANIFEST_FILE = "manifest.json"
LOW_CONFIDENCE = 0.5  # a pixel whose top probability is below this counts as low-confidence


# --------------------------------------------------------------------------------------------
# options


def _parse_tile(tile: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if tile is None or tile == "" or tile == "0" or tile == (0, 0):
        return None
    if isinstance(tile, str):
        try:
            th, tw = (int(v) for v in tile.lower().split("x"))
        except ValueError as exc:
            raise ValueError(f"--tile must look like 1024x2048 (or 0 for whole images), got {tile!r}") from exc
        return th, tw
    return int(tile[0]), int(tile[1])


def new_run_id() -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{now}-{uuid.uuid4().hex[:6]}"


@dataclass
class InferOptions:
    """Options of ``segops infer``; validated once by :meth:`validate`."""

    model_dir: str
    input: str
    output: str
    labels: str | None = None  # root of labelIds mirroring the input; default: the gtFine mirror
    split: str | None = None  # INPUT is a Cityscapes root; use INPUT/leftImg8bit/<split>
    crf: bool = True
    crf_params: CRFParams = field(default_factory=CRFParams)
    overwrite: bool = False
    overlay: bool = False
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS
    batch_size: int = 2  # images per RunInference batch (same-size images share a model call)
    max_batch_pixels: int = 1 << 21  # pixels per model call (bounds activation memory): one 1024x2048 frame
    tile: tuple[int, int] | None = (1024, 2048)  # sliding window for larger images; None = whole image
    tile_overlap: int = 64
    tf_threads: int = 0  # intra-op threads per worker; 0 = TensorFlow's default
    share_model_across_processes: bool = False
    run_id: str = field(default_factory=new_run_id)
    _validated: bool = field(default=False, init=False, repr=False, compare=False)

    def validate(self) -> InferOptions:
        """Check and normalise once (idempotent): paths made absolute, tile parsed, split applied."""
        if self._validated:
            return self
        self.tile = _parse_tile(self.tile)  # type: ignore[arg-type]
        if self.batch_size < 1 or self.max_batch_pixels < 1:
            raise ValueError("--batch-size and --max-batch-pixels must be >= 1")
        if self.max_pixels < 1:
            raise ValueError("--max-pixels must be >= 1")
        if self.tile is not None and (self.tile[0] < 1 or self.tile[1] < 1):
            raise ValueError("--tile sides must be >= 1")
        if self.tile_overlap < 0:
            raise ValueError("--tile-overlap must be >= 0")
        if not self.run_id or "/" in self.run_id or "=" in self.run_id:
            raise ValueError("--run-id must be non-empty and contain neither '/' nor '='")
        if self.split:
            self.input = _join(self.input, "leftImg8bit", self.split)
        self.input = _normalise(self.input)
        self.output = _normalise(self.output)
        if self.labels:
            self.labels = _normalise(self.labels)
        self._validated = True
        return self


# --------------------------------------------------------------------------------------------
# paths


def _has_scheme(path: str) -> bool:
    return "://" in path


def _normalise(path: str) -> str:
    return path.rstrip("/") if _has_scheme(path) else os.path.abspath(path)


def _join(base: str, *parts: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(base, *parts)


def _relpath(path: str, root: str) -> str:
    root = root.rstrip("/") + "/"
    if not path.startswith(root):
        raise ValueError(f"{path} is not under {root}")
    return path[len(root) :]


def _match(pattern: str) -> list[str]:
    """Paths matching ``pattern`` (Beam glob: ``*`` within a component, ``**`` across them)."""
    from apache_beam.io.filesystems import FileSystems

    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


@dataclass(frozen=True)
class WorkItem:
    """One input image, where its ground truth is (if any) and where its masks go."""

    path: str
    rel: str  # path relative to the input root; the mask layout mirrors it
    label_path: str | None = None

    @property
    def stem(self) -> str:
        """``rel`` without extension and without Cityscapes' ``_leftImg8bit`` suffix."""
        base = posixpath.splitext(self.rel)[0]
        return base[: -len(CITYSCAPES_IMAGE_SUFFIX)] if base.endswith(CITYSCAPES_IMAGE_SUFFIX) else base


def mask_paths(output: str, item: WorkItem, overlay: bool = False) -> dict[str, str]:
    """Output files of ``item``: masks/<stem>_trainIds.png, _labelIds.png, _color.png[, _overlay.jpg]."""
    paths = {kind: _join(output, MASKS_DIR, f"{item.stem}_{kind}.png") for kind in MASK_KINDS}
    if overlay:
        paths["overlay"] = _join(output, MASKS_DIR, f"{item.stem}_overlay.jpg")
    return paths


def _input_root(input_: str) -> tuple[str, str]:
    """(root that relative paths start from, Beam match pattern)."""
    if _is_glob(input_):
        parts = input_.split("/")
        fixed = []
        for part in parts:
            if _is_glob(part):
                break
            fixed.append(part)
        return "/".join(fixed), input_
    return input_, _join(input_, "**")


def _cityscapes_label_for(image_path: str) -> str | None:
    """gtFine labelIds path mirroring a ``.../leftImg8bit/<split>/<city>/<x>_leftImg8bit.png``."""
    directory, name = posixpath.split(image_path)
    stem = posixpath.splitext(name)[0]
    marker = "/leftImg8bit/"
    if not stem.endswith(CITYSCAPES_IMAGE_SUFFIX) or marker not in directory + "/":
        return None
    head, _, tail = (directory + "/").rpartition(marker)
    return f"{head}/gtFine/{tail}{stem[: -len(CITYSCAPES_IMAGE_SUFFIX)]}{CITYSCAPES_LABEL_SUFFIX}"


def discover_inputs(options: InferOptions) -> list[WorkItem]:
    """List input images (PNG/JPEG) and pair them with ground truth, with one match per root.

    Ground truth, when ``options.labels`` is set, is looked up under that root at the image's
    relative path as ``<stem>_gtFine_labelIds.png`` (Cityscapes naming) or ``<name>.png``;
    otherwise, for Cityscapes names, in the ``gtFine`` mirror of the ``leftImg8bit`` tree.
    Files under the output directory are never inputs.
    """
    root, pattern = _input_root(options.input)
    out_prefix = options.output.rstrip("/") + "/"
    paths = [
        p
        for p in _match(pattern)
        if p.lower().endswith(IMAGE_EXTENSIONS) and not p.startswith(out_prefix) and "/beam-temp-" not in p
    ]
    items = [WorkItem(p, _relpath(p, root)) for p in paths]
    if not items:
        return []
    if options.labels:
        existing = set(_match(_join(options.labels, "**")))
        paired = []
        for it in items:
            directory, name = posixpath.split(it.rel)
            stem = posixpath.splitext(name)[0]
            candidates = []
            if stem.endswith(CITYSCAPES_IMAGE_SUFFIX):
                candidates.append(posixpath.join(directory, stem[: -len(CITYSCAPES_IMAGE_SUFFIX)] + CITYSCAPES_LABEL_SUFFIX))
            candidates.append(posixpath.join(directory, stem + ".png"))
            found = next((c for c in (_join(options.labels, c) for c in candidates) if c in existing), None)
            paired.append(WorkItem(it.path, it.rel, found))
        return paired
    mirror = _cityscapes_label_for(_join(root, "x" + CITYSCAPES_IMAGE_SUFFIX + ".png"))
    if mirror is None:
        return items
    existing = set(_match(_join(posixpath.dirname(mirror), "**")))
    out = []
    for it in items:
        label = _cityscapes_label_for(it.path)
        out.append(WorkItem(it.path, it.rel, label if label in existing else None))
    return out


# --------------------------------------------------------------------------------------------
# model handler: padding, tiling, batching


def reflect_pad(image: np.ndarray, multiple: int, min_hw: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Pad (H, W, 3) at the bottom/right by reflection to a multiple of ``multiple`` (and >= min_hw).

    Reflection (not zeros) keeps the padded border looking like image content, so the model's
    receptive field near the border sees plausible context; the padding is cropped away after.
    """
    h, w = image.shape[:2]
    th = math.ceil(max(h, min_hw[0]) / multiple) * multiple
    tw = math.ceil(max(w, min_hw[1]) / multiple) * multiple
    if (th, tw) == (h, w):
        return image
    # np.pad's reflect cannot pad by more than the size - 1 in one go; symmetric-repeat instead
    while image.shape[0] < th or image.shape[1] < tw:
        ph = min(th - image.shape[0], image.shape[0] - 1) if image.shape[0] > 1 else th - image.shape[0]
        pw = min(tw - image.shape[1], image.shape[1] - 1) if image.shape[1] > 1 else tw - image.shape[1]
        mode = "reflect" if image.shape[0] > 1 and image.shape[1] > 1 else "edge"
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)
    return image


def tile_windows(height: int, width: int, tile: tuple[int, int], overlap: int) -> list[tuple[int, int]]:
    """Top-left corners of tiles covering (height, width); neighbours overlap by >= ``overlap``."""

    def starts(size: int, t: int) -> list[int]:
        if size <= t:
            return [0]
        step = max(1, t - overlap)
        n = math.ceil((size - t) / step) + 1
        return sorted({round(i * (size - t) / (n - 1)) for i in range(n)})

    return [(y, x) for y in starts(height, tile[0]) for x in starts(width, tile[1])]


def _pyramid_weights(th: int, tw: int) -> np.ndarray:
    wy = np.minimum(np.arange(th) + 1, th - np.arange(th)).astype(np.float32)
    wx = np.minimum(np.arange(tw) + 1, tw - np.arange(tw)).astype(np.float32)
    return np.minimum.outer(wy, wx)


class ServingModel:
    """The exported ``serving_default`` signature behind a numpy-in, numpy-out ``predict``.

    Numpy at the boundary matters when Beam shares one model across processes
    (``share_model_across_processes``): calls then go through a proxy and only picklable
    values may cross it.
    """

    def __init__(self, model_dir: str, threads: int = 0) -> None:
        import tensorflow as tf

        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # TF already initialised in this process: keep its pools
                LOG.info("TensorFlow already initialised; --tf-threads not applied in this process")
        from segops.training.export import load_serving_fn

        self._fn = load_serving_fn(model_dir)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._fn(images=images)["probabilities"].numpy()


def predict_probabilities(
    model: Any,
    images: Sequence[np.ndarray],
    stride: int,
    tile: tuple[int, int] | None,
    overlap: int,
    max_batch_images: int,
    max_batch_pixels: int,
) -> list[np.ndarray]:
    """Softmax probabilities (H, W, C) float32 for each RGB image, any size.

    Images no larger than the tile are reflection-padded to a multiple of ``stride`` and run
    whole; larger ones are cut into overlapping tiles (tile sides rounded up to the stride) and
    blended with pyramid weights. Inputs of the same padded size share model calls, up to
    ``max_batch_images`` images and ``max_batch_pixels`` pixels per call.
    """
    if tile is not None:
        tile = (math.ceil(tile[0] / stride) * stride, math.ceil(tile[1] / stride) * stride)
    # jobs: (image index, y, x, h, w, padded array)
    jobs: list[tuple[int, int, int, int, int, np.ndarray]] = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if tile is None or (h <= tile[0] and w <= tile[1]):
            jobs.append((i, 0, 0, h, w, reflect_pad(img, stride)))
            continue
        padded = reflect_pad(img, stride, min_hw=tile)  # a side smaller than the tile
        for y, x in tile_windows(padded.shape[0], padded.shape[1], tile, overlap):
            jobs.append((i, y, x, tile[0], tile[1], padded[y : y + tile[0], x : x + tile[1]]))
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for j, job in enumerate(jobs):
        by_shape[job[5].shape].append(j)
    outputs: list[np.ndarray | None] = [None] * len(jobs)
    for shape, idxs in by_shape.items():
        per_call = max(1, min(max_batch_images, max_batch_pixels // (shape[0] * shape[1])))
        for start in range(0, len(idxs), per_call):
            chunk = idxs[start : start + per_call]
            probs = model.predict(np.stack([jobs[j][5] for j in chunk]))
            for j, p in zip(chunk, probs, strict=True):
                outputs[j] = p
    results: list[np.ndarray] = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        mine = [j for j, job in enumerate(jobs) if job[0] == i]
        if len(mine) == 1 and jobs[mine[0]][1:3] == (0, 0) and jobs[mine[0]][3:5] == (h, w):
            results.append(np.ascontiguousarray(outputs[mine[0]][:h, :w], dtype=np.float32))
            continue
        num_classes = outputs[mine[0]].shape[-1]
        ph = max(jobs[j][1] + jobs[j][3] for j in mine)
        pw = max(jobs[j][2] + jobs[j][4] for j in mine)
        acc = np.zeros((ph, pw, num_classes), np.float32)
        wsum = np.zeros((ph, pw, 1), np.float32)
        weights = _pyramid_weights(tile[0], tile[1])[..., None]  # type: ignore[index]
        for j in mine:
            _, y, x, th, tw, _ = jobs[j]
            acc[y : y + th, x : x + tw] += outputs[j] * weights
            wsum[y : y + th, x : x + tw] += weights
            outputs[j] = None
        acc /= wsum
        results.append(np.ascontiguousarray(acc[:h, :w]))
    return results


class ImageExample(NamedTuple):
    """A decoded image on its way through the pipeline (ground truth as trainIds, or None)."""

    item: WorkItem
    rgb: np.ndarray
    gt: np.ndarray | None


class Prediction(NamedTuple):
    example: ImageExample
    probabilities: np.ndarray  # (H, W, C) float32
    inference_ms: float  # this image's share of its model calls


class SegmentationModelHandler(ModelHandler):
    """Beam ``ModelHandler`` for a segops export directory (SavedModel ``serving_default``).

    Beam's built-in ``TFModelHandlerNumpy`` loads with ``tf.keras.models.load_model`` and calls
    the model on a float batch; our export's callable is a signature with a uint8 keyword input
    returning a dict, so this handler loads it with :func:`segops.training.export.load_serving_fn`
    instead. RunInference keeps one loaded model per worker process (Beam's ``shared.Shared``),
    or one per machine shared by all processes with ``share_model_across_processes``.
    """

    def __init__(
        self,
        model_dir: str,
        stride: int,
        *,
        batch_size: int = 2,
        max_batch_pixels: int = 1 << 21,
        tile: tuple[int, int] | None = None,
        tile_overlap: int = 64,
        threads: int = 0,
        share_across_processes: bool = False,
    ) -> None:
        super().__init__(min_batch_size=1, max_batch_size=batch_size, large_model=share_across_processes)
        self._model_dir = model_dir
        self._stride = stride
        self._batch_size = batch_size
        self._max_batch_pixels = max_batch_pixels
        self._tile = tile
        self._overlap = tile_overlap
        self._threads = threads

    def load_model(self) -> ServingModel:
        return ServingModel(self._model_dir, self._threads)

    def run_inference(
        self, batch: Sequence[ImageExample], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[Prediction]:
        if not batch:
            return []
        start = time.perf_counter()
        probs = predict_probabilities(
            model,
            [ex.rgb for ex in batch],
            self._stride,
            self._tile,
            self._overlap,
            self._batch_size,
            self._max_batch_pixels,
        )
        total_pixels = sum(ex.rgb.shape[0] * ex.rgb.shape[1] for ex in batch)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        return [
            Prediction(ex, p, elapsed_ms * ex.rgb.shape[0] * ex.rgb.shape[1] / total_pixels)
            for ex, p in zip(batch, probs, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[ImageExample]) -> int:
        return sum(ex.rgb.nbytes for ex in batch)  # not len(pickle.dumps(batch)): 6 MB per frame

    def get_metrics_namespace(self) -> str:
        return "segops_infer"


# --------------------------------------------------------------------------------------------
# decoding and per-image results


def load_example(item: WorkItem, max_pixels: int) -> ImageExample:
    """Read and validate one image (+ ground truth); raises BadInput with a reason."""
    data = fs.read_bytes(item.path)
    height, width = imageio.image_size(data)  # header only: oversized images never get decoded
    imageio.check_pixels(height, width, max_pixels)
    rgb = imageio.decode_rgb_image(data, max_pixels)
    gt = None
    if item.label_path:
        try:
            label_ids = imageio.decode_label_png(fs.read_bytes(item.label_path), max_pixels)
        except OSError as exc:
            raise imageio.BadInput(f"ground truth {item.label_path} unreadable ({exc})") from exc
        except imageio.BadInput as exc:
            raise imageio.BadInput(f"ground truth {item.label_path}: {exc.reason}") from exc
        if label_ids.shape != rgb.shape[:2]:
            raise imageio.BadInput(
                f"ground truth {item.label_path} is {label_ids.shape[1]}x{label_ids.shape[0]}, "
                f"image is {rgb.shape[1]}x{rgb.shape[0]}"
            )
        unknown = labels.unknown_label_ids(label_ids)
        if unknown:
            raise imageio.BadInput(f"ground truth {item.label_path} has unknown label ids {unknown[:10]}")
        gt = labels.to_train_ids(label_ids)
    return ImageExample(item, rgb, gt)


def overlay_image(rgb: np.ndarray, train_ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    color = labels.colorize(train_ids).astype(np.float32)
    return (rgb.astype(np.float32) * (1 - alpha) + color * alpha + 0.5).astype(np.uint8)


def encode_masks(rgb: np.ndarray, train_ids: np.ndarray, overlay: bool) -> dict[str, bytes]:
    out = {
        "trainIds": imageio.encode_mask_png(train_ids),
        "labelIds": imageio.encode_mask_png(labels.to_label_ids(train_ids)),
        "color": imageio.encode_png(labels.colorize(train_ids)),
    }
    if overlay:
        out["overlay"] = imageio.encode_jpeg(overlay_image(rgb, train_ids))
    return out


def _column_name(name: str) -> str:
    return name.replace(" ", "_")


CLASS_COLUMNS = tuple(_column_name(n) for n in labels.CLASS_NAMES)
STAGES = ("before", "after")


def metrics_schema() -> Any:
    """Explicit Parquet schema of metrics.parquet (documented in docs/infer.md)."""
    import pyarrow as pa

    cols: list[tuple[str, Any]] = [
        ("path", pa.string()),
        ("rel_path", pa.string()),
        ("label_path", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("model_id", pa.string()),
        ("run_id", pa.string()),
        ("crf", pa.bool_()),
        ("has_labels", pa.bool_()),
        ("inference_ms", pa.float64()),
        ("crf_ms", pa.float64()),
        ("mean_confidence", pa.float64()),
        ("low_confidence_fraction", pa.float64()),
        ("crf_changed_fraction", pa.float64()),
    ]
    for stage in STAGES:
        cols += [
            (f"pixel_accuracy_{stage}", pa.float64()),
            (f"mean_iou_{stage}", pa.float64()),
            (f"mean_dice_{stage}", pa.float64()),
        ]
    for stage in STAGES:
        cols += [(f"iou_{stage}_{c}", pa.float64()) for c in CLASS_COLUMNS]
        cols += [(f"dice_{stage}_{c}", pa.float64()) for c in CLASS_COLUMNS]
    for stage in STAGES:
        cols.append((f"confusion_{stage}", pa.list_(pa.int64())))
    meta = {
        "segops.classes": json.dumps(list(labels.CLASS_NAMES)),
        "segops.confusion": "row-major 19x19, rows = ground truth trainId, columns = prediction",
    }
    return pa.schema(cols, metadata=meta)


def _nullable(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _stage_metrics(gt: np.ndarray | None, pred: np.ndarray | None, stage: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    if gt is None or pred is None:
        row.update({f"pixel_accuracy_{stage}": None, f"mean_iou_{stage}": None, f"mean_dice_{stage}": None})
        row.update({f"iou_{stage}_{c}": None for c in CLASS_COLUMNS})
        row.update({f"dice_{stage}_{c}": None for c in CLASS_COLUMNS})
        row[f"confusion_{stage}"] = None
        return row
    cm = metrics.confusion_matrix(gt, pred)
    iou, dice = metrics.iou_per_class(cm), metrics.dice_per_class(cm)
    row[f"pixel_accuracy_{stage}"] = _nullable(metrics.pixel_accuracy(cm))
    row[f"mean_iou_{stage}"] = _nullable(metrics.nanmean_or_nan(iou))
    row[f"mean_dice_{stage}"] = _nullable(metrics.nanmean_or_nan(dice))
    row.update({f"iou_{stage}_{c}": _nullable(v) for c, v in zip(CLASS_COLUMNS, iou, strict=True)})
    row.update({f"dice_{stage}_{c}": _nullable(v) for c, v in zip(CLASS_COLUMNS, dice, strict=True)})
    row[f"confusion_{stage}"] = [int(v) for v in cm.ravel()]
    return row


def metrics_row(
    example: ImageExample,
    *,
    model_id: str,
    run_id: str,
    pred_before: np.ndarray,
    pred_after: np.ndarray | None,
    mean_confidence: float,
    low_confidence_fraction: float,
    inference_ms: float,
    crf_ms: float | None,
) -> dict[str, Any]:
    """One Parquet row (see :func:`metrics_schema`); per-class scores null where undefined."""
    h, w = pred_before.shape
    row: dict[str, Any] = {
        "path": example.item.path,
        "rel_path": example.item.rel,
        "label_path": example.item.label_path,
        "height": int(h),
        "width": int(w),
        "model_id": model_id,
        "run_id": run_id,
        "crf": pred_after is not None,
        "has_labels": example.gt is not None,
        "inference_ms": float(inference_ms),
        "crf_ms": None if crf_ms is None else float(crf_ms),
        "mean_confidence": float(mean_confidence),
        "low_confidence_fraction": float(low_confidence_fraction),
        "crf_changed_fraction": None if pred_after is None else float(np.mean(pred_after != pred_before)),
    }
    row.update(_stage_metrics(example.gt, pred_before, "before"))
    row.update(_stage_metrics(example.gt, pred_after, "after"))
    return row


def confidence_stats(probs: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(argmax trainIds uint8, mean top probability, fraction of pixels with top prob < 0.5)."""
    top = probs.max(axis=2)
    return probs.argmax(axis=2).astype(np.uint8), float(top.mean()), float((top < LOW_CONFIDENCE).mean())


# --------------------------------------------------------------------------------------------
# the table across runs: skip, prune, summarise


def _metrics_files(output: str) -> list[str]:
    """Committed part files of metrics.parquet (Beam's temporary directories excluded)."""
    root = _join(output, METRICS_DIR)
    return [p for p in _match(_join(root, "**")) if p.endswith(".parquet") and "/beam-temp-" not in p]


def _read_parquet(path: str, columns: list[str] | None = None) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(fs.read_bytes(path)), columns=columns)


def read_metrics(output: str, columns: list[str] | None = None) -> Any:
    """All rows of OUT/metrics.parquet (every run partition) as one pyarrow Table."""
    import pyarrow as pa

    tables = [_read_parquet(p, columns) for p in _metrics_files(output)]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        schema = metrics_schema()
        return schema.empty_table() if columns is None else pa.schema([schema.field(c) for c in columns]).empty_table()
    return pa.concat_tables(tables)


def clean_stale_temp(output: str) -> int:
    """Remove ``beam-temp-*`` directories an interrupted run left under metrics.parquet."""
    from apache_beam.io.filesystems import FileSystems

    stale = {p[: p.index("/beam-temp-") + 1] + p[p.index("/beam-temp-") + 1 :].split("/")[0]
             for p in _match(_join(output, METRICS_DIR, "**")) if "/beam-temp-" in p}  # fmt: skip
    if stale:
        FileSystems.delete(sorted(stale))
    return len(stale)


@dataclass
class Plan:
    todo: list[WorkItem]
    skipped: list[WorkItem]


def plan(items: Sequence[WorkItem], options: InferOptions, model_id: str) -> Plan:
    """Split ``items`` into those to process and those already done for this model.

    Done = all its mask files exist (one match over OUT/masks) *and* metrics.parquet holds a row
    for (path, model_id). Masks are written before rows are committed, so an image whose masks
    exist but whose row is missing was interrupted mid-run and is processed again.
    """
    if options.overwrite:
        return Plan(list(items), [])
    existing = set(_match(_join(options.output, MASKS_DIR, "**")))
    table = read_metrics(options.output, ["path", "model_id"])
    done_rows = {p for p, m in zip(table.column("path").to_pylist(), table.column("model_id").to_pylist(), strict=True) if m == model_id}
    todo, skipped = [], []
    for it in items:
        outputs = mask_paths(options.output, it, options.overlay).values()
        (skipped if it.path in done_rows and all(p in existing for p in outputs) else todo).append(it)
    return Plan(todo, skipped)


def prune_rows(output: str, model_id: str, paths: Iterable[str]) -> int:
    """Delete rows (path, model_id) for ``paths`` from earlier runs' part files; returns rows removed.

    Run before the pipeline writes its own partition: if the run then dies, those images have
    no row and the next run processes them again, so the table never holds two rows for one
    (image, model).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    targets = pa.array(sorted(set(paths)), pa.string())
    if len(targets) == 0:
        return 0
    removed = 0
    for part in _metrics_files(output):
        table = _read_parquet(part)
        drop = pc.and_(pc.equal(table.column("model_id"), model_id), pc.is_in(table.column("path"), value_set=targets))
        n = pc.sum(drop).as_py() or 0
        if not n:
            continue
        kept = table.filter(pc.invert(drop))
        removed += n
        if kept.num_rows == 0:
            FileSystems.delete([part])
            partition = FileSystems.split(part)[0]
            if not _match(_join(partition, "**")):  # drop the emptied run=... directory too
                with contextlib.suppress(Exception):
                    FileSystems.delete([partition])
            continue
        buf = io.BytesIO()
        pq.write_table(kept, buf)
        fs.write_bytes_atomic(part, buf.getvalue())
    return removed


def _class_dict(values: np.ndarray) -> dict[str, float | None]:
    return {name: _nullable(float(v)) for name, v in zip(labels.CLASS_NAMES, values, strict=True)}


def summarize(output: str, model_id: str) -> dict[str, Any]:
    """Dataset summary for ``model_id`` recomputed from metrics.parquet alone.

    ``dataset_*``: from the confusion matrix summed over labelled images (the Cityscapes
    definition; equals cityscapesScripts' evalPixelLevelSemanticLabeling on the labelId masks).
    ``mean_of_per_image_*``: the average of the per-image scores, a different number.
    """
    import pyarrow.compute as pc

    table = read_metrics(output)
    rows = table.filter(pc.equal(table.column("model_id"), model_id)) if table.num_rows else table
    n = rows.num_rows
    summary: dict[str, Any] = {
        "model_id": model_id,
        "images": n,
        "labelled_images": 0,
        "definitions": {
            "dataset_iou": "per class TP/(TP+FP+FN) from the confusion matrix summed over all labelled "
            "images, ground-truth ignore excluded (Cityscapes); dataset_miou is its mean over classes "
            "with a score",
            "mean_of_per_image_miou": "mean over labelled images of each image's mIoU (a different number)",
        },
        "before_crf": None,
        "after_crf": None,
    }
    if n == 0:
        return summary
    has_labels = np.asarray(rows.column("has_labels").to_pylist(), dtype=bool)
    crf = np.asarray(rows.column("crf").to_pylist(), dtype=bool)
    summary["labelled_images"] = int(has_labels.sum())
    summary["crf_images"] = int(crf.sum())
    conf = np.asarray(rows.column("mean_confidence").to_pylist(), dtype=np.float64)
    summary["mean_confidence"] = float(conf.mean())
    for stage, key in (("before", "before_crf"), ("after", "after_crf")):
        sel = has_labels & (crf if stage == "after" else True)
        if not sel.any():
            continue
        cms = rows.column(f"confusion_{stage}").to_pylist()
        total = np.zeros((labels.NUM_CLASSES, labels.NUM_CLASSES), np.int64)
        for cm, use in zip(cms, sel, strict=True):
            if use and cm is not None:
                total += np.asarray(cm, np.int64).reshape(labels.NUM_CLASSES, labels.NUM_CLASSES)
        per_image = np.asarray([v if v is not None else np.nan for v in rows.column(f"mean_iou_{stage}").to_pylist()])
        per_image = per_image[sel]
        iou, dice = metrics.iou_per_class(total), metrics.dice_per_class(total)
        summary[key] = {
            "images": int(sel.sum()),
            "dataset_miou": _nullable(metrics.nanmean_or_nan(iou)),
            "dataset_mdice": _nullable(metrics.nanmean_or_nan(dice)),
            "dataset_pixel_accuracy": _nullable(metrics.pixel_accuracy(total)),
            "dataset_iou": _class_dict(iou),
            "dataset_dice": _class_dict(dice),
            "mean_of_per_image_miou": _nullable(metrics.nanmean_or_nan(per_image)),
            "confusion_matrix": total.tolist(),
        }
    return summary


def write_json_atomic(path: str, data: Any) -> None:
    fs.write_json_atomic(path, data)
