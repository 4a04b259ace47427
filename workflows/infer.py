"""The `segops infer` Beam pipeline: list -> plan -> RunInference -> dense CRF -> masks + rows.

Reads as a sentence of transforms; the driver hands it the input pattern, the model and the
results table's version, never a list of images::

    input pattern | ListingPatterns | Reshuffle | List            listing spreads over workers
                  | Images                  WorkItem: relative path, fingerprint, ground truth
    table version | IndexFiles | Reshuffle | ReadIndex             (path, fingerprint) of done rows
    both          | CoGroupByKey | Plan     new or changed images only (counted: found, skipped)
      | Reshuffle | Decode                  read + validate image and ground truth (dead-letter bad ones)
      | RunInference(RetryingModelHandler)  one model per worker process, same-size batches; a
                                        failed batch is rerun image by image (ModelFailures)
      | DenseCRF  (or Argmax with --no-crf)      its own stage; drops the probabilities after
      | WriteMasks                      trainIds / labelIds / colour PNGs (+ overlay), atomic
      | Metrics | WriteToParquet        this run's rows, staged under OUT/.staging/<run_id>/
    dead letters of every stage | WriteToText   OUT/dead_letter.jsonl

:func:`run_infer` adds the driver-side steps around it: check the model, create the results
table if needed, run, commit the staged rows in one transaction (segops.inference.table), write
summary.json from a streaming scan of the table, and the manifest.

Native code (the image decoders, the CRF's mean field) runs in an isolated helper process
(segops.core.isolation): a crash there dead-letters one image as "crashed in <stage>".
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.utils.windowed_value import WindowedValue

from segops.core import deadletter, fs, imageio, isolation, layout
from segops.core.label_sets import LabelSet
from segops.inference import probe, table
from segops.inference import summary as summaries
from segops.inference.batch_retry import RetryingModelHandler
from segops.inference.crf import CRFParams, refine
from segops.inference.decoding import DecodeBatcher, read_inputs
from segops.inference.discovery import (
    Unlisted,
    WorkItem,
    input_root,
    is_input_image,
    list_pattern,
    listing_patterns,
    work_item,
)
from segops.inference.masks import confidence_stats, encode_masks, mask_paths, unmapped_to_ignore
from segops.inference.model import METRICS_NAMESPACE
from segops.inference.options import InferOptions
from segops.inference.previous import compare_with_existing, provenance_texts
from segops.inference.rows import metrics_row, metrics_schema
from segops.inference.run_record import RunReport, check_not_all_dead, output_paths, write_manifest
from segops.inference.sources import open_source
from segops.inference.stage_values import ImageExample, Prediction, Segmented
from segops.models import export_dir

LOG = logging.getLogger(__name__)
DEAD = deadletter.TAG
COUNTERS = METRICS_NAMESPACE  # RunInference's own metrics and segops' counters, one namespace


class ImagesFn(beam.DoFn):
    """Listed file -> WorkItem (relative path, fingerprint, ground truth); other files dropped,
    images that are not files (broken symbolic links) dead-lettered."""

    def __init__(self, root: str, output: str, labels_root: str | None) -> None:
        self._root, self._output, self._labels = root, output, labels_root
        self._found = Metrics.counter(COUNTERS, "images_found")

    def process(self, meta: Any):
        if isinstance(meta, Unlisted):
            if is_input_image(meta.path, self._output):
                yield deadletter.tagged(meta.path, deadletter.LIST, meta.reason)
            return
        item = work_item(meta.path, meta.size_in_bytes, meta.last_updated_in_seconds, self._root, self._output,
                         self._labels)  # fmt: skip
        if item is not None:
            self._found.inc()
            yield item.path, item


class PlanFn(beam.DoFn):
    """(path, {image: [WorkItem], done: [fingerprint]}) -> the WorkItem when it is new, changed
    since its row was written (size or modification time), or ``--overwrite`` is set."""

    def __init__(self, overwrite: bool) -> None:
        self._overwrite = overwrite
        self._skipped = Metrics.counter(COUNTERS, "images_skipped")

    def process(self, keyed: tuple[str, dict[str, list[Any]]]):
        _, groups = keyed
        for item in groups["image"]:
            if not self._overwrite and any(tuple(fp) == item.fingerprint for fp in groups["done"]):
                self._skipped.inc()
                continue
            yield item


class DecodeFn(beam.DoFn):
    """WorkItem -> ImageExample; unreadable/corrupt/oversized images dead-lettered, and unusable
    ground truth (the image goes on without metrics). Images are read one by one and decoded a
    batch at a time within a bundle (DecodeBatcher: one round trip to the isolated helper per
    batch), so results leave with the element that filled the batch or at the bundle's end,
    each in its own image's window."""

    def __init__(self, max_pixels: int, label_set: LabelSet) -> None:
        self._max_pixels = max_pixels
        self._label_set = label_set  # the model's: the ground truth's labelIds are read in it

    def start_bundle(self) -> None:
        self._batcher = DecodeBatcher(self._max_pixels, self._label_set)

    def process(self, item: WorkItem, timestamp: Any = beam.DoFn.TimestampParam, window: Any = beam.DoFn.WindowParam):
        try:
            inputs = read_inputs(item, self._max_pixels)
        except Exception as exc:  # noqa: BLE001 - one file's problem, dead-lettered with a reason
            yield _decode_dead_letter(item, exc)
            return
        yield from self._emit(self._batcher.add(inputs, (item, timestamp, window)))

    def finish_bundle(self):
        yield from self._emit(self._batcher.flush())

    def _emit(self, decoded: list[tuple[Any, ImageExample | Exception]]):
        for (item, timestamp, window), outcome in decoded:
            for out in _decode_outputs(item, outcome):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, WindowedValue(out.value, timestamp, [window]))
                else:
                    yield WindowedValue(out, timestamp, [window])


def _decode_dead_letter(item: WorkItem, exc: Exception) -> Any:
    if isinstance(exc, imageio.BadInput):
        return deadletter.tagged(item.path, deadletter.DECODE, exc.reason)
    if isinstance(exc, isolation.NativeCrash):
        return deadletter.tagged(item.path, deadletter.DECODE, str(exc))
    if isinstance(exc, OSError):  # missing/unreadable file (FileSystems raises IOError subclasses)
        return deadletter.tagged(item.path, deadletter.READ, f"cannot read file ({exc})")
    return deadletter.tagged(item.path, deadletter.DECODE, f"{type(exc).__name__}: {exc}")  # a decoder bug: one file


def _decode_outputs(item: WorkItem, outcome: ImageExample | Exception) -> list[Any]:
    if isinstance(outcome, Exception):
        return [_decode_dead_letter(item, outcome)]
    if not outcome.label_error:
        return [outcome]
    reason = f"{outcome.label_error}; the image was segmented without metrics"
    return [outcome, deadletter.tagged(item.label_path or item.path, deadletter.LABEL, reason, image=item.path)]


def _argmax(pred: Prediction, num_classes: int) -> Segmented:
    """The model's argmax; ``num_classes``: the label set's (a mapped model's extra unmapped
    class becomes ignore)."""
    labels, conf, low = confidence_stats(pred.probabilities)
    return Segmented(pred.example, unmapped_to_ignore(labels, num_classes), None, conf, low, pred.inference_ms, None)


def _or_dead(path: str, stage: str, work: Callable[[], Segmented]) -> Any:
    """``work()``, or a dead letter naming ``stage`` when it raises: one bad image must not fail
    the batch. A full disk or an unwritable OUT fails every image alike, so it fails the run (the
    command names the path; the rerun redoes the images not committed)."""
    try:
        return work()
    except isolation.NativeCrash as exc:
        return deadletter.tagged(path, stage, str(exc))
    except Exception as exc:  # noqa: BLE001
        if fs.write_error(exc) is not None:
            raise
        return deadletter.tagged(path, stage, f"{type(exc).__name__}: {exc}")


class DenseCRFFn(beam.DoFn):
    """Prediction -> Segmented with the dense-CRF labels (segops.inference.crf.refine)."""

    def __init__(self, params: CRFParams, num_classes: int) -> None:
        self._params = params
        self._num_classes = num_classes

    def setup(self) -> None:
        import pydensecrf.densecrf  # noqa: F401  fail in setup, not on the first element

    def process(self, pred: Prediction):
        yield _or_dead(pred.example.item.path, deadletter.CRF, lambda: self._refine(pred))

    def _refine(self, pred: Prediction) -> Segmented:
        seg = _argmax(pred, self._num_classes)
        start = time.perf_counter()
        runner = functools.partial(isolation.call, deadletter.CRF, pred.example.item.path)
        refined = refine(pred.probabilities, pred.example.rgb, self._params, runner).labels
        seg.pred_after = unmapped_to_ignore(refined, self._num_classes)
        seg.crf_ms = (time.perf_counter() - start) * 1e3
        return seg


class WriteMasksFn(beam.DoFn):
    """Write the masks (the CRF result when there is one) atomically, the trainIds PNG with the
    model that wrote it; compare with the trainIds mask it replaces first (the old model's pixels
    are gone after this: segops.inference.previous) and pass the record on with that."""

    def __init__(self, output: str, overlay: bool, model_id: str, label_set: LabelSet) -> None:
        self._output = output
        self._overlay = overlay
        self._model_id = model_id
        self._label_set = label_set

    def process(self, seg: Segmented):
        yield _or_dead(seg.example.item.path, deadletter.WRITE, lambda: self._write(seg))

    def _write(self, seg: Segmented) -> Segmented:
        mask = seg.pred_after if seg.pred_after is not None else seg.pred_before
        paths = mask_paths(self._output, seg.example.item, self._overlay)
        seg.previous = compare_with_existing(_read_if_exists(paths["trainIds"]), mask, self._model_id,
                                             self._label_set.num_classes)  # fmt: skip
        texts = provenance_texts(self._model_id, seg.previous)
        for kind, data in encode_masks(seg.example.rgb, mask, self._overlay, texts, self._label_set).items():
            fs.write_bytes_atomic(paths[kind], data)
        return seg


def _read_if_exists(path: str) -> bytes | None:
    """The file's bytes; None when there is none (the image's first run)."""
    return fs.read_bytes(path) if fs.exists(path) else None


def failed_batch_to_dead(bad: tuple[Any, Any]) -> list[dict[str, str]]:
    """A batch RunInference failed on, ``(batch, (exception type, repr, traceback))`` -> one dead
    letter per image of it."""
    batch, (exc_type, exc_repr, _tb) = bad
    examples = batch if isinstance(batch, list | tuple) else [batch]
    return [
        deadletter.record(ex.item.path, deadletter.INFERENCE, f"model call failed for its batch: {exc_repr}")
        for ex in examples
        if isinstance(ex, ImageExample)
    ]


@dataclass
class InferOutputs:
    rows: beam.PCollection
    dead_letters: beam.PCollection


def check_model(options: InferOptions) -> export_dir.ModelInfo:
    """The model's info (any model source: segops export, ONNX, Keras, SavedModel, keras-hub
    preset, LiteRT), checked and called once on probe images before any pipeline is built;
    raises ModelError. A fixed batch is said here, once."""
    source = open_source(options.model_dir)
    export_dir.check_compatible(source.info)
    note = probe.call_once(source, options.predict)
    if note:
        LOG.warning(note)
    return source.info


def model_failures(pred: Prediction) -> Any:
    """A Prediction the model failed on (after its batch was retried image by image) -> dead letter."""
    if pred.error is None:
        yield pred
    else:
        yield deadletter.tagged(pred.example.item.path, deadletter.INFERENCE, pred.error)


def model_handler(options: InferOptions, info: export_dir.ModelInfo) -> RetryingModelHandler:
    source = open_source(options.model_dir)
    if source.info.model_id != info.model_id:  # the files changed since check_model
        raise export_dir.ModelError(f"{options.model_dir} changed while the run started (model "
                                    f"{info.model_id}, now {source.info.model_id}): run again")  # fmt: skip
    return RetryingModelHandler(source, options.predict)


def build_infer_pipeline(p: beam.Pipeline, options: InferOptions, info: export_dir.ModelInfo,
                         table_version: int) -> InferOutputs:  # fmt: skip
    """Add the inference pipeline for ``options`` to ``p``. Its size does not depend on the
    input: listing and planning happen in the pipeline, against ``table_version``."""
    root, _ = input_root(options.source)
    listed = (
        p
        | "Source" >> beam.Create([options.source])
        | "ListingPatterns" >> beam.FlatMap(listing_patterns)
        | "SpreadPatterns" >> beam.Reshuffle()
        | "List" >> beam.FlatMap(list_pattern)
        | "Images" >> beam.ParDo(ImagesFn(root, options.output, options.labels)).with_outputs(DEAD, main="ok")
    )
    output, model_id, label_set = options.output, info.model_id, info.labels
    done = (
        p
        | "TableVersion" >> beam.Create([table_version])
        | "IndexFiles" >> beam.FlatMap(lambda version: table.index_files(output, version))
        | "SpreadIndex" >> beam.Reshuffle()
        | "ReadIndex" >> beam.FlatMap(table.read_index, model_id)
    )
    decoded = (
        {"image": listed.ok, "done": done}
        | "JoinDone" >> beam.CoGroupByKey()
        | "Plan" >> beam.ParDo(PlanFn(options.overwrite))
        | "Spread" >> beam.Reshuffle()
        | "Decode" >> beam.ParDo(DecodeFn(options.max_pixels, label_set)).with_outputs(DEAD, main="ok")
    )
    predicted, failed = (
        decoded.ok
        | "RunInference" >> RunInference(model_handler(options, info)).with_exception_handling()
    )
    checked = predicted | "ModelFailures" >> beam.FlatMap(model_failures).with_outputs(DEAD, main="ok")
    predictions = checked.ok
    failed_inference = failed.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch_to_dead)
    if options.crf:
        crf = DenseCRFFn(options.crf_params, label_set.num_classes)
        refined = predictions | "DenseCRF" >> beam.ParDo(crf).with_outputs(DEAD, main="ok")
        segmented, crf_dead = refined.ok, refined[DEAD]
    else:
        segmented = predictions | "Argmax" >> beam.Map(_argmax, label_set.num_classes)
        crf_dead = p | "NoCRFDeadLetters" >> beam.Create([])
    write = WriteMasksFn(options.output, options.overlay, model_id, label_set)
    written = segmented | "WriteMasks" >> beam.ParDo(write).with_outputs(DEAD, main="ok")
    rows = written.ok | "Metrics" >> beam.Map(metrics_row, model_id=model_id, run_id=options.run_id, label_set=label_set)
    _ = rows | "StageRows" >> beam.io.WriteToParquet(
        fs.join(table.staging_dir(options.output, options.run_id), f"part-{uuid.uuid4().hex[:12]}"),
        schema=metrics_schema(label_set),
        file_name_suffix=".parquet",
    )
    stages = (listed[DEAD], decoded[DEAD], failed_inference, checked[DEAD], crf_dead, written[DEAD])
    dead = stages | "AllDeadLetters" >> beam.Flatten()
    _ = (
        dead
        | "DeadLetterJson" >> beam.Map(deadletter.to_line)
        | "WriteDeadLetters" >> beam.io.WriteToText(
            fs.join(options.output, layout.DEAD_LETTER_FILE), shard_name_template="", num_shards=1
        )
    )
    return InferOutputs(rows, dead)


def _counter(result: Any, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_namespace(COUNTERS).with_name(name))["counters"]
    return int(sum(c.committed or 0 for c in found)) if found else 0


def run_infer(options: InferOptions, beam_args: list[str] | None = None) -> RunReport:
    """Everything `segops infer` does: check, run the pipeline, commit its rows in one
    transaction, summarise, write the manifest. Raises EveryImageFailed (a ValueError) when
    images were to do and every one was dead-lettered."""
    from apache_beam.options.pipeline_options import PipelineOptions

    start = time.perf_counter()
    info = check_model(options)  # before any pipeline: a bad model fails here
    version = table.begin_run(options.output, options.run_id, info.labels)  # another label set's table: refused here
    p = beam.Pipeline(options=PipelineOptions(beam_args or []))
    build_infer_pipeline(p, options, info, version)
    result = p.run()
    result.wait_until_finish()
    found = _counter(result, "images_found")
    if found == 0:
        raise ValueError(f"no PNG/JPEG images found under {options.source}")
    committed = table.commit_run(options.output, options.run_id, info.model_id, info.labels)
    summary = summaries.summarize(options.output, info.model_id)
    summary["run_id"] = options.run_id
    summary["table_version"] = committed.version if committed.version is not None else version
    paths = output_paths(options.output)
    fs.write_json_atomic(paths["summary"], summary)
    report = RunReport(
        run_id=options.run_id,
        model_id=info.model_id,
        found=found,
        processed=committed.rows,
        skipped=_counter(result, "images_skipped"),
        dead_lettered=deadletter.count(paths["dead_letter"]),
        pruned_rows=committed.replaced,
        summary=summary,
        output=options.output,
        seconds=time.perf_counter() - start,
        paths=paths,
        table_version=summary["table_version"],
    )
    write_manifest(options, report)
    check_not_all_dead(report)  # after the manifest: the failed run is on record
    return report
