"""`segops infer MODEL_DIR INPUT OUT [options] [-- beam options]`."""

from __future__ import annotations

from typing import Any

import click

from segops.commands.common import CONTEXT_SETTINGS, build_options, check_beam_args, output_errors
from segops.core.formatting import fmt_score
from segops.core.options import default_of
from segops.inference.crf import CRFParams
from segops.inference.options import DEFAULT_TILE, TTA_CHOICES, InferOptions, PredictOptions

CRF = CRFParams()
PREDICT = PredictOptions()


def _fmt(value: float | None) -> str:
    return fmt_score(value, missing="  -  ")


def format_summary(report: Any) -> str:
    """The end-of-run text: counts, dataset mIoU before/after CRF per class, where outputs are."""
    s = report.summary
    lines = [
        f"run {report.run_id}  model {report.model_id}  ({report.seconds:.1f} s)",
        f"images found {report.found}: processed {report.processed}, skipped (already done) "
        f"{report.skipped}, dead-lettered {report.dead_lettered}"
        + (f"; replaced {report.pruned_rows} earlier row(s)" if report.pruned_rows else ""),
        f"table for this model: {s['images']} image(s), {s['labelled_images']} with ground truth"
        + (f", mean confidence {s['mean_confidence']:.4f}" if "mean_confidence" in s else ""),
    ]
    before, after = s.get("before_crf"), s.get("after_crf")
    if before:
        lines.append("")
        lines.append(f"{'class':<16}{'IoU no CRF':>12}{'IoU CRF':>12}")
        for name, value in before["dataset_iou"].items():
            lines.append(f"{name:<16}{_fmt(value):>12}{_fmt(after['dataset_iou'][name] if after else None):>12}")
        lines.append(f"{'dataset mIoU':<16}{_fmt(before['dataset_miou']):>12}{_fmt(after['dataset_miou'] if after else None):>12}")
        lines.append(
            f"{'mean per-image':<16}{_fmt(before['mean_of_per_image_miou']):>12}"
            f"{_fmt(after['mean_of_per_image_miou'] if after else None):>12}"
        )
        lines.append("(dataset mIoU: summed confusion matrix, Cityscapes definition; mean per-image: average of per-image mIoU)")
    else:
        lines.append("no ground truth found: masks and confidence statistics only")
    lines.append("")
    for key, path in report.paths.items():
        lines.append(f"{key:<12}{path}")
    return "\n".join(lines)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("model_dir")
@click.argument("input_path", metavar="INPUT")
@click.argument("out")
@click.option("--labels", default=None, help="Root of labelIds PNGs mirroring INPUT (default: the gtFine mirror of a Cityscapes leftImg8bit tree).")
@click.option("--split", default=None, help="INPUT is a Cityscapes root: use INPUT/leftImg8bit/SPLIT.")
@click.option("--crf/--no-crf", default=True, show_default=True, help="Dense-CRF refinement of the masks.")
@click.option("--crf-iterations", default=CRF.iterations, show_default=True, type=int, help="Mean-field iterations of the CRF.")
@click.option("--crf-gaussian-sxy", default=CRF.gaussian_sxy, show_default=True, type=float, help="Smoothness kernel: spatial std-dev in pixels.")
@click.option("--crf-gaussian-compat", default=CRF.gaussian_compat, show_default=True, type=float, help="Smoothness kernel: weight (Potts).")
@click.option("--crf-bilateral-sxy", default=CRF.bilateral_sxy, show_default=True, type=float, help="Appearance kernel: spatial std-dev in pixels of an image --crf-bilateral-reference-height rows tall.")
@click.option("--crf-bilateral-reference-height", default=CRF.bilateral_reference_height, show_default=True, type=int, help="--crf-bilateral-sxy scales with image height / this (the kernel spans the same share of the scene); 0 = pixels at every size.")
@click.option("--crf-bilateral-srgb", default=CRF.bilateral_srgb, show_default=True, type=float, help="Appearance kernel: colour std-dev (0..255).")
@click.option("--crf-bilateral-compat", default=CRF.bilateral_compat, show_default=True, type=float, help="Appearance kernel: weight (Potts).")
@click.option("--crf-scale", default=CRF.scale, show_default=True, type=int, help="CRF grid downsampling factor; 0 = auto (~131k CRF pixels), 1 = full resolution.")
@click.option("--crf-min-class-prob", default=CRF.min_class_prob, show_default=True, type=float, help="Classes whose max probability is below this skip the CRF.")
@click.option("--overwrite", is_flag=True, help="Reprocess images whose outputs already exist.")
@click.option("--overlay", is_flag=True, help="Also write an overlay JPEG per image.")
@click.option("--max-pixels", default=default_of(InferOptions, "max_pixels"), show_default=True, type=int, help="Refuse larger images (from the header).")
@click.option("--batch-size", default=PREDICT.batch_size, show_default=True, type=int, help="Images per RunInference batch (their probabilities are held together).")
@click.option("--max-batch-pixels", default=PREDICT.max_batch_pixels, show_default=True, type=int, help="Pixels per model call (bounds activation memory; default one 1024x2048 frame).")
@click.option("--tile", default=DEFAULT_TILE, show_default=True, help="Images larger than this (HxW) run as overlapping tiles; 0 = always whole images.")
@click.option("--tile-overlap", default=PREDICT.tile_overlap, show_default=True, type=int, help="Minimum overlap of neighbouring tiles, in pixels.")
@click.option("--tta", type=click.Choice(TTA_CHOICES), default=PREDICT.tta, show_default=True, help="Test-time augmentation: flip averages the probabilities of each image and its mirror image before the CRF (2x the model time).")
@click.option("--tf-threads", default=PREDICT.tf_threads, show_default=True, type=int, help="TensorFlow intra-op threads per worker (0 = default).")
@click.option("--share-model-across-processes", is_flag=True, help="One model per machine instead of per worker process.")
@click.option("--run-id", default=None, help="Name of this run in the results table's history (default: UTC time + random).")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- BEAM_OPTIONS...]")
def command(model_dir: str, input_path: str, out: str, beam_args: tuple[str, ...], **kw: Any) -> None:
    """Batch inference with dense-CRF refinement over a directory, glob or Cityscapes split.

    Writes OUT/masks/ (trainIds, labelIds, colour PNGs mirroring INPUT), OUT/results (a Delta
    Lake table, one row per image and model, one version per run), OUT/summary.json and
    OUT/dead_letter.jsonl. Images already done for this model, and unchanged since, are skipped. Beam options go after `--`, e.g.
    `-- --direct_num_workers=2 --direct_running_mode=multi_processing`.
    """
    args = check_beam_args(beam_args)
    from segops.inference.options import InferOptions, new_run_id
    from segops.models.export_dir import ModelError
    from workflows.infer import run_infer

    options = build_options(InferOptions.from_flat, model_dir=model_dir, input=input_path, output=out,
                            **{**kw, "run_id": kw["run_id"] or new_run_id()})
    from segops.core import storage

    for readable in (input_path, kw["labels"]):  # a missing bucket or credentials: one line, exit 2
        if readable and storage.scheme_of(readable):
            storage.check_access(readable.split("*", 1)[0].rsplit("/", 1)[0] if "*" in readable else readable, write=False)
    try:
        with output_errors(options.output):
            report = run_infer(options, args)
    except ModelError as exc:
        raise click.ClickException(f"model {model_dir}: {exc}") from exc
    except ValueError as exc:  # e.g. no images under INPUT
        raise click.ClickException(str(exc)) from exc
    click.echo(format_summary(report))
