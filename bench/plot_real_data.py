"""Quality vs minutes of training from bench_real_data.py's JSON (run by hand):

    .venv/bin/python bench/plot_real_data.py RESULTS.json [RESULTS2.json ...] --png docs/real_data.png

One line per configuration: val mIoU (after the CRF, dashed: the model alone) against the
``--time-budget`` minutes, with the machine and date in the title.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+")
    ap.add_argument("--png", required=True)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[dict]] = defaultdict(list)
    meta = set()
    for path in args.results:
        data = json.loads(Path(path).read_text())
        meta.add(f"{data['cpus']} CPUs, {data['date']}")
        for row in data["rows"]:
            lines[row["config"]].append(row)
    fig, ax = plt.subplots(figsize=(6, 4))
    for config, rows in sorted(lines.items()):
        rows.sort(key=lambda r: r["budget_min"])
        minutes = [r["budget_min"] for r in rows]
        (line,) = ax.plot(minutes, [r["miou_crf"] for r in rows], "o-", label=f"{config} + CRF")
        ax.plot(minutes, [r["miou"] for r in rows], "o--", color=line.get_color(), alpha=0.6, label=f"{config}")
    save(fig, ax, "segops train --time-budget (minutes, wall clock)", "CamVid val mIoU (11 classes)",
         "Quality per minute of CPU training (" + "; ".join(sorted(meta)) + ")", args.png)  # fmt: skip


def save(fig, ax, xlabel: str, ylabel: str, title: str, png: str, legend_size: int = 8) -> None:
    """Labels, title, grid and legend of a quality plot, written to ``png`` (shared by the bench plots)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
