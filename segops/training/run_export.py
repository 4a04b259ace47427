"""The end of a training run: OUT/final (the last epoch), OUT/best (the best checkpoint) and
OUT/model.json, the float32 exports whatever the training precision (split from loop.py, which
owns the fitting)."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

from segops.core import fs, layout
from segops.core.formatting import finite_or_none
from segops.training.devices import dtype_policy
from segops.training.state import RunState, class_key

if TYPE_CHECKING:
    from segops.training.options import TrainOptions
    from segops.training.run_plan import Plan, TrainResult


def best_row(run: RunState) -> dict[str, Any]:
    return run.history[run.best_epoch - 1] if run.best_epoch else run.history[-1]



def float32_copy(model: Any, opts: TrainOptions) -> Any:
    """The same weights in a float32, uncompiled model (what exports hold, whatever the training
    precision; the .keras file then loads with plain Keras, no segops classes needed)."""
    with dtype_policy("float32"):
        copy = opts.model.build(pretrained=False, num_classes=int(model.outputs[0].shape[-1]))
    copy.set_weights(model.get_weights())
    return copy


def export_run(opts: TrainOptions, plan: Plan, model: Any, result: TrainResult) -> None:
    """OUT/final (the last epoch), OUT/best (the best checkpoint) and OUT/model.json naming best
    as the default export."""
    import keras

    from segops.models import export_dir

    run = plan.run
    training = {
        **run.recorded_options,
        "precision_used": plan.precision,
        "class_weight_scheme": plan.scheme,
        # the weights themselves: `segops infer --prior-correction` divides them back out
        "class_weights": plan.class_weights,
        "steps_per_epoch": plan.steps,
        "crop_used": list(opts.augment.crop),
        "hparams": opts.model.hparams(),
        "epochs_trained": result.epochs_trained,
        "stopped_early": run.stopped_early,
        "corrupt_records": run.corrupt.count,
        **({"budget_plan": run.extra_state["budget_plan"]} if "budget_plan" in run.extra_state else {}),
    }

    label_set = plan.data.label_set

    def info(row: dict[str, Any]) -> export_dir.ModelInfo:
        return export_dir.ModelInfo(
            architecture=opts.model.name,
            num_classes=label_set.num_classes,
            class_names=list(label_set.class_names),
            label_set=label_set.to_json(),
            input_size=tuple(opts.augment.crop),
            stride=opts.model.stride,
            training=training,
            metrics={
                "epoch": row["epoch"],
                "val_mean_iou": row.get("val_mean_iou"),
                "val_mean_dice": row.get("val_mean_dice"),
                "val_loss": row.get("val_loss"),
                "val_iou_per_class": {n: row.get("val_" + class_key(n)) for n in label_set.class_names},
                "best_val_mean_iou": finite_or_none(result.best_val_mean_iou),
            },
        )

    best = best_row(run)
    final_dir = os.path.join(opts.out, layout.FINAL_EXPORT)
    final_info = export_dir.export_model(float32_copy(model, opts), final_dir, info(run.history[-1]))
    best_dir = os.path.join(opts.out, layout.BEST_EXPORT)
    if best["epoch"] == run.history[-1]["epoch"]:  # the same weights and row: copy, do not export again
        shutil.copytree(final_dir, best_dir, dirs_exist_ok=True)
        best_info = final_info
    else:
        best_model = keras.saving.load_model(run.checkpoint_path(best["epoch"]), compile=False, safe_mode=True)
        best_info = export_dir.export_model(float32_copy(best_model, opts), best_dir, info(best))
    summary = {
        "default_export": layout.BEST_EXPORT,
        "best": {"dir": layout.BEST_EXPORT, "model_id": best_info.model_id, **best_info.metrics},
        "final": {"dir": layout.FINAL_EXPORT, "model_id": final_info.model_id, **final_info.metrics},
        "architecture": opts.model.name,
        "epochs_trained": result.epochs_trained,
        "stopped_early": run.stopped_early,
        "corrupt_records": run.corrupt.count,
        "history": layout.HISTORY_JSON,
        "training": training,
    }
    fs.write_json_atomic(os.path.join(opts.out, layout.MODEL_JSON), summary)
