"""`segops infer MODEL_DIR INPUT OUT [options] [-- beam options]`: flags (generated from
:class:`~segops.inference.options.InferOptions`) -> the pipeline (workflows.infer), then the summary."""

from __future__ import annotations

from typing import Any

import click

from segops.commands.common import CONTEXT_SETTINGS, build_options, check_beam_args, output_errors
from segops.commands.flags import options_from
from segops.core.formatting import fmt_score
from segops.inference.options import InferOptions


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
@options_from(InferOptions)
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- BEAM_OPTIONS...]")
def command(model_dir: str, input_path: str, out: str, beam_args: tuple[str, ...], **kw: Any) -> None:
    """Batch inference with dense-CRF refinement over a directory, glob or Cityscapes split.

    Writes OUT/masks/ (trainIds, labelIds, colour PNGs mirroring INPUT), OUT/results (a Delta
    Lake table, one row per image and model, one version per run), OUT/summary.json and
    OUT/dead_letter.jsonl. Images already done for this model, and unchanged since, are skipped. Beam options go after `--`, e.g.
    `-- --direct_num_workers=2 --direct_running_mode=multi_processing`.
    """
    args = check_beam_args(beam_args)
    from segops.inference.options import new_run_id
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
