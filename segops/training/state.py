"""What a training run has done, on disk: one row per epoch (``history.json``/``.csv``), the
best epoch, the checkpoints (the last and the best kept) and ``checkpoints/state.json``, the
commit point a ``--resume`` continues from (:class:`RunState`, :func:`check_resume`).

state.json is written after the checkpoint it names, so an interruption at any point leaves a
consistent pair.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
from typing import Any, Protocol

from segops.core import fs, layout
from segops.core.formatting import finite_or_none, is_missing
from segops.training.options import RECORDED_BEFORE, RESUME_FREE_OPTIONS, TrainError, TrainOptions
from segops.training.prepared import read_json

log = logging.getLogger(__name__)


class Counted(Protocol):
    @property
    def count(self) -> int: ...


def class_key(name: str) -> str:
    """History key of a class's IoU (``val_`` + this for validation): ``iou_traffic_light``."""
    return "iou_" + name.replace(" ", "_")


def state_path(out: str) -> str:
    return os.path.join(out, layout.CHECKPOINT_DIR, layout.TRAIN_STATE_FILE)


def check_resume(opts: TrainOptions, out: str) -> None:
    """Refuse to train into a directory holding a run unless ``--resume`` is given, and to
    resume with options that change the result of the remaining epochs."""
    path = state_path(out)
    if os.path.exists(path) and not opts.resume:
        raise TrainError(f"{opts.out} already holds a training run: pass --resume to continue it, or another OUT")
    if opts.resume and os.path.exists(path):
        saved = read_json(path, "checkpoint state")["options"]
        mine = opts.to_json()
        # A key the saved run lacks is an option added since: that run used its default.
        defaults = {**type(opts).from_flat(prepared=opts.prepared, out=opts.out).to_json(), **RECORDED_BEFORE}
        saved = {k: saved.get(k, defaults[k]) for k in mine}
        differ = [k for k in mine if k not in RESUME_FREE_OPTIONS and saved[k] != mine[k]]
        if differ:
            raise TrainError(
                "--resume needs the options of the interrupted run; these differ: "
                + ", ".join(f"{k} (was {saved[k]!r}, now {mine[k]!r})" for k in differ)
            )
    elif opts.resume:
        log.warning("--resume: no checkpoint in %s, starting from scratch", out)


class RunState:
    """State of one training run: history, best epoch, checkpoint files."""

    def __init__(self, opts: TrainOptions, out: str, is_chief: bool, corrupt: Counted,
                 recorded: TrainOptions | None = None) -> None:  # fmt: skip
        self.opts = opts
        # The options as given (a --time-budget run trains opts, its plan applied, but records these).
        self.recorded_options = (recorded or opts).to_json()
        self.out = out
        self.is_chief = is_chief
        self.corrupt = corrupt
        self.ckpt_dir = os.path.join(out, layout.CHECKPOINT_DIR)
        self.history: list[dict[str, Any]] = []
        self.best_epoch = 0
        self.best_miou = float("-inf")
        self.stopped_early = False
        self.budget_ended = False  # a --time-budget plan ended the run before opts' epochs
        self.extra_state: dict[str, Any] = {}  # more keys for state.json (precision, class-weight scheme)

    def checkpoint_path(self, epoch: int) -> str:
        return os.path.join(self.ckpt_dir, layout.checkpoint_name(epoch))

    def load_state(self) -> dict[str, Any] | None:
        """The saved state.json (history and best epoch taken over), or None when there is none."""
        path = state_path(self.out)
        if not os.path.exists(path):
            return None
        state = read_json(path, "checkpoint state")
        self.history = state["history"]
        self.best_epoch = state["best_epoch"]
        best = state.get("best_val_mean_iou")
        self.best_miou = float("-inf") if best is None else best
        return state

    def end_epoch(self, model: Any, epoch: int, logs: dict[str, Any], extra: dict[str, float]) -> None:
        """Record epoch ``epoch`` (0-based), checkpoint it, keep the last and best checkpoints,
        and stop training when early stopping says so."""
        done = epoch + 1
        logs = {k: v for k, v in logs.items() if k != "learning_rate"}  # TensorBoard's copy of lr
        row = {"epoch": done, **{k: finite_or_none(v) for k, v in {**logs, **extra}.items()}}
        self.history.append(row)
        miou = logs.get("val_mean_iou", float("nan"))
        improved = not is_missing(float(miou)) and miou > self.best_miou
        if improved:
            self.best_epoch, self.best_miou = done, float(miou)
        os.makedirs(self.ckpt_dir, exist_ok=True)
        tmp = self.checkpoint_path(done) + ".tmp.keras"
        model.save(tmp)  # every worker saves (variables may need a collective read); chief's is kept
        os.replace(tmp, self.checkpoint_path(done))
        self.write_state(done)
        for path in glob.glob(os.path.join(self.ckpt_dir, layout.CHECKPOINT_GLOB)):
            if path not in (self.checkpoint_path(done), self.checkpoint_path(self.best_epoch)):
                os.remove(path)
        patience = self.opts.optim.early_stopping
        if patience and done - self.best_epoch >= patience:
            log.info("early stopping: val mIoU has not improved for %d epochs", patience)
            self.stopped_early = True
            model.stop_training = True

    def write_state(self, done: int) -> None:
        state = {
            "epoch": done,
            "checkpoint": layout.checkpoint_name(done),
            "seed": self.opts.seed,
            "options": self.recorded_options,
            "best_epoch": self.best_epoch,
            "best_val_mean_iou": finite_or_none(self.best_miou),
            "stopped_early": self.stopped_early,
            "corrupt_records": self.corrupt.count,
            "history": self.history,
            **self.extra_state,
        }
        fs.write_json_atomic(state_path(self.out), state)
        self.write_history()

    def write_history(self) -> None:
        fs.write_json_atomic(os.path.join(self.out, layout.HISTORY_JSON), self.history)
        keys: list[str] = []
        for row in self.history:
            keys.extend(k for k in row if k not in keys)
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
        fs.write_bytes_atomic(os.path.join(self.out, layout.HISTORY_CSV), text.getvalue().encode())
