"""`segops infer MODEL_DIR INPUT OUT [options] [-- beam options]`."""

from __future__ import annotations

import math
from typing import Any

import click

from segops.core.imageio import DEFAULT_MAX_PIXELS


def _fmt(value: float | None) -> str:
    return "  -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir")
@click.argument("input_path", metavar="INPUT")
@click.argument("out")
@click.option("--labels", default=None, help="Root of labelIds PNGs mirroring INPUT (default: the gtFine mirror of a Cityscapes leftImg8bit tree).")
@click.option("--split", default=None, help="INPUT is a Cityscapes root: use INPUT/leftImg8bit/SPLIT.")
@click.option("--crf/--no-crf", default=True, show_default=True, help="Dense-CRF refinement of the masks.")
@click.option("--crf-iterations", default=5, show_default=True, type=int, help="Mean-field iterations of the CRF.")
@click.option("--crf-gaussian-sxy", default=3.0, show_default=True, type=float, help="Smoothness kernel: spatial std-dev in pixels.")
@click.option("--crf-gaussian-compat", default=3.0, show_default=True, type=float, help="Smoothness kernel: weight (Potts).")
@click.option("--crf-bilateral-sxy", default=80.0, show_default=True, type=float, help="Appearance kernel: spatial std-dev in pixels.")
@click.option("--crf-bilateral-srgb", default=13.0, show_default=True, type=float, help="Appearance kernel: colour std-dev (0..255).")
@click.option("--crf-bilateral-compat", default=10.0, show_default=True, type=float, help="Appearance kernel: weight (Potts).")
@click.option("--crf-scale", default=0, show_default=True, type=int, help="CRF grid downsampling factor; 0 = auto (~131k CRF pixels), 1 = full resolution.")
@click.option("--crf-min-class-prob", default=1e-3, show_default=True, type=float, help="Classes whose max probability is below this skip the CRF.")
@click.option("--overwrite", is_flag=True, help="Reprocess images whose outputs already exist.")
@click.option("--overlay", is_flag=True, help="Also write an overlay JPEG per image.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=int, help="Refuse larger images (from the header).")
@click.option("--batch-size", default=2, show_default=True, type=int, help="Images per RunInference batch (their probabilities are held together).")
@click.option("--max-batch-pixels", default=1 << 21, show_default=True, type=int, help="Pixels per model call (bounds activation memory; default one 1024x2048 frame).")
@click.option("--tile", default="1024x2048", show_default=True, help="Images larger than this (HxW) run as overlapping tiles; 0 = always whole images.")
@click.option("--tile-overlap", default=64, show_default=True, type=int, help="Minimum overlap of neighbouring tiles, in pixels.")
@click.option("--tf-threads", default=0, show_default=True, type=int, help="TensorFlow intra-op threads per worker (0 = default).")
@click.option("--share-model-across-processes", is_flag=True, help="One model per machine instead of per worker process.")
@click.option("--run-id", default=None, help="Name of this run's Parquet partition (default: UTC time + random).")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- BEAM_OPTIONS...]")
def command(model_dir: str, input_path: str, out: str, beam_args: tuple[str, ...], **kw: Any) -> None:
    """Batch inference with dense-CRF refinement over a directory, glob or Cityscapes split.

    Writes OUT/masks/ (trainIds, labelIds, colour PNGs mirroring INPUT), OUT/metrics.parquet
    (one row per image and model), OUT/summary.json and OUT/dead_letter.jsonl. Images already
    done for this model are skipped. Beam options go after `--`, e.g.
    `-- --direct_num_workers=2 --direct_running_mode=multi_processing`.
    """
    stray = [a for a in beam_args if not a.startswith("--")]
    if stray:
        raise click.UsageError(f"unexpected argument(s) {' '.join(stray)}; Beam options look like --runner=...")
    from segops.crf import CRFParams
    from segops.inference import InferOptions, new_run_id
    from segops.training.export import ModelError
    from workflows.infer import run_infer

    try:
        crf_params = CRFParams(
            iterations=kw["crf_iterations"],
            gaussian_sxy=kw["crf_gaussian_sxy"],
            gaussian_compat=kw["crf_gaussian_compat"],
            bilateral_sxy=kw["crf_bilateral_sxy"],
            bilateral_srgb=kw["crf_bilateral_srgb"],
            bilateral_compat=kw["crf_bilateral_compat"],
            scale=kw["crf_scale"],
            min_class_prob=kw["crf_min_class_prob"],
        )
        options = InferOptions(
            model_dir=model_dir,
            input=input_path,
            output=out,
            labels=kw["labels"],
            split=kw["split"],
            crf=kw["crf"],
            crf_params=crf_params,
            overwrite=kw["overwrite"],
            overlay=kw["overlay"],
            max_pixels=kw["max_pixels"],
            batch_size=kw["batch_size"],
            max_batch_pixels=kw["max_batch_pixels"],
            tile=kw["tile"],
            tile_overlap=kw["tile_overlap"],
            tf_threads=kw["tf_threads"],
            share_model_across_processes=kw["share_model_across_processes"],
            run_id=kw["run_id"] or new_run_id(),
        ).validate()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        report = run_infer(options, list(beam_args))
    except ModelError as exc:
        raise click.ClickException(f"model {model_dir}: {exc}") from exc
    except ValueError as exc:  # e.g. no images under INPUT
        raise click.ClickException(str(exc)) from exc
    click.echo(format_summary(report))
