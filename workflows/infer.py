"""The `segops infer` Beam pipeline: images -> RunInference -> dense CRF -> masks + Parquet rows.

Reads as a sentence of transforms::

    work items (listed on the driver, already-done images skipped)
      | Reshuffle                       spread over workers
      | Decode                          read + validate image and ground truth (dead-letter bad ones)
      | RunInference(SegmentationModelHandler)   one model per worker process, same-size batches
      | DenseCRF  (or Argmax with --no-crf)      its own stage; drops the probabilities after
      | WriteMasks                      trainIds / labelIds / colour PNGs (+ overlay), atomic
      | Metrics                         one row per image: before/after-CRF IoU, Dice, confusion
      | WriteToParquet                  OUT/metrics.parquet/run=<run_id>/part-*.parquet
    dead letters of every stage | WriteToText   OUT/dead_letter.jsonl

:func:`run_infer` adds the driver-side steps around it (model check, listing, skip plan,
pruning rows this run replaces, summary.json, manifest.json).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import RunInference

from segops.core import deadletter, fs, imageio, layout
from segops.inference import summary as summaries
from segops.inference import table
from segops.inference.crf import CRFParams, refine
from segops.inference.discovery import WorkItem, discover_inputs
from segops.inference.examples import ImageExample, Prediction, load_example
from segops.inference.masks import confidence_stats, encode_masks, mask_paths
from segops.inference.model import SegmentationModelHandler
from segops.inference.options import InferOptions
from segops.inference.run_record import RunReport, output_paths, write_manifest
from segops.training import export

LOG = logging.getLogger(__name__)
DEAD = deadletter.TAG


class DecodeFn(beam.DoFn):
    """WorkItem -> ImageExample; unreadable/corrupt/oversized images and bad labels dead-lettered."""

    def __init__(self, max_pixels: int) -> None:
        self._max_pixels = max_pixels

    def process(self, item: WorkItem):
        try:
            yield load_example(item, self._max_pixels)
        except imageio.BadInput as exc:
            yield deadletter.tagged(item.path, "decode", exc.reason)
        except OSError as exc:  # missing/unreadable file (FileSystems raises IOError subclasses)
            yield deadletter.tagged(item.path, "read", f"cannot read file ({exc})")
        except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not fail the batch
            yield deadletter.tagged(item.path, "decode", f"{type(exc).__name__}: {exc}")


@dataclass
class Segmented:
    """What survives the CRF stage: the masks and the numbers, not the probabilities."""

    example: ImageExample
    pred_before: np.ndarray
    pred_after: np.ndarray | None
    mean_confidence: float
    low_confidence_fraction: float
    inference_ms: float
    crf_ms: float | None


def _argmax(pred: Prediction) -> Segmented:
    labels, conf, low = confidence_stats(pred.probabilities)
    return Segmented(pred.example, labels, None, conf, low, pred.inference_ms, None)


class DenseCRFFn(beam.DoFn):
    """Prediction -> Segmented with the dense-CRF labels (segops.crf.refine)."""

    def __init__(self, params: CRFParams) -> None:
        self._params = params

    def setup(self) -> None:
        import pydensecrf.densecrf  # noqa: F401  fail in setup, not on the first element

    def process(self, pred: Prediction):
        seg = _argmax(pred)
        try:
            start = time.perf_counter()
            result = refine(pred.probabilities, pred.example.rgb, self._params)
            seg.crf_ms = (time.perf_counter() - start) * 1e3
            seg.pred_after = result.labels
        except Exception as exc:  # noqa: BLE001 - one bad image must not fail the batch
            yield deadletter.tagged(pred.example.item.path, "crf", f"{type(exc).__name__}: {exc}")
            return
        yield seg


class WriteMasksFn(beam.DoFn):
    """Write the masks (the CRF result when there is one) atomically; pass the record on."""

    def __init__(self, output: str, overlay: bool) -> None:
        self._output = output
        self._overlay = overlay

    def process(self, seg: Segmented):
        item = seg.example.item
        mask = seg.pred_after if seg.pred_after is not None else seg.pred_before
        try:
            encoded = encode_masks(seg.example.rgb, mask, self._overlay)
            paths = mask_paths(self._output, item, self._overlay)
            for kind, data in encoded.items():
                fs.write_bytes_atomic(paths[kind], data)
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk for this one file
            yield deadletter.tagged(item.path, "write", f"{type(exc).__name__}: {exc}")
            return
        yield seg


class MetricsFn(beam.DoFn):
    def __init__(self, model_id: str, run_id: str) -> None:
        self._model_id = model_id
        self._run_id = run_id

    def process(self, seg: Segmented):
        yield table.metrics_row(
            seg.example,
            model_id=self._model_id,
            run_id=self._run_id,
            pred_before=seg.pred_before,
            pred_after=seg.pred_after,
            mean_confidence=seg.mean_confidence,
            low_confidence_fraction=seg.low_confidence_fraction,
            inference_ms=seg.inference_ms,
            crf_ms=seg.crf_ms,
        )


def _failed_batch_to_dead(bad: tuple[Any, Any]) -> list[dict[str, str]]:
    batch, (exc_type, exc_repr, _tb) = bad
    examples = batch if isinstance(batch, list | tuple) else [batch]
    return [
        deadletter.record(ex.item.path, "inference", f"model call failed for its batch: {exc_repr}")
        for ex in examples
        if isinstance(ex, ImageExample)
    ]


@dataclass
class RunContext:
    """Driver-side facts a pipeline is built from."""

    info: export.ModelInfo
    items: list[WorkItem]
    plan: table.Plan


@dataclass
class InferOutputs:
    rows: beam.PCollection
    dead_letters: beam.PCollection
    context: RunContext


def prepare_context(options: InferOptions) -> RunContext:
    """Check the model, list inputs and decide what to skip; raises ModelError / ValueError."""
    info = export.load_info(options.model_dir)
    export.check_compatible(info)
    items = discover_inputs(options)
    if not items:
        raise ValueError(f"no PNG/JPEG images found under {options.source}")
    return RunContext(info, items, table.plan(items, options, info.model_id))


def model_handler(options: InferOptions, info: export.ModelInfo) -> SegmentationModelHandler:
    return SegmentationModelHandler(export.resolve_export_dir(options.model_dir), info.stride, options.predict)


def build_infer_pipeline(p: beam.Pipeline, options: InferOptions, context: RunContext | None = None) -> InferOutputs:
    """Add the inference pipeline for ``options`` to ``p``; returns rows and dead letters."""
    context = context or prepare_context(options)
    model_id = context.info.model_id
    decoded = (
        p
        | "ListInputs" >> beam.Create(context.plan.todo, reshuffle=False)
        | "Spread" >> beam.Reshuffle()
        | "Decode" >> beam.ParDo(DecodeFn(options.max_pixels)).with_outputs(DEAD, main="ok")
    )
    predictions, failed = (
        decoded.ok
        | "RunInference" >> RunInference(model_handler(options, context.info)).with_exception_handling()
    )
    failed_inference = failed.failed_inferences | "FailedBatches" >> beam.FlatMap(_failed_batch_to_dead)
    if options.crf:
        refined = predictions | "DenseCRF" >> beam.ParDo(DenseCRFFn(options.crf_params)).with_outputs(DEAD, main="ok")
        segmented, crf_dead = refined.ok, refined[DEAD]
    else:
        segmented = predictions | "Argmax" >> beam.Map(_argmax)
        crf_dead = p | "NoCRFDeadLetters" >> beam.Create([])
    written = segmented | "WriteMasks" >> beam.ParDo(WriteMasksFn(options.output, options.overlay)).with_outputs(DEAD, main="ok")
    rows = written.ok | "Metrics" >> beam.ParDo(MetricsFn(model_id, options.run_id))
    # Part files are named per invocation: a run id reused (e.g. a scheduler's date, restarted)
    # then adds files beside the earlier ones instead of overwriting rows it did not redo.
    _ = rows | "WriteParquet" >> beam.io.WriteToParquet(
        fs.join(options.output, layout.METRICS_DIR, f"run={options.run_id}", f"part-{uuid.uuid4().hex[:12]}"),
        schema=table.metrics_schema(),
        file_name_suffix=".parquet",
    )
    dead = (decoded[DEAD], failed_inference, crf_dead, written[DEAD]) | "AllDeadLetters" >> beam.Flatten()
    _ = (
        dead
        | "DeadLetterJson" >> beam.Map(deadletter.to_line)
        | "WriteDeadLetters" >> beam.io.WriteToText(
            fs.join(options.output, layout.DEAD_LETTER_FILE), shard_name_template="", num_shards=1
        )
    )
    return InferOutputs(rows, dead, context)


def run_infer(options: InferOptions, beam_args: list[str] | None = None) -> RunReport:
    """Everything `segops infer` does: check, plan, run the pipeline, summarise, write the manifest."""
    from apache_beam.options.pipeline_options import PipelineOptions

    start = time.perf_counter()
    context = prepare_context(options)  # before any pipeline: a bad model fails here
    model_id = context.info.model_id
    table.clean_stale_temp(options.output)
    # Rows about to be replaced go first: if this run dies, those images have no row and the
    # next run redoes them; the table never holds two rows for one (image, model).
    todo = {it.path for it in context.plan.todo}
    pruned = table.prune_rows(options.output, model_id, todo)
    paths = output_paths(options.output)
    if context.plan.todo:
        with beam.Pipeline(options=PipelineOptions(beam_args or [])) as p:
            build_infer_pipeline(p, options, context)
    else:
        fs.write_bytes_atomic(paths["dead_letter"], b"")  # rewritten on every run, like the pipeline does
    # Rows for this run's images were pruned above, so any row for them now is this invocation's
    # (counting by run id would over-count when a run id is reused).
    run_rows = table.read_metrics(options.output, ["path", "model_id"])  # columns even when empty
    processed = sum(
        1
        for path, m in zip(run_rows.column("path").to_pylist(), run_rows.column("model_id").to_pylist(), strict=True)
        if m == model_id and path in todo
    )
    summary = summaries.summarize(options.output, model_id)
    summary["run_id"] = options.run_id
    fs.write_json_atomic(paths["summary"], summary)
    report = RunReport(
        run_id=options.run_id,
        model_id=model_id,
        found=len(context.items),
        processed=processed,
        skipped=len(context.plan.skipped),
        dead_lettered=deadletter.count(paths["dead_letter"]),
        pruned_rows=pruned,
        summary=summary,
        output=options.output,
        seconds=time.perf_counter() - start,
        paths=paths,
    )
    write_manifest(options, report)
    return report
