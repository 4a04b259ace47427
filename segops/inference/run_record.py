"""What an infer run leaves about itself: the :class:`RunReport` the CLI prints, the run
manifest (OUT/manifest.json: the options and one entry per run, appended), and whether the run
failed as a whole (:func:`check_not_all_dead`)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from segops import __version__
from segops.core import fs, layout
from segops.inference.options import InferOptions


@dataclass
class RunReport:
    run_id: str
    model_id: str
    found: int
    processed: int
    skipped: int
    dead_lettered: int
    pruned_rows: int
    summary: dict[str, Any]
    output: str
    seconds: float
    paths: dict[str, str] = field(default_factory=dict)
    table_version: int | None = None  # the results table's version after this run


def output_paths(output: str) -> dict[str, str]:
    """The run's outputs, as the CLI lists them."""
    return {
        "masks": fs.join(output, layout.MASKS_DIR),
        "results": fs.join(output, layout.RESULTS_TABLE),
        "summary": fs.join(output, layout.SUMMARY_FILE),
        "dead_letter": fs.join(output, layout.DEAD_LETTER_FILE),
    }


def write_manifest(options: InferOptions, report: RunReport) -> None:
    """Rewrite OUT/manifest.json with this run appended to the runs recorded before."""
    path = fs.join(options.output, layout.MANIFEST_FILE)
    runs: list[dict[str, Any]] = []
    with contextlib.suppress(OSError, ValueError):  # first run, or an unreadable old manifest
        runs = fs.read_json(path).get("runs", [])
    runs.append(
        {
            "run_id": report.run_id,
            "model_id": report.model_id,
            "found": report.found,
            "processed": report.processed,
            "skipped": report.skipped,
            "dead_lettered": report.dead_lettered,
            "replaced_rows": report.pruned_rows,
            "table_version": report.table_version,
            "seconds": round(report.seconds, 3),
        }
    )
    fs.write_json_atomic(
        path,
        {
            "stage": "infer",
            "segops_version": __version__,
            "model_id": report.model_id,
            "model_dir": options.model_dir,
            "input": options.source,
            "options": options.to_record(),
            "runs": runs,
        },
    )



FIRST_REASONS = 3  # dead letters quoted when every image failed


class EveryImageFailed(ValueError):
    """Images were to do and every one was dead-lettered: the run failed (exit status 1)."""


def check_not_all_dead(report: RunReport) -> None:
    """Raise :class:`EveryImageFailed` quoting the first reasons when no image to do came
    through; a run that dead-letters some images, or had nothing to do, passes."""
    if report.processed or report.found - report.skipped <= 0:
        return
    reasons = []
    with contextlib.suppress(OSError, ValueError):
        for line in fs.read_bytes(report.paths["dead_letter"]).decode().splitlines()[:FIRST_REASONS]:
            entry = json.loads(line)
            reason = " ".join(str(entry["reason"]).split())  # one line, whatever the runtime raised
            reasons.append(f"{entry['path']}: {entry['stage']}: {reason[:300]}")
    raise EveryImageFailed(f"every image was dead-lettered ({report.dead_lettered} of {report.found - report.skipped} "
                           f"to do); first: {' | '.join(reasons) or 'none recorded'} "
                           f"(all in {report.paths['dead_letter']})")  # fmt: skip
