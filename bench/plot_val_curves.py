"""Val mIoU against minutes of training, read from `segops train --no-progress` logs (run by hand):

    .venv/bin/python bench/plot_val_curves.py LABEL=RUN.log [LABEL=RUN.log ...] --png docs/unseen_val_curves.png \
        [--title "..."]

Each epoch line (``58/58 - 302s - ... - val_mean_iou: 0.3621``) gives one point: the epoch's
cumulative wall seconds (training and its validation) and its val mIoU. Within one
``--time-budget`` run the last epochs gain from the lr decaying to zero at the deadline, so a
curve shows what a run of that budget learns over time, not what a shorter budget would reach.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from plot_real_data import save  # bench/ is the script's directory

EPOCH_LINE = re.compile(r"^\d+/\d+ - (\d+)s - .*val_mean_iou: ([0-9.]+)")


def curve(log: Path) -> tuple[list[float], list[float]]:
    """(cumulative minutes, val mIoU) per epoch of one training log."""
    minutes, mious, total = [], [], 0.0
    for line in log.read_text().splitlines():
        if match := EPOCH_LINE.match(line.strip()):
            total += float(match.group(1))
            minutes.append(total / 60)
            mious.append(float(match.group(2)))
    return minutes, mious


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=PATH of a training log")
    ap.add_argument("--png", required=True)
    ap.add_argument("--title", default="val mIoU during a 30-minute --time-budget run")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for run in args.runs:
        label, _, path = run.partition("=")
        minutes, mious = curve(Path(path))
        ax.plot(minutes, mious, "o-", label=f"{label} (final {mious[-1]:.3f})")
    save(fig, ax, "minutes of training (epochs' wall time, validation included)", "val mIoU (train log, model alone)",
         args.title, args.png, legend_size=7)  # fmt: skip

if __name__ == "__main__":
    main()
