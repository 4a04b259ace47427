"""`segops report` on a small real run (synth -> prepare -> train -> infer at tiny size, made once per
session by `segops demo`): every plot, an HTML page with only embedded images, numbers equal to
summary.json, a gallery consistent with the masks and the Parquet rows."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_demo import tiny_demo

from segops.cli import cli
from segops.core import labels
from segops.core.formatting import fmt_score
from segops.core.layout import REPORT_PLOTS
from segops.report import ReportPaths, build_report, majority_baseline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """RUN_DIR/{data,prepared,model,infer,report} made by the real stages (shared with test_demo)."""
    return tiny_demo(tmp_path_factory)[0]


class Page(HTMLParser):
    """<img> sources, any other src/href, and the text of every table cell by table id."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[tuple[str, str, str]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif "src" in a or "href" in a or tag in ("link", "script", "iframe", "object", "embed"):
            self.links.append((tag, a.get("src", ""), a.get("href", "")))
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(html_path: Path) -> Page:
    page = Page()
    page.feed(html_path.read_text(encoding="utf-8"))
    return page


def decode_data_uri(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,"), src[:60]
    return base64.b64decode(src.split(",", 1)[1], validate=True)


def test_every_plot_is_a_png_file(run_dir):
    out = run_dir / "report"
    for name in REPORT_PLOTS:
        img = Image.open(out / f"{name}.png")
        img.verify()
        assert img.format == "PNG"
        w, h = Image.open(out / f"{name}.png").size
        assert w >= 300 and h >= 200, name
        # a real plot, not a blank canvas: many distinct colours
        arr = np.asarray(Image.open(out / f"{name}.png").convert("RGB")).astype(np.uint32)
        assert len(np.unique(arr[..., 0] << 16 | arr[..., 1] << 8 | arr[..., 2])) > 20, name


def test_html_embeds_every_plot_and_references_nothing_outside(run_dir):
    out = run_dir / "report"
    page = parse(out / "report.html")
    assert len(page.images) == len(REPORT_PLOTS)
    embedded = []
    for src in page.images:
        png = decode_data_uri(src)
        Image.open(io.BytesIO(png)).verify()
        embedded.append(png)
    assert sorted(embedded) == sorted((out / f"{n}.png").read_bytes() for n in REPORT_PLOTS)  # the same plots
    assert all(tag == "a" and href.startswith("#") for tag, _, href in page.links), page.links
    text = (out / "report.html").read_text()
    assert not re.search(r"url\(|@import|https?://", text)


def test_numbers_in_the_html_equal_summary_json(run_dir):
    summary = json.loads((run_dir / "infer" / "summary.json").read_text())
    page = parse(run_dir / "report" / "report.html")
    before, after = summary["before_crf"], summary["after_crf"]
    table = {row[0]: row[1:] for row in page.tables["class-iou-table"][1:]}
    assert list(table) == [*labels.CLASS_NAMES, "mean"]
    for name in labels.CLASS_NAMES:
        assert table[name] == [fmt_score(before["dataset_iou"][name]), fmt_score(after["dataset_iou"][name]),
                               fmt_score(before["dataset_dice"][name]), fmt_score(after["dataset_dice"][name])], name  # fmt: skip
    assert table["mean"][:2] == [fmt_score(before["dataset_miou"]), fmt_score(after["dataset_miou"])]
    headline = {row[0]: row[1] for row in page.tables["headline"][1:]}
    assert headline["dataset mIoU, model"] == f"{before['dataset_miou']:.4f}"
    assert headline["dataset mIoU, + CRF"] == f"{after['dataset_miou']:.4f}"
    assert headline["mean of per-image mIoU, + CRF"] == f"{after['mean_of_per_image_miou']:.4f}"
    assert headline["with ground truth"] == str(summary["labelled_images"])
    history = json.loads((run_dir / "model" / "history.json").read_text())
    best = max(history, key=lambda r: r["val_mean_iou"])
    assert any(k.startswith(f"best val mIoU during training (epoch {best['epoch']} of 2)") and v == f"{best['val_mean_iou']:.4f}"
               for k, v in headline.items())  # fmt: skip


def test_majority_baseline_is_a_constant_prediction_scored_by_hand(run_dir):
    stats = json.loads((run_dir / "prepared" / "stats.json").read_text())
    majority = int(np.argmax(stats["splits"]["train"]["pixel_counts"]))
    gt = np.asarray(json.loads((run_dir / "infer" / "summary.json").read_text())["before_crf"]["confusion_matrix"]).sum(axis=1)
    present = set(np.flatnonzero(gt)) | {majority}
    expected = (gt[majority] / gt.sum()) / len(present)  # IoU of the majority class; 0 for the others
    assert math.isclose(majority_baseline(np.diag(gt), majority), expected, rel_tol=1e-12)
    headline = {row[0]: row[1] for row in parse(run_dir / "report" / "report.html").tables["headline"][1:]}
    (label,) = [k for k in headline if k.startswith("majority-class baseline")]
    assert labels.CLASS_NAMES[majority] in label and headline[label] == f"{expected:.4f}"


def test_gallery_shows_the_best_and_worst_images_consistently_with_masks_and_rows(run_dir, tmp_path):
    result = build_report(ReportPaths.for_run_dir(str(run_dir), out=str(tmp_path)), gallery_size=2)
    from segops.report import load_gallery, load_run, select_gallery

    data = load_run(ReportPaths.for_run_dir(str(run_dir), out=str(tmp_path)))
    best, worst = select_gallery(data.rows, 2)
    assert len(best) == len(worst) == 2 and not {r["path"] for r in best} & {r["path"] for r in worst}
    assert min(r["mean_iou_after"] for r in best) >= max(r["mean_iou_after"] for r in worst)
    from segops.report import make_predictor

    items = load_gallery(data, best + worst, make_predictor(data))
    for it in items:
        assert not it.problems
        # the CRF mask on disk scores exactly what its Parquet row says; the recomputed model
        # argmax scores what the row's pre-CRF column says
        assert it.mask_miou == pytest.approx(it.row["mean_iou_after"], abs=1e-12)
        assert it.pred_miou == pytest.approx(it.row["mean_iou_before"], abs=1e-9)
    page = parse(tmp_path / "report.html")
    rows = page.tables["gallery_best-table"][1:] + page.tables["gallery_worst-table"][1:]
    assert [r[0] for r in rows] == [r["rel_path"] for r in best + worst]
    assert [r[2] for r in rows] == [fmt_score(r["mean_iou_after"]) for r in best + worst]
    assert result.headline["labelled_images"] == 4


def test_stage_directories_can_be_given_explicitly_and_missing_ones_are_left_out(run_dir, tmp_path):
    runner = CliRunner()
    full = runner.invoke(cli, ["report", "--infer", str(run_dir / "infer"), "--prepared", str(run_dir / "prepared"),
                               "--model", str(run_dir / "model"), "--out", str(tmp_path / "full")])  # fmt: skip
    assert full.exit_code == 0, full.output
    for name in REPORT_PLOTS:
        assert (tmp_path / "full" / f"{name}.png").read_bytes() == (run_dir / "report" / f"{name}.png").read_bytes(), name

    only_infer = runner.invoke(cli, ["report", "--infer", str(run_dir / "infer"), "--out", str(tmp_path / "bare")])
    assert only_infer.exit_code == 0, only_infer.output
    made = {p.stem for p in (tmp_path / "bare").glob("*.png")}
    # the infer manifest names the model, so training curves and the pre-CRF gallery still work;
    # without the prepare output, class frequency and weights are left out with a note
    assert made == set(REPORT_PLOTS) - {"class_frequency", "class_weights"}
    assert "no prepare output" in (tmp_path / "bare" / "report.html").read_text()
    assert "no prepare output" in only_infer.output


def test_usage_errors(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["report"]).exit_code == 2  # neither RUN_DIR nor --infer/--out
    result = runner.invoke(cli, ["report", str(tmp_path / "nothing-here")])
    assert result.exit_code == 1 and "run `segops infer` first" in result.output

