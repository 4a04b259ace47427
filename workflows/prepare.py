"""`segops prepare`: the raw Cityscapes layout -> sharded TFRecords, statistics and class weights.

Reads top to bottom::

    CleanOutput        remove manifest.json and earlier shards (before any input is read)
    pairs (listed with FileSystems.match at construction; problems -> dead letter)
      | Analyze        per image: validate the image PNG from its structure only (never decoded),
      |                decode the label, labelId -> trainId LUT, class pixel counts, encode the
      |                trainId PNG, U-Net border term (sparse; needs no class weights) -> Prepared;
      |                bad input -> dead letter
      | ClassStats     CombineFn over the labelled splits -> stats (singleton)
      | ClassWeights   stats of the weights split -> all three schemes (singleton)
      | Route          per split; with weight maps, attach the class weights (side input, same run)
      | WriteToTFRecord(coder=ExampleCoder)   OUT/<split>/<split>-SSSSS-of-NNNNN.tfrecord
      | Finalize       stats.json, class_weights.json, dead_letter.jsonl, then manifest.json
                       (last: a manifest means a complete run)

Why the Example is built by the sink's coder. WriteToTFRecord with a fixed shard count groups its
input by shard (a shuffle). Shuffling finished records moves every image's bytes through the
runner: on the DirectRunner in multi_processing mode the runner process spent as much CPU per
1024x2048 record as the worker did, which capped 2 workers at ~1x of 1, and the in-memory
shuffle held the whole output in RAM. So the shuffle carries only the small parts (trainId PNG,
sparse border term, class weights, metadata: ~1-10% of a record) and :class:`ExampleCoder` --
the sink's ``coder``, applied to each element as it is written -- reads the image bytes (checked
against the length and a digest taken in Analyze), adds the weight map and calls
``segops.core.records.encode_example``. Each image file is therefore read twice (validate, then copy).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np

from segops import __version__
from segops.core.imageio import DEFAULT_MAX_PIXELS, BadInput, PngHeader, camera_png_header, check_png_chunks
from segops.core.labels import CLASS_NAMES, IGNORE_ID, NUM_CLASSES
from segops.datasets.cityscapes import DEFAULT_UNLABELED_SPLITS, Listing, Pair, discover
from segops.weights import BORDER_TOLERANCE, DEFAULT_SCHEME, SCHEMES, BorderTerm

log = logging.getLogger(__name__)

DEAD = "dead_letter"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SHARD_SUFFIX = ".tfrecord"
#: Automatic sharding aims at about this many input image bytes per shard (TFRecord guidance:
#: shards of 100-200 MB read well in parallel and are few enough to list quickly).
SHARD_TARGET_BYTES = 128 * 1024 * 1024
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --- options -----------------------------------------------------------------------------------


class OptionsError(ValueError):
    """Options that cannot work (alone or against the listing); the CLI shows it as a usage error."""


@dataclass(frozen=True)
class PrepareOptions:
    """Everything `segops prepare` does, validated once here (OptionsError with a readable message)."""

    input: str
    output: str
    splits: tuple[str, ...] = ()  # empty: every usable split found
    unlabeled_splits: tuple[str, ...] = DEFAULT_UNLABELED_SPLITS
    shards: int | None = None  # per split; None: one per SHARD_TARGET_BYTES of input images
    weight_maps: bool = True
    weight_scheme: str = DEFAULT_SCHEME
    weights_split: str | None = None  # None: train if prepared, else the first labelled split
    w0: float = 10.0
    sigma: float = 5.0
    sigma_reference_height: int | None = None  # scale sigma by height / this; None: pixels as given
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if not self.input:
            raise OptionsError("input directory is required")
        if not self.output:
            raise OptionsError("output directory is required")
        for name in (*self.splits, *self.unlabeled_splits):
            if not _SPLIT_NAME.match(name):
                raise OptionsError(f"invalid split name {name!r}")
        if self.shards is not None and not 1 <= self.shards <= 99999:
            raise OptionsError(f"--shards must be between 1 and 99999, got {self.shards}")
        if self.weight_scheme not in SCHEMES:
            raise OptionsError(f"--weight-scheme must be one of {', '.join(SCHEMES)}, got {self.weight_scheme!r}")
        if self.weights_split is not None and self.weights_split in self.unlabeled_splits:
            raise OptionsError(f"--weights-split {self.weights_split} is an unlabeled split")
        if not (math.isfinite(self.w0) and self.w0 >= 0):
            raise OptionsError(f"--w0 must be a finite number >= 0, got {self.w0}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise OptionsError(f"--sigma must be > 0, got {self.sigma}")
        if self.sigma_reference_height is not None and self.sigma_reference_height <= 0:
            raise OptionsError("--sigma-reference-height must be > 0")
        if self.max_pixels <= 0:
            raise OptionsError("--max-pixels must be > 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["splits"], d["unlabeled_splits"] = list(self.splits), list(self.unlabeled_splits)
        return d


def auto_shards(n_images: int, image_bytes: int) -> int:
    return max(1, min(n_images, math.ceil(image_bytes / SHARD_TARGET_BYTES)))


def resolve_weights_split(options: PrepareOptions, listing: Listing) -> str | None:
    labelled = [s for s in listing.splits if s not in listing.unlabeled_splits]
    if options.weights_split is not None:
        if options.weights_split not in labelled:
            raise OptionsError(
                f"--weights-split {options.weights_split} is not among the labelled splits being "
                f"prepared ({', '.join(labelled) or 'none'})"
            )
        return options.weights_split
    if "train" in labelled:
        return "train"
    return labelled[0] if labelled else None


# --- per-image stage ---------------------------------------------------------------------------


class Prepared(NamedTuple):
    """One analysed image, between Analyze and Encode."""

    split: str
    source: str
    city: str
    frame_id: str
    image_path: str
    image_len: int
    image_digest: int  # identity_digest of the bytes validated here; the writer compares it
    height: int
    width: int
    label_png: bytes  # trainIds PNG
    labelled: bool
    pixel_counts: np.ndarray | None  # int64[NUM_CLASSES]; None for unlabeled splits
    border: BorderTerm | None


def dead_letter(path: str, stage: str, reason: str, split: str) -> dict[str, str]:
    return {"path": path, "stage": stage, "reason": reason, "split": split}


def identity_digest(data: bytes) -> int:
    """CRC-32C of the whole file, to notice that it changed between the validating read and the
    copying read. google-crc32c (already required by Beam's TFRecord sink) runs in hardware at
    ~20 GB/s, ~0.2 ms per 3.5 MB frame, so every byte is covered; not a validation
    (segops.core.imageio.check_png_chunks is)."""
    import google_crc32c

    return google_crc32c.value(data)


@functools.cache  # process-wide setting: apply once per process, then a dict lookup
def keep_large_buffers_on_heap(limit: int = 32 << 20) -> bool:
    """Make glibc serve allocations up to ``limit`` bytes from the heap and keep freed memory.

    Every record handles a few multi-megabyte buffers (the image bytes, the protobuf copy, the
    serialized Example). By default glibc maps each such buffer with a fresh ``mmap`` and unmaps
    it on free, so every page is faulted in and zeroed again per record; in the benchmark VM that
    cost ~7 ms per 3.5 MB copy, more than the label work itself, and it varied with the process's
    allocation history (glibc's threshold moves dynamically). A fixed threshold (32 MB, glibc's
    maximum) and a high trim threshold make these buffers reuse heap pages. Process-wide, once per
    worker; a no-op (False) where the C library has no ``mallopt`` (musl, macOS).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, limit) and libc.mallopt(m_trim_threshold, 4 * limit))
    except (OSError, AttributeError):
        return False


class AnalyzeFn(beam.DoFn):
    """Pair -> Prepared (main output) or a dead-letter dict (tagged DEAD)."""

    def __init__(self, options: PrepareOptions) -> None:
        self.options = options

    def setup(self) -> None:
        keep_large_buffers_on_heap()
        self._blank_labels: dict[tuple[int, int], bytes] = {}

    def process(self, pair: Pair):
        stage = ["read"]  # where a BadInput came from, for the dead letter
        try:
            yield self._analyze(pair, stage)
        except BadInput as exc:
            yield beam.pvalue.TaggedOutput(DEAD, dead_letter(exc.path or pair.source, stage[0], exc.reason, pair.split))

    def _analyze(self, pair: Pair, stage: list[str]) -> Prepared:
        image = _read(pair.image, pair.source)
        stage[0] = "image"
        hdr = camera_png_header(image, self.options.max_pixels)  # no decode: header, then
        check_png_chunks(image, "image PNG")  # every chunk's CRC
        common = dict(
            split=pair.split,
            source=pair.source,
            city=pair.city,
            frame_id=pair.frame_id,
            image_path=pair.image,
            image_len=len(image),
            image_digest=identity_digest(image),
            height=hdr.height,
            width=hdr.width,
        )
        if not pair.labelled:
            blank = self._blank(hdr.height, hdr.width)
            return Prepared(label_png=blank, labelled=False, pixel_counts=None, border=None, **common)
        stage[0] = "label"
        label_png, label, counts = self._labelled(pair, hdr)
        stage[0] = "instances"
        border = self._border(pair, label, hdr) if self.options.weight_maps else None
        return Prepared(label_png=label_png, labelled=True, pixel_counts=counts, border=border, **common)

    def _blank(self, height: int, width: int) -> bytes:
        from segops.core.imageio import encode_mask_png

        key = (height, width)
        if key not in self._blank_labels:
            self._blank_labels[key] = encode_mask_png(np.full(key, IGNORE_ID, dtype=np.uint8))
        return self._blank_labels[key]

    def _labelled(self, pair: Pair, hdr: PngHeader) -> tuple[bytes, np.ndarray, np.ndarray]:
        """(trainId PNG, labelIds array, trainId pixel counts)."""
        from segops.core.imageio import decode_label_png, encode_mask_png

        rel_label = _relative(pair.label, pair)
        data = _read(pair.label, rel_label)
        try:
            label = decode_label_png(data, self.options.max_pixels)
        except BadInput as exc:
            raise BadInput(exc.reason, rel_label) from exc
        if label.shape != (hdr.height, hdr.width):
            raise BadInput(
                f"size mismatch: image is {hdr.width}x{hdr.height}, label is {label.shape[1]}x{label.shape[0]}",
                rel_label,
            )
        train_ids, counts = map_and_count(label, rel_label)
        return encode_mask_png(train_ids), label, counts

    def _border(self, pair: Pair, label: np.ndarray, hdr: PngHeader) -> BorderTerm:
        from segops.core.imageio import decode_instance_png
        from segops.weights import effective_sigma, instances_from_ids, instances_from_label, unet_border_term

        if pair.instance is not None:
            rel = _relative(pair.instance, pair)
            data = _read(pair.instance, rel)
            try:
                ids = decode_instance_png(data, self.options.max_pixels)
            except BadInput as exc:
                raise BadInput(exc.reason, rel) from exc
            if ids.shape != label.shape:
                raise BadInput(f"size mismatch: instanceIds is {ids.shape[1]}x{ids.shape[0]}, label is "
                               f"{label.shape[1]}x{label.shape[0]}", rel)  # fmt: skip
            instances = instances_from_ids(ids)
        else:
            instances = instances_from_label(label)
        sigma = effective_sigma(self.options.sigma, hdr.height, self.options.sigma_reference_height)
        return unet_border_term(instances, self.options.w0, sigma)


def _read(path: str, rel: str) -> bytes:
    """File bytes; an unreadable file (permissions, vanished, network) is bad input, not a crash."""
    from segops.core.fs import read_bytes

    try:
        return read_bytes(path)
    except OSError as exc:
        raise BadInput(f"cannot read: {exc}", rel) from exc


def _relative(path: str, pair: Pair) -> str:
    """``path`` relative to the input root, using the image's known relative path as the anchor."""
    root = pair.image[: len(pair.image) - len(pair.source)]
    return path[len(root) :] if root and path.startswith(root) else path


def map_and_count(label_ids: np.ndarray, path: str = "") -> tuple[np.ndarray, np.ndarray]:
    """labelIds -> (trainIds uint8, pixel counts per trainId int64[NUM_CLASSES]).

    One 256-bin histogram of the labelIds gives both the unknown-id check and the class counts
    (summed through the LUT), so the image is scanned twice in total: histogram and LUT.
    """
    import cv2

    from segops.core.labels import LABEL_ID_TO_TRAIN_ID, VALID_LABEL_ID, unknown_label_ids

    if label_ids.size < (1 << 24):  # float32 bins are exact below 2^24
        hist = cv2.calcHist([label_ids], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        hist = np.bincount(label_ids.ravel(), minlength=256)
    if hist[~VALID_LABEL_ID].any():
        bad = unknown_label_ids(label_ids)
        raise BadInput(f"unknown label ids {bad}: not in the Cityscapes label table", path)
    counts = np.bincount(LABEL_ID_TO_TRAIN_ID, weights=hist, minlength=256)[:NUM_CLASSES]
    return cv2.LUT(label_ids, LABEL_ID_TO_TRAIN_ID), counts.astype(np.int64)


# --- statistics and class weights ------------------------------------------------------------


class ClassStatsFn(beam.CombineFn):
    """Prepared -> per split: images, total/ignore pixels, and per class the pixel count, the
    number of images containing it, and the total pixels of those images (for median frequency).
    Unlabeled splits only count images. Integer sums: exact and order-independent."""

    def __init__(self, splits: list[str], unlabeled: list[str]) -> None:
        self.splits, self.unlabeled = list(splits), list(unlabeled)

    def create_accumulator(self) -> dict[str, dict[str, Any]]:
        return {}

    @staticmethod
    def _empty() -> dict[str, Any]:
        z = np.zeros(NUM_CLASSES, dtype=np.int64)
        return {"images": 0, "total": 0, "counts": z, "image_counts": z.copy(), "image_pixels": z.copy()}

    def add_input(self, acc: dict[str, dict[str, Any]], item: Prepared) -> dict[str, dict[str, Any]]:
        s = acc.setdefault(item.split, self._empty())
        s["images"] += 1
        if item.pixel_counts is not None:
            total = item.height * item.width
            present = item.pixel_counts > 0
            s["total"] += total
            s["counts"] = s["counts"] + item.pixel_counts
            s["image_counts"] = s["image_counts"] + present
            s["image_pixels"] = s["image_pixels"] + present * total
        return acc

    def merge_accumulators(self, accumulators) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for acc in accumulators:
            for split, s in acc.items():
                o = out.setdefault(split, self._empty())
                o["images"] += s["images"]
                o["total"] += s["total"]
                for key in ("counts", "image_counts", "image_pixels"):
                    o[key] = o[key] + s[key]
        return out

    def extract_output(self, acc: dict[str, dict[str, Any]]) -> dict[str, Any]:
        splits, unlabeled = {}, {}
        for split in self.splits:
            s = acc.get(split, self._empty())
            if split in self.unlabeled:
                unlabeled[split] = {"images": int(s["images"])}
                continue
            labelled = int(s["counts"].sum())
            splits[split] = {
                "images": int(s["images"]),
                "total_pixels": int(s["total"]),
                "ignore_pixels": int(s["total"]) - labelled,
                "labelled_pixels": labelled,
                "pixel_counts": [int(v) for v in s["counts"]],
                "image_counts": [int(v) for v in s["image_counts"]],
                "image_pixels": [int(v) for v in s["image_pixels"]],
            }
        return {"class_names": list(CLASS_NAMES), "splits": splits, "unlabeled_splits": unlabeled}


def make_class_weights(stats: dict[str, Any], source_split: str | None, scheme: str) -> dict[str, Any]:
    from segops.weights import ABSENT_CLASS_WEIGHT, ENET_C, class_weights

    s = stats["splits"].get(source_split) if source_split else None
    counts = np.asarray(s["pixel_counts"] if s else [0] * NUM_CLASSES, dtype=np.int64)
    image_pixels = np.asarray(s["image_pixels"] if s else [0] * NUM_CLASSES, dtype=np.int64)
    return {
        "source_split": source_split,
        "default_scheme": scheme,
        "schemes": class_weights(counts, image_pixels),
        "class_names": list(CLASS_NAMES),
        "present": [bool(c > 0) for c in counts],
        "absent_class_weight": ABSENT_CLASS_WEIGHT,
        "definitions": {
            "median_frequency": "median(freq)/freq(c), freq(c) = pixels(c) / total pixels of the images containing c",
            "enet": f"1/ln({ENET_C} + p(c)), p(c) = pixels(c) / labelled pixels",
            "inverse_frequency": "(1/p(c)) / mean over present classes of 1/p, p(c) = pixels(c) / labelled pixels",
        },
    }


# --- encoding ----------------------------------------------------------------------------------


def split_tag(split: str) -> str:
    return f"split:{split}"


class RouteFn(beam.DoFn):
    """Prepared -> (Prepared, class weights of the chosen scheme or None), tagged with its split."""

    def __init__(self, options: PrepareOptions) -> None:
        self.options = options

    def process(self, item: Prepared, class_weights: dict[str, Any] | None = None):
        weights = None
        if class_weights is not None and item.labelled:
            weights = tuple(class_weights["schemes"][self.options.weight_scheme])
        yield beam.pvalue.TaggedOutput(split_tag(item.split), (item, weights))


class ExampleCoder(beam.coders.Coder):
    """WriteToTFRecord's coder: (Prepared, class weights) -> serialized ``tf.train.Example``.

    Runs where the shard is written, after the shuffle (see the module docstring): re-reads the
    image bytes, checks them against Analyze's length and digest, builds the weight map and calls
    ``encode_example``. An image that changed or vanished mid-run fails the run (rerun it): the
    record would no longer match what was validated and counted.
    """

    def __init__(self) -> None:
        self._lut_key: tuple[float, ...] | None = None
        self._lut: np.ndarray | None = None

    def encode(self, value: tuple[Prepared, tuple[float, ...] | None]) -> bytes:
        from segops.core.fs import read_bytes
        from segops.core.imageio import decode_label_png
        from segops.core.records import ExampleFields, encode_example
        from segops.weights import class_weight_lut, weight_map

        keep_large_buffers_on_heap()  # a coder has no setup(); the writer may be another process
        item, class_weights = value
        image = read_bytes(item.image_path)
        if len(image) != item.image_len or identity_digest(image) != item.image_digest:
            raise RuntimeError(f"{item.image_path} changed while the pipeline ran; run prepare again")
        weights = None
        if class_weights is not None:
            if class_weights != self._lut_key:
                self._lut_key, self._lut = class_weights, class_weight_lut(class_weights)
            train_ids = decode_label_png(item.label_png, item.height * item.width)
            weights = weight_map(train_ids, self._lut, item.border)
        fields = ExampleFields(
            image_png=image,
            label_png=item.label_png,
            height=item.height,
            width=item.width,
            source=item.source,
            city=item.city,
            frame_id=item.frame_id,
            split=item.split,
            weight_map=weights,
        )
        return encode_example(fields)

    def decode(self, encoded: bytes):
        raise NotImplementedError("ExampleCoder only writes; read records with segops.core.records")

    def is_deterministic(self) -> bool:
        return True


# --- outputs -----------------------------------------------------------------------------------


def reason_kind(reason: str) -> str:
    """A reason without its specifics (numbers, paths), to count dead letters by kind."""
    head = reason.split(":")[0].split(" (")[0]
    return re.sub(r"\d+", "N", head).strip()


def _write_json(path: str, obj: Any) -> None:
    from segops.core.fs import write_json_atomic

    write_json_atomic(path, obj, indent=1)


def shard_paths(output: str, split: str, num_shards: int) -> list[str]:
    """The files WriteToTFRecord writes for ``split`` (OUT/<split>/<split>-SSSSS-of-NNNNN.tfrecord)."""
    from apache_beam.io.filesystems import FileSystems

    return [FileSystems.join(output, split, f"{split}-{i:05d}-of-{num_shards:05d}{SHARD_SUFFIX}")
            for i in range(num_shards)]  # fmt: skip


def clean_output(_, output: str) -> list[str]:
    """Runs before any input is read: remove manifest.json (the directory counts as incomplete
    until this run writes a new one) and the shards of earlier runs (any shard count).

    Why not let the sink overwrite: Beam's FileBasedSink skips renaming a shard when a file of the
    same name and *size* exists (size is the local "checksum"), and then leaves it out of the
    names it reports; removing old shards first makes every shard this run's own.
    """
    from apache_beam.io.filesystems import FileSystems

    manifest = FileSystems.join(output, "manifest.json")
    if FileSystems.exists(manifest):
        FileSystems.delete([manifest])
    digits = "[0-9]" * 5
    (result,) = FileSystems.match([FileSystems.join(output, "*", f"*-{digits}-of-{digits}{SHARD_SUFFIX}")])
    old = []
    for m in result.metadata_list:
        parent, name = FileSystems.split(m.path)
        if name.startswith(FileSystems.split(parent)[1] + "-"):  # OUT/<split>/<split>-...
            old.append(m.path)
    if old:
        FileSystems.delete(old)
    return sorted(old)


@dataclass(frozen=True)
class RunInfo:
    """What Finalize needs from construction time (picklable)."""

    options: PrepareOptions
    root: str
    splits: list[str]
    unlabeled: list[str]
    shards: dict[str, int]
    weights_split: str | None
    fingerprint: str
    files: int
    pairs: int
    skipped: dict[str, str]


def finalize(_, info: RunInfo, stats, class_weights, dead, written, records, removed):
    """Write stats.json, class_weights.json, dead_letter.jsonl, then manifest.json.

    ``written`` (the sinks' outputs) only orders this step after every shard is final.
    """
    from apache_beam.io.filesystems import FileSystems

    from segops.core.fs import write_bytes_atomic
    from segops.core.records import SCHEMA_VERSION
    from segops.weights import effective_sigma

    out = info.options.output
    dead = sorted(dead, key=lambda d: (d["path"], d["stage"], d["reason"]))
    _write_json(FileSystems.join(out, "stats.json"), stats)
    _write_json(FileSystems.join(out, "class_weights.json"), class_weights)
    write_bytes_atomic(FileSystems.join(out, "dead_letter.jsonl"),
                       "".join(json.dumps(d, sort_keys=True) + "\n" for d in dead).encode())  # fmt: skip
    del written
    expected = {s: shard_paths(out, s, info.shards[s]) for s in info.splits}
    missing = [path for paths in expected.values() for path in paths if not FileSystems.exists(path)]
    if missing:
        raise RuntimeError(f"shards missing after the write: {missing}")
    current = {path for paths in expected.values() for path in paths}
    prefix = out.rstrip("/") + "/"

    def rel(path: str) -> str:
        return path[len(prefix) :] if path.startswith(prefix) else path
    records = dict(records)
    o = info.options
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "segops_version": __version__,
        "stage": "prepare",
        "input": info.root,
        "output": out,
        "options": o.to_dict(),
        "pairs": info.pairs,
        "splits": {
            s: {
                "labeled": s not in info.unlabeled,
                "records": int(records.get(s, 0)),
                "dead_lettered": sum(1 for d in dead if d["split"] == s),
                "num_shards": info.shards[s],
                "shards": [rel(path) for path in expected[s]],
            }  # fmt: skip
            for s in info.splits
        },
        "skipped_splits": info.skipped,
        "dead_letter": {
            "total": len(dead),
            "by_reason": dict(sorted(Counter(reason_kind(d["reason"]) for d in dead).items())),
            "by_stage": dict(sorted(Counter(d["stage"] for d in dead).items())),
        },
        "class_weights": {"source_split": info.weights_split, "scheme": o.weight_scheme},
        "weight_maps": {
            "enabled": o.weight_maps,
            "scheme": o.weight_scheme if o.weight_maps else None,
            "w0": o.w0,
            "sigma": o.sigma,
            "sigma_reference_height": o.sigma_reference_height,
            "sigma_rule": "sigma px" if not o.sigma_reference_height
            else f"sigma * height / {o.sigma_reference_height} px (e.g. "
                 f"{effective_sigma(o.sigma, 1024, o.sigma_reference_height):g} px at height 1024)",
            "border_tolerance": BORDER_TOLERANCE,
            "ignore_weight": 0.0,
            "instances": "gtFine instanceIds (ids >= 1000) when present, else 8-connected components "
                         "of thing classes in the labelIds",
            "encoding": "zlib(float16 little-endian, H*W); empty for unlabeled splits and --no-weight-maps",
        },  # fmt: skip
        "label_encoding": "8-bit PNG of trainIds (0..18, 255 = ignore)",
        "removed_stale_shards": [rel(path) for path in removed if path not in current],
        "fingerprint": {"sha256": info.fingerprint, "files": info.files,
                        "of": "sorted '<path relative to input>\\t<size>' lines of the listed inputs"},  # fmt: skip
    }
    _write_json(FileSystems.join(out, "manifest.json"), manifest)
    yield manifest


# --- the pipeline ------------------------------------------------------------------------------


class PrepareOutputs(NamedTuple):
    listing: Listing
    records: dict[str, beam.PCollection]  # split -> (Prepared, class weights): what each shard writer encodes
    stats: beam.PCollection  # singleton dict
    class_weights: beam.PCollection  # singleton dict
    dead_letters: beam.PCollection  # dicts {"path","stage","reason","split"}
    manifest: beam.PCollection  # singleton dict, written last


def build_prepare_pipeline(p: beam.Pipeline, options: PrepareOptions, listing: Listing | None = None) -> PrepareOutputs:
    """Add the prepare transforms to ``p``. Lists the input now (DiscoveryError if unusable)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.io.tfrecordio import WriteToTFRecord
    from apache_beam.pvalue import AsDict, AsList, AsSingleton

    if listing is None:
        listing = discover(options.input, options.splits or None, options.unlabeled_splits)
    weights_split = resolve_weights_split(options, listing)
    splits, unlabeled = listing.splits, listing.unlabeled_splits
    shards = {s: options.shards or auto_shards(len(listing.pairs_in(s)), listing.bytes_in(s)) for s in splits}

    removed = p | "Start" >> beam.Create([None]) | "CleanOutput" >> beam.Map(clean_output, options.output)
    pairs = (
        p
        | "ListedPairs" >> beam.Create(listing.pairs)
        | "AfterCleanOutput" >> beam.Map(lambda pair, _: pair, AsSingleton(removed))
    )
    listed_problems = p | "ListingProblems" >> beam.Create([pr.to_dict() for pr in listing.problems])
    analyzed = pairs | "Analyze" >> beam.ParDo(AnalyzeFn(options)).with_outputs(DEAD, main="prepared")
    prepared = analyzed.prepared

    stats = prepared | "ClassStats" >> beam.CombineGlobally(ClassStatsFn(splits, unlabeled))
    class_weights = stats | "ClassWeights" >> beam.Map(make_class_weights, weights_split, options.weight_scheme)

    route = beam.ParDo(RouteFn(options), AsSingleton(class_weights)) if options.weight_maps \
        else beam.ParDo(RouteFn(options))  # fmt: skip
    routed = prepared | "Route" >> route.with_outputs(*[split_tag(s) for s in splits])

    records, written, counts = {}, [], []
    for s in splits:
        records[s] = routed[split_tag(s)]
        written.append(
            records[s]
            | f"Write[{s}]" >> WriteToTFRecord(FileSystems.join(options.output, s, s), coder=ExampleCoder(),
                                               file_name_suffix=SHARD_SUFFIX, num_shards=shards[s],
                                               shard_name_template=SHARD_TEMPLATE)
        )  # fmt: skip
        counts.append(records[s] | f"Count[{s}]" >> beam.combiners.Count.Globally()
                      | f"Key[{s}]" >> beam.Map(lambda n, s=s: (s, n)))  # fmt: skip

    dead = (listed_problems, analyzed[DEAD]) | "DeadLetters" >> beam.Flatten()
    written_paths = written | "Shards" >> beam.Flatten()
    record_counts = counts | "RecordCounts" >> beam.Flatten()
    info = RunInfo(options, listing.root, splits, unlabeled, shards, weights_split, listing.fingerprint,
                   listing.files, len(listing.pairs), listing.skipped)  # fmt: skip
    manifest = (
        p
        | "Once" >> beam.Create([None])
        | "Finalize" >> beam.FlatMap(finalize, info, AsSingleton(stats), AsSingleton(class_weights), AsList(dead),
                                     AsList(written_paths), AsDict(record_counts), AsSingleton(removed))  # fmt: skip
    )
    return PrepareOutputs(listing, records, stats, class_weights, dead, manifest)


def run_prepare(options: PrepareOptions, beam_args: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Build and run the pipeline; return the manifest as written (read back from OUT)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from segops.core.fs import read_bytes

    listing = discover(options.input, options.splits or None, options.unlabeled_splits)
    resolve_weights_split(options, listing)  # fail before starting any worker
    pipeline_options = PipelineOptions(list(beam_args))
    with beam.Pipeline(options=pipeline_options) as p:
        build_prepare_pipeline(p, options, listing)
    return json.loads(read_bytes(FileSystems.join(options.output, "manifest.json")))


# --- the human summary -----------------------------------------------------------------------


def summarize(manifest: dict[str, Any], stats: dict[str, Any], class_weights: dict[str, Any]) -> str:
    lines = [f"read {manifest['pairs']} image(s) with their labels from {manifest['input']}, "
             f"wrote {manifest['output']}"]
    for split, s in manifest["splits"].items():
        kind = "" if s["labeled"] else ", image-only (no usable labels)"
        lines.append(f"  {split:<8} {s['records']:>7} record(s) in {s['num_shards']} shard(s), "
                     f"{s['dead_lettered']} dead-lettered{kind}")  # fmt: skip
    for split, why in manifest.get("skipped_splits", {}).items():
        lines.append(f"  {split:<8} skipped: {why}")
    dl = manifest["dead_letter"]
    lines.append(f"dead-lettered: {dl['total']} (see dead_letter.jsonl)")
    for reason, n in sorted(dl["by_reason"].items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {n:>6}  {reason}")
    source = class_weights.get("source_split")
    scheme = class_weights["default_scheme"]
    s = stats["splits"].get(source) if source else None
    if s and s["total_pixels"]:
        lines.append(f"class distribution ({source}: {s['images']} images, {s['labelled_pixels']} labelled pixels, "
                     f"{100.0 * s['ignore_pixels'] / s['total_pixels']:.1f}% ignore)")  # fmt: skip
        lines.append(f"  {'class':<14} {'share':>7} {'images':>7} {'weight':>9}  ({scheme})")
        labelled = max(s["labelled_pixels"], 1)
        for i, name in enumerate(stats["class_names"]):
            share = 100.0 * s["pixel_counts"][i] / labelled
            w = class_weights["schemes"][scheme][i]
            lines.append(f"  {name:<14} {share:>6.2f}% {s['image_counts'][i]:>7} {w:>9.4f}")
    else:
        lines.append("class distribution: no labelled pixels (no labelled split prepared)")
    return "\n".join(lines)
