"""`segops` command line. Thin: each subcommand lives in ``segops.commands.<name>`` and is
imported only when it runs, so ``segops --help`` stays fast (no TensorFlow import)."""

from __future__ import annotations

import importlib
import logging
import os

import click

from segops import __version__

# TensorFlow's C++ INFO/WARNING start-up lines (CPU features, oneDNN) are noise in a batch job's
# log; a user who wants them sets TF_CPP_MIN_LOG_LEVEL=0 explicitly.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# name -> (module, one-line help shown by `segops --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("segops.commands.synth", "Generate the built-in synthetic dataset in the Cityscapes layout."),
    "prepare": ("segops.commands.prepare", "Raw Cityscapes layout -> sharded TFRecords, statistics, class weights (Beam)."),
    "train": ("segops.commands.train", "Train a segmentation network on prepared TFRecords; export for inference."),
    "infer": ("segops.commands.infer", "Batch inference with dense-CRF refinement: masks, a results table (Beam)."),
    "compare": ("segops.commands.compare", "What changed between two models' masks of one infer OUT: agreement, transitions."),
    "review": ("segops.commands.review", "Relabeling loop: select images to check, export to Label Studio/COCO, import corrections."),
    "report": ("segops.commands.report", "Self-contained HTML quality report with plots for a run directory."),
    "demo": ("segops.commands.demo", "Run synth -> prepare -> train -> infer -> report end to end."),
}


class _DropBeamApitoolsNotice(logging.Filter):
    """Beam 2.77 logs "apitools not found" on import unless its GCP extras are installed; segops
    needs no BigQuery client, so the notice only alarms users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return module.command

    def invoke(self, ctx: click.Context) -> object:
        """Every command: object storage that cannot be used is one line, exit status 2."""
        from segops.core.storage import StorageError

        try:
            return super().invoke(ctx)
        except StorageError as exc:
            from segops.commands.common import StorageProblem

            raise StorageProblem(str(exc)) from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="segops")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """segops: Cityscapes-style semantic segmentation, from raw PNGs to relabelled archives.

    Typical flow: synth (or a real Cityscapes download) -> prepare -> train -> infer -> report.
    Beam pipeline options go after `--`, e.g. `segops prepare IN OUT -- --direct_num_workers=2`.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropBeamApitoolsNotice())


def main() -> None:
    cli(prog_name="segops")


if __name__ == "__main__":
    main()
