"""Every file and directory name segops reads or writes, in one place: the Cityscapes input
layout (directories and suffixes), each stage's output names, TFRecord shard naming and mask
naming. Code builds paths from these names, never from literals."""

from __future__ import annotations

# --- the Cityscapes layout (input of prepare and infer, output of synth and review import) ----
IMAGE_DIR = "leftImg8bit"
LABEL_DIR = "gtFine"
IMAGE_STEM_SUFFIX = "_leftImg8bit"  # <city>_<seq>_<frame>_leftImg8bit.png
IMAGE_SUFFIX = IMAGE_STEM_SUFFIX + ".png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
COLOR_SUFFIX = "_gtFine_color.png"
POLYGONS_SUFFIX = "_gtFine_polygons.json"
LABEL_FILES_GLOB = "*_gtFine_*Ids.png"  # labelIds and instanceIds
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# --- annotation kinds: gtFine/ (fine polygons) and gtCoarse/ (coarse polygons, more void) ------
FINE, COARSE = "fine", "coarse"
ANNOTATION_KINDS = (FINE, COARSE)
LABEL_DIRS = {FINE: LABEL_DIR, COARSE: "gtCoarse"}
COARSE_LABEL_DIR = LABEL_DIRS[COARSE]
COARSE_LABEL_SUFFIX = "_gtCoarse_labelIds.png"
COARSE_INSTANCE_SUFFIX = "_gtCoarse_instanceIds.png"
COARSE_COLOR_SUFFIX = "_gtCoarse_color.png"
COARSE_POLYGONS_SUFFIX = "_gtCoarse_polygons.json"
LABEL_SUFFIXES = {FINE: LABEL_SUFFIX, COARSE: COARSE_LABEL_SUFFIX}
TRAIN_EXTRA_SPLIT = "train_extra"  # Cityscapes' 19,998 coarse-only training frames

# --- files every stage writes ------------------------------------------------------------------
MANIFEST_FILE = "manifest.json"  # what produced a directory; written last
DEAD_LETTER_FILE = "dead_letter.jsonl"
# temporaries: only a killed (or failed) writer leaves them; the next run of the stage removes them
ATOMIC_TMP_INFIX = ".tmp-"  # segops.core.fs.write_bytes_atomic: <path>.tmp-<hex>, renamed into place
BEAM_TEMP_PREFIX = "beam-temp-"  # Beam's file sinks: <dir>/beam-temp-<prefix>-<hex>/, renamed out at the end

# --- segops synth ------------------------------------------------------------------------------
SYNTH_MANIFEST_FILE = "segops_synth.json"

# --- segops prepare ----------------------------------------------------------------------------
STATS_FILE = "stats.json"
CLASS_WEIGHTS_FILE = "class_weights.json"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"  # Beam's shard_name_template
SHARD_SUFFIX = ".tfrecord"
SHARD_DIGITS_GLOB = "[0-9]" * 5


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``<split>-SSSSS-of-NNNNN.tfrecord``, as Beam's WriteToTFRecord names shard ``index``."""
    return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def shard_glob(split: str = "*") -> str:
    """Pattern of every shard of ``split`` (any shard count), relative to its split directory."""
    return f"{split}-{SHARD_DIGITS_GLOB}-of-{SHARD_DIGITS_GLOB}{SHARD_SUFFIX}"


# A prepared *part* is the directory under OUT holding one split's records of one annotation
# kind: ``<split>`` for fine labels (and image-only splits), ``coarse/<split>`` for gtCoarse ones.
COARSE_PARTS_DIR = "coarse"


def part_name(split: str, annotation: str = FINE) -> str:
    """``<split>`` (fine, image-only) or ``coarse/<split>``: the part's directory under OUT."""
    return f"{COARSE_PARTS_DIR}/{split}" if annotation == COARSE else split


def part_annotation(part: str) -> str:
    """The annotation kind of a part's labels (an image-only part reads as fine)."""
    return COARSE if part.startswith(COARSE_PARTS_DIR + "/") else FINE


def part_split(part: str) -> str:
    """The split of a part (its last path segment): what its shard files are named after."""
    return part.rsplit("/", 1)[-1]


# --- segops train ------------------------------------------------------------------------------
MODEL_JSON = "model.json"  # in a train OUT and in each export directory
KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
BEST_EXPORT = "best"
FINAL_EXPORT = "final"
CHECKPOINT_DIR = "checkpoints"
TRAIN_STATE_FILE = "state.json"  # inside CHECKPOINT_DIR
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
LOGS_DIR = "logs"
PER_CLASS_LOGS_DIR = "validation_per_class"  # inside LOGS_DIR: TensorBoard val_iou/<class>
SAVED_MODEL_PB = "saved_model.pb"  # inside SAVED_MODEL_DIR (TensorFlow's name)
CHECKPOINT_GLOB = "epoch-*.keras"  # inside CHECKPOINT_DIR


def checkpoint_name(epoch: int) -> str:
    """``epoch-NNNN.keras``: model and optimizer after ``epoch`` epochs."""
    return f"epoch-{epoch:04d}.keras"


def worker_dir(index: int) -> str:
    """Where non-chief worker ``index`` of a multi-worker run writes (inside the train OUT)."""
    return f".worker-{index}"


# --- segops infer ------------------------------------------------------------------------------
MASKS_DIR = "masks"
RESULTS_TABLE = "results"  # Delta Lake table: one row per (image, model)
STAGING_DIR = ".staging"  # <run_id>/: a run's Parquet rows until its commit
LEGACY_METRICS_DIR = "metrics.parquet"  # segops < 0.2: plain Parquet partitions (refused, with advice)
SUMMARY_FILE = "summary.json"
MASK_KINDS = ("trainIds", "labelIds", "color")
OVERLAY_KIND = "overlay"


def mask_name(stem: str, kind: str) -> str:
    """``<stem>_<kind>.png`` (``_overlay.jpg`` for the overlay)."""
    return f"{stem}_{kind}.jpg" if kind == OVERLAY_KIND else f"{stem}_{kind}.png"


# --- segops review (inside an infer OUT unless --out says otherwise) -----------------------------
REVIEW_DIR = "review"
REVIEW_SELECTION_FILE = "selection.parquet"  # `review select`: the images picked, with why
LABEL_STUDIO_TASKS_FILE = "label_studio_tasks.json"  # `review export`: tasks with predictions
LABEL_STUDIO_CONFIG_FILE = "label_studio_config.xml"  # the labeling interface those tasks expect
COCO_FILE = "coco_rle.json"  # `review export`: COCO instances with RLE masks (CVAT "COCO 1.0")
COMPARE_PREFIX = "compare_"  # `segops compare`: compare_<old>_<new>.parquet (per image) and .json


def compare_name(old_model: str, new_model: str, extension: str) -> str:
    """``compare_<old>_<new>.<extension>``, model ids reduced to characters safe in a file name."""

    def safe(model_id: str) -> str:
        return "".join(c if c.isascii() and (c.isalnum() or c in "-.") else "-" for c in model_id)

    return f"{COMPARE_PREFIX}{safe(old_model)}_{safe(new_model)}.{extension}"


# --- segops report / demo ----------------------------------------------------------------------
# RUN_DIR/<name>: the run directory `segops demo RUN_DIR` makes and `segops report RUN_DIR` reads
RUN_DATA_DIR = "data"
RUN_PREPARED_DIR = "prepared"
RUN_MODEL_DIR = "model"
RUN_INFER_DIR = "infer"
REPORT_DIR = "report"
REPORT_HTML = "report.html"
DEMO_STATE_FILE = "demo.json"
# every plot the report can make, written as <name>.png next to REPORT_HTML (also its section key)
REPORT_PLOTS = (
    "class_iou",
    "confusion_matrix",
    "class_frequency",
    "class_weights",
    "training_curves",
    "per_image_miou",
    "gallery_best",
    "gallery_worst",
)


def report_plot_name(plot: str) -> str:
    """``<plot>.png``."""
    return f"{plot}.png"
