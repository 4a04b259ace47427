"""Beam stages as units: each test runs one DoFn or transform of workflows/ on a TestPipeline
over hand-made elements and checks its exact outputs (and dead letters) with assert_that.
Whole runs are tested in test_infer.py and test_prepare.py; these say which stage does what."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import FileMetadata
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.pvalue import AsSingleton
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # aliased: not a pytest class
from apache_beam.testing.util import TestWindowedValue as ExpectedWindowedValue
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, IntervalWindow, TimestampedValue
from conftest import write_png

from segops.core import deadletter, imageio
from segops.core.label_sets import cityscapes
from segops.datasets.cityscapes import IMAGE, INSTANCE, LABEL, ListedFile, Pair, Plan
from segops.inference.discovery import Unlisted, WorkItem
from segops.inference.stage_values import ImageExample, Prediction
from segops.prepare.options import PrepareOptions
from workflows.infer import COUNTERS, DEAD, DecodeFn, ImagesFn, PlanFn, failed_batch_to_dead, model_failures
from workflows.prepare_listing import USED_TAG, ResolveFn, list_pairs

MAX_PIXELS = imageio.INFER_MAX_PIXELS


def _item(path: str, size: int = 100, mtime: float = 1000.0, label_path: str | None = None) -> WorkItem:
    return WorkItem(path, path.lstrip("/"), label_path, size, mtime)


def _dead(path: str, stage: str, reason: str, **extra: str) -> dict[str, str]:
    return {"path": path, "stage": stage, "reason": reason, **extra}


# --------------------------------------------------------------------------------------------
# infer: planning (listing joined with the table's done index)


def _plan(p: beam.Pipeline, items: list[WorkItem], done: list[tuple[str, tuple[int, float]]],
          overwrite: bool = False) -> beam.PCollection:  # fmt: skip
    """The pipeline's own join: listed (path, WorkItem) with the index's (path, fingerprint)."""
    images = p | "Images" >> beam.Create([(it.path, it) for it in items])
    index = p | "Done" >> beam.Create(done)
    return {"image": images, "done": index} | beam.CoGroupByKey() | beam.ParDo(PlanFn(overwrite))


def test_plan_keeps_an_image_the_table_has_no_row_for():
    new = _item("/in/new.png")
    with BeamTestPipeline() as p:
        assert_that(_plan(p, [new], [("/in/other.png", (100, 1000.0))]), equal_to([new]))


def test_plan_skips_an_image_whose_row_has_its_fingerprint():
    done = _item("/in/done.png", size=7, mtime=5.5)
    with BeamTestPipeline() as p:
        assert_that(_plan(p, [done], [("/in/done.png", (7, 5.5))]), equal_to([]))


def test_plan_redoes_an_image_changed_in_size_or_mtime_since_its_row():
    resized, touched = (
        _item("/in/resized.png", size=8, mtime=5.5),
        _item("/in/touched.png", size=7, mtime=6.0),
    )
    index = [("/in/resized.png", (7, 5.5)), ("/in/touched.png", (7, 5.5))]
    with BeamTestPipeline() as p:
        assert_that(_plan(p, [resized, touched], index), equal_to([resized, touched]))


def test_plan_with_overwrite_redoes_images_whose_row_has_their_fingerprint():
    done = _item("/in/done.png", size=7, mtime=5.5)
    with BeamTestPipeline() as p:
        assert_that(_plan(p, [done], [("/in/done.png", (7, 5.5))], overwrite=True), equal_to([done]))


def test_plan_counts_the_images_it_skips():
    items = [_item(f"/in/{i}.png", size=i) for i in range(5)]
    p = BeamTestPipeline()
    _plan(p, items, [("/in/1.png", (1, 1000.0)), ("/in/3.png", (3, 1000.0)), ("/in/4.png", (99, 1000.0))])
    result = p.run()
    result.wait_until_finish()
    query = MetricsFilter().with_namespace(COUNTERS).with_name("images_skipped")
    assert [c.committed for c in result.metrics().query(query)["counters"]] == [2]


# --------------------------------------------------------------------------------------------
# infer: listed files -> work items


def test_images_turns_a_listed_image_into_a_work_item_with_its_ground_truth(tmp_path):
    image = tmp_path / "leftImg8bit/val/ulm/ulm_000001_000019_leftImg8bit.png"
    label = tmp_path / "gtFine/val/ulm/ulm_000001_000019_gtFine_labelIds.png"
    for path in (image, label):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    expected = WorkItem(
        str(image), "leftImg8bit/val/ulm/ulm_000001_000019_leftImg8bit.png", str(label), 123, 45.0
    )
    with BeamTestPipeline() as p:
        listed = p | beam.Create([FileMetadata(str(image), 123, 45.0)])
        out = listed | beam.ParDo(ImagesFn(str(tmp_path), str(tmp_path / "out"), None)).with_outputs(
            DEAD, main="ok"
        )
        assert_that(out.ok, equal_to([(str(image), expected)]), label="items")
        assert_that(out[DEAD], equal_to([]), label="dead")


def test_images_drops_files_that_are_not_inputs(tmp_path):
    root, output = str(tmp_path), str(tmp_path / "out")
    others = [f"{root}/notes.txt", f"{output}/masks/a_trainIds.png", f"{root}/x/beam-temp-1/a.png"]
    with BeamTestPipeline() as p:
        listed = p | beam.Create([FileMetadata(path, 10, 1.0) for path in others])
        out = listed | beam.ParDo(ImagesFn(root, output, None)).with_outputs(DEAD, main="ok")
        assert_that(out.ok, equal_to([]), label="items")
        assert_that(out[DEAD], equal_to([]), label="dead")


def test_images_dead_letters_an_unlisted_image_and_drops_an_unlisted_other_file(tmp_path):
    root = str(tmp_path)
    reason = "broken symbolic link to gone.png (No such file or directory)"
    unlisted = [Unlisted(f"{root}/a.png", reason), Unlisted(f"{root}/b.txt", reason)]
    with BeamTestPipeline() as p:
        out = (
            p
            | beam.Create(unlisted)
            | beam.ParDo(ImagesFn(root, f"{root}/out", None)).with_outputs(DEAD, main="ok")
        )
        assert_that(out.ok, equal_to([]), label="items")
        assert_that(out[DEAD], equal_to([_dead(f"{root}/a.png", deadletter.LIST, reason)]), label="dead")


# --------------------------------------------------------------------------------------------
# infer: decode (read, validate, decode in batches)


def _decode(p: beam.Pipeline, items: list[WorkItem]) -> Any:
    return (
        p | beam.Create(items) | beam.ParDo(DecodeFn(MAX_PIXELS, cityscapes())).with_outputs(DEAD, main="ok")
    )


def _pixels(ex: ImageExample) -> tuple[str, tuple[int, ...], bytes]:
    """What assert_that can compare of an example's image (arrays have no plain ==)."""
    return ex.item.path, ex.rgb.shape, ex.rgb.tobytes()


def test_decode_gives_a_png_s_rgb_pixels(tmp_path):
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    write_png(tmp_path / "a.png", rgb)  # written as BGR by OpenCV: a channel swap would show
    with BeamTestPipeline() as p:
        out = _decode(p, [_item(str(tmp_path / "a.png"))])
        assert_that(
            out.ok | beam.Map(_pixels), equal_to([(str(tmp_path / "a.png"), (4, 6, 3), rgb.tobytes())])
        )
        assert_that(out[DEAD], equal_to([]), label="dead")


def test_decode_reads_the_ground_truth_as_train_ids(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((2, 3, 3), np.uint8))
    # road, car, ego vehicle; person, building, sky
    label_ids = np.array([[7, 26, 1], [24, 11, 23]], np.uint8)
    train_ids = [[0, 13, 255], [11, 2, 10]]  # Cityscapes' trainIds of the same
    write_png(tmp_path / "a_gt.png", label_ids)
    with BeamTestPipeline() as p:
        out = _decode(p, [_item(str(tmp_path / "a.png"), label_path=str(tmp_path / "a_gt.png"))])
        assert_that(
            out.ok | beam.Map(lambda ex: (ex.gt.tolist(), ex.label_error)), equal_to([(train_ids, None)])
        )


def test_decode_dead_letters_a_corrupt_png_and_passes_the_good_one(tmp_path):
    rgb = np.full((3, 3, 3), 200, np.uint8)
    write_png(tmp_path / "good.png", rgb)
    data = bytearray((tmp_path / "good.png").read_bytes())
    data[data.find(b"IDAT") + 6] ^= 0xFF  # one flipped byte of pixel data: the chunk's CRC no longer matches
    (tmp_path / "bad.png").write_bytes(bytes(data))
    good, bad = str(tmp_path / "good.png"), str(tmp_path / "bad.png")
    with BeamTestPipeline() as p:
        out = _decode(p, [_item(good), _item(bad)])
        assert_that(out.ok | beam.Map(_pixels), equal_to([(good, (3, 3, 3), rgb.tobytes())]))
        reason = "corrupt PNG: CRC mismatch in chunk 'IDAT'"
        assert_that(out[DEAD], equal_to([_dead(bad, deadletter.DECODE, reason)]), label="dead")


def test_decode_dead_letters_a_missing_file_as_unreadable(tmp_path):
    missing = str(tmp_path / "gone.png")
    with BeamTestPipeline() as p:
        out = _decode(p, [_item(missing)])
        dead = out[DEAD] | beam.Map(
            lambda d: (d["path"], d["stage"], d["reason"].startswith("cannot read file"))
        )
        assert_that(dead, equal_to([(missing, deadletter.READ, True)]))


def test_decode_keeps_an_image_whose_ground_truth_is_unusable_and_dead_letters_the_label(tmp_path):
    image, label = str(tmp_path / "a.png"), str(tmp_path / "a_gt.png")
    write_png(tmp_path / "a.png", np.zeros((4, 6, 3), np.uint8))
    write_png(tmp_path / "a_gt.png", np.zeros((2, 2), np.uint8))
    problem = f"ground truth {label}: is 2x2, the image is 6x4"
    with BeamTestPipeline() as p:
        out = _decode(p, [_item(image, label_path=label)])
        assert_that(
            out.ok | beam.Map(lambda ex: (ex.item.path, ex.gt, ex.label_error)),
            equal_to([(image, None, problem)]),
        )
        reason = f"{problem}; the image was segmented without metrics"
        assert_that(out[DEAD], equal_to([_dead(label, deadletter.LABEL, reason, image=image)]), label="dead")


def test_decode_batches_give_every_image_once_in_its_own_window(tmp_path):
    # more images than a decode batch holds (DECODE_BATCH_IMAGES = 32): results of a batch leave
    # with whichever element filled it, so each must get its own image's timestamp and window back
    paths = []
    for i in range(40):
        write_png(tmp_path / f"{i}.png", np.full((2, 2, 3), i, np.uint8))
        paths.append(str(tmp_path / f"{i}.png"))
    expected = [
        ExpectedWindowedValue((path, i), i, [IntervalWindow(i, i + 1)]) for i, path in enumerate(paths)
    ]
    with BeamTestPipeline() as p:
        stamped = (
            p
            | beam.Create(list(enumerate(paths)))
            | beam.Map(lambda e: TimestampedValue(_item(e[1]), e[0]))
            | beam.WindowInto(FixedWindows(1))
        )
        out = stamped | beam.ParDo(DecodeFn(MAX_PIXELS, cityscapes())).with_outputs(DEAD, main="ok")
        firsts = out.ok | beam.Map(lambda ex: (ex.item.path, int(ex.rgb[0, 0, 0])))
        assert_that(firsts, equal_to(expected), reify_windows=True)


# --------------------------------------------------------------------------------------------
# infer: model failures


class _FailingHandler(ModelHandler[ImageExample, Any, None]):
    """A model whose every call fails, as one out of memory on a batch would; batches of 3."""

    def batch_elements_kwargs(self) -> dict[str, int]:
        return {"min_batch_size": 3, "max_batch_size": 3}

    def load_model(self) -> None:
        return None

    def run_inference(self, batch: Any, model: Any, inference_args: Any = None) -> Any:
        raise RuntimeError("device out of memory")


def _example(path: str) -> ImageExample:
    return ImageExample(_item(path), np.zeros((2, 2, 3), np.uint8), None)


def test_a_failed_inference_batch_gives_one_dead_letter_per_image():
    paths = ["/in/a.png", "/in/b.png", "/in/c.png"]
    reason = "model call failed for its batch: RuntimeError('device out of memory')"
    with BeamTestPipeline() as p:
        examples = p | beam.Create([_example(path) for path in paths])
        predicted, failed = examples | RunInference(_FailingHandler()).with_exception_handling()
        dead = failed.failed_inferences | beam.FlatMap(failed_batch_to_dead)
        sizes = failed.failed_inferences | beam.Map(lambda bad: len(bad[0]))
        assert_that(sizes, equal_to([3]), label="one failed batch of all three")
        assert_that(
            dead, equal_to([_dead(path, deadletter.INFERENCE, reason) for path in paths]), label="dead"
        )
        assert_that(predicted, equal_to([]), label="predicted")


def test_a_prediction_the_model_failed_on_alone_is_dead_lettered_and_the_others_pass():
    error = "model call failed on this image alone: ValueError: NaN logits"
    ok = Prediction(_example("/in/ok.png"), np.ones((2, 2, 3), np.float32), 1.0)
    # as RetryingModelHandler makes it for an image that fails alone: no probabilities
    failed = Prediction(_example("/in/bad.png"), None, 0.0, error)  # type: ignore[arg-type]
    with BeamTestPipeline() as p:
        out = p | beam.Create([ok, failed]) | beam.FlatMap(model_failures).with_outputs(DEAD, main="ok")
        assert_that(
            out.ok | beam.Map(lambda pred: pred.example.item.path), equal_to(["/in/ok.png"]), label="ok"
        )
        assert_that(out[DEAD], equal_to([_dead("/in/bad.png", deadletter.INFERENCE, error)]), label="dead")


# --------------------------------------------------------------------------------------------
# prepare: listing the Cityscapes layout and pairing its files


def _layout(root: Path, files: dict[str, int]) -> None:
    """Files of ``size`` bytes at relative paths (listing reads names and sizes, never pixels)."""
    for rel, size in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * size)


def _list(p: beam.Pipeline, root: Path) -> Any:
    return list_pairs(p | beam.Create([None]), PrepareOptions(input=str(root), output=str(root / "out")))


A_FRAME = "aachen_000000_000019"
A_IMAGE = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
A_LABEL = "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
A_INSTANCE = "gtFine/train/aachen/aachen_000000_000019_gtFine_instanceIds.png"
B_IMAGE = "leftImg8bit/val/bochum/bochum_000001_000019_leftImg8bit.png"
B_LABEL = "gtFine/val/bochum/bochum_000001_000019_gtFine_labelIds.png"
C_IMAGE = "leftImg8bit/train/aachen/aachen_000002_000019_leftImg8bit.png"


def test_listing_pairs_each_image_with_its_label_and_instances(tmp_path):
    ignored = {"gtFine/train/aachen/aachen_000000_000019_gtFine_color.png": 40, "README": 5}
    _layout(tmp_path, {A_IMAGE: 10, A_LABEL: 20, A_INSTANCE: 30, B_IMAGE: 11, B_LABEL: 21, **ignored})
    r = f"{tmp_path}/"  # pairs hold full paths, and the image's path relative to the root
    expected = [
        Pair("train", "aachen", A_FRAME, r + A_IMAGE, A_IMAGE, 10, r + A_LABEL, r + A_INSTANCE),
        Pair("val", "bochum", "bochum_000001_000019", r + B_IMAGE, B_IMAGE, 11, r + B_LABEL, None),
    ]
    with BeamTestPipeline() as p:
        listed = _list(p, tmp_path)
        assert_that(listed.pairs, equal_to(expected), label="pairs")
        assert_that(listed.problems, equal_to([]), label="problems")


def test_listing_reports_an_image_without_its_label_as_a_problem(tmp_path):
    _layout(tmp_path, {A_IMAGE: 10, A_LABEL: 20, C_IMAGE: 12})
    reason = "image without label: gtFine/train/aachen/aachen_000002_000019_gtFine_labelIds.png not found"
    problem = _dead(C_IMAGE, deadletter.DISCOVER, reason, split="train")
    with BeamTestPipeline() as p:
        listed = _list(p, tmp_path)
        assert_that(
            listed.pairs | beam.Map(lambda pair: pair.frame_id),
            equal_to([A_FRAME]),
            label="pairs",
        )
        assert_that(listed.problems, equal_to([problem]), label="problems")


def test_listing_reports_a_label_without_its_image_as_a_problem(tmp_path):
    orphan = "gtFine/train/aachen/aachen_000003_000019_gtFine_labelIds.png"
    _layout(tmp_path, {A_IMAGE: 10, A_LABEL: 20, orphan: 22})
    reason = "label without image: leftImg8bit/train/aachen/aachen_000003_000019_leftImg8bit.png not found"
    with BeamTestPipeline() as p:
        listed = _list(p, tmp_path)
        assert_that(listed.problems, equal_to([_dead(orphan, deadletter.DISCOVER, reason, split="train")]))


def test_listing_sizes_each_part_and_fingerprints_the_files_it_used(tmp_path):
    orphan = "gtFine/train/aachen/aachen_000003_000019_gtFine_labelIds.png"
    _layout(
        tmp_path,
        {A_IMAGE: 10, A_LABEL: 20, A_INSTANCE: 30, B_IMAGE: 11, B_LABEL: 21, orphan: 22, "README": 5},
    )
    used = sorted(
        [(A_IMAGE, 10), (A_LABEL, 20), (A_INSTANCE, 30), (B_IMAGE, 11), (B_LABEL, 21), (orphan, 22)]
    )
    digest = hashlib.sha256("".join(f"{rel}\t{size}\n" for rel, size in used).encode()).hexdigest()
    with BeamTestPipeline() as p:
        listed = _list(p, tmp_path)
        assert_that(listed.sizes, equal_to([("train", (1, 10)), ("val", (1, 11))]), label="sizes")
        assert_that(listed.fingerprint, equal_to([(digest, 6)]), label="fingerprint")


def test_listing_plans_the_labelled_splits_and_skips_one_without_labels(tmp_path):
    _layout(
        tmp_path,
        {A_IMAGE: 10, A_LABEL: 20, "leftImg8bit/train_extra/ulm/ulm_000004_000019_leftImg8bit.png": 13},
    )
    skipped = {"train_extra": "leftImg8bit/train_extra has no gtFine/train_extra labels"}
    plan = Plan(str(tmp_path), (("train", "fine"),), (), skipped)
    with BeamTestPipeline() as p:
        assert_that(_list(p, tmp_path).plan, equal_to([plan]))


def _listed(role: str, kind: str, split: str, frame: str, suffix: str, size: int) -> ListedFile:
    top = {IMAGE: "leftImg8bit", LABEL: "gtFine", INSTANCE: "gtFine"}[role]
    rel = f"{top}/{split}/aachen/{frame}{suffix}"
    return ListedFile(role, kind, split, "aachen", frame, f"/data/{rel}", rel, size)


def test_resolve_keeps_the_first_of_a_duplicated_frame_id_and_dead_letters_the_other():
    frame = "aachen_000000_000019"
    train = _listed(IMAGE, "fine", "train", frame, "_leftImg8bit.png", 10)
    val = _listed(IMAGE, "fine", "val", frame, "_leftImg8bit.png", 11)
    label = _listed(LABEL, "fine", "train", frame, "_gtFine_labelIds.png", 20)
    plan = Plan("/data", (("train", "fine"), ("val", "fine")), (), {})
    reason = f"duplicate frame id: {frame} is also at {train.rel}, which is kept"
    with BeamTestPipeline() as p:
        plan_view = AsSingleton(p | "Plan" >> beam.Create([plan]))
        frames = p | "Frames" >> beam.Create([(frame, [val, label, train])])
        out = frames | beam.ParDo(ResolveFn(), plan_view).with_outputs(deadletter.TAG, USED_TAG, main="pairs")
        pair = Pair("train", "aachen", frame, train.path, train.rel, 10, label.path, None)
        assert_that(out.pairs, equal_to([pair]), label="pairs")
        assert_that(
            out[deadletter.TAG],
            equal_to([_dead(val.rel, deadletter.DISCOVER, reason, split="val")]),
            label="dead",
        )
        assert_that(out[USED_TAG], equal_to([(train.rel, 10), (val.rel, 11), (label.rel, 20)]), label="used")
