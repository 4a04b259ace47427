"""`segops demo` at tiny size: every stage through its own CLI, printed commands that reproduce
each stage alone, reuse of finished stages on a rerun, redo of changed ones.

The run made here is cached for the whole session (tests/test_report.py reports on it too).
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from filelock import FileLock

from segops.cli import cli

pytestmark = pytest.mark.slow

TINY = ["--train", "6", "--val", "4", "--size", "64x128", "--epochs", "2"]
STAGES = ("synth", "prepare", "train", "infer", "report")


def run_demo(run_dir: Path, extra: list[str] | None = None) -> str:
    result = CliRunner().invoke(cli, ["demo", str(run_dir), *TINY, *(extra or [])], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def tiny_demo(factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(RUN_DIR, what the first `segops demo` printed), made once per session and shared by the
    xdist workers (test_demo and test_report run on different ones): the first to ask makes it, the
    other waits on the lock. Tests only read it; one that reruns the demo works on a copy."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's directory, above each worker's own
    run_dir = base / "tiny-demo"
    log = base / "tiny-demo.out"
    with FileLock(str(base / "tiny-demo.lock")):
        if not log.exists():
            log.write_text(run_demo(run_dir))
    return run_dir, log.read_text()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, str]:
    return tiny_demo(tmp_path_factory)


def copy_run(run_dir: Path, copy: Path) -> dict:
    """A copy of the shared run at ``copy`` with demo.json's paths moved along; its state."""
    shutil.copytree(run_dir, copy)
    state = json.loads((copy / "demo.json").read_text().replace(str(run_dir), str(copy)))
    (copy / "demo.json").write_text(json.dumps(state))
    return state


def printed_commands(output: str) -> dict[str, list[str]]:
    """The 'run any stage alone' lines: stage -> argv after `segops`."""
    tail = output.split("run any stage alone with the same result:", 1)[1]
    commands = {}
    for line in tail.strip().splitlines():
        argv = shlex.split(line.strip())
        assert argv[0] == "segops", line
        commands[argv[1]] = argv[1:]
    return commands


def test_demo_runs_every_stage_and_says_where_everything_is(demo_run):
    run_dir, out = demo_run
    for i, stage in enumerate(STAGES, 1):
        assert re.search(rf"\[{i}/5\] {stage}: segops {stage} ", out), stage
        assert f"--- {stage} took" in out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out  # per-epoch progress from training
    for marker in ("data/segops_synth.json", "prepared/manifest.json", "model/model.json", "infer/summary.json",
                   "report/report.html"):  # fmt: skip
        assert (run_dir / marker).is_file(), marker
    summary = json.loads((run_dir / "infer" / "summary.json").read_text())
    assert summary["labelled_images"] == 4 and summary["crf_images"] == 4
    before, after = summary["before_crf"]["dataset_miou"], summary["after_crf"]["dataset_miou"]
    assert re.search(rf"val mIoU \(dataset\)\s+model {before:.4f}\s+\+ CRF {after:.4f}", out)
    assert str((run_dir / "report" / "report.html").resolve()) in out
    assert set(printed_commands(out)) == set(STAGES)


def test_printed_synth_prepare_infer_commands_alone_give_the_same_result(demo_run, tmp_path):
    run_dir, out = demo_run
    commands = printed_commands(out)
    runner = CliRunner()

    def rerun(stage: str, old: Path, new: Path) -> None:
        argv = [str(new) if a == str(old) else a for a in commands[stage]]
        assert str(new) in argv
        result = runner.invoke(cli, argv, catch_exceptions=False)
        assert result.exit_code == 0, result.output

    rerun("synth", run_dir / "data", tmp_path / "data")
    cmp = filecmp.dircmp(run_dir / "data", tmp_path / "data")
    files = sorted(p.relative_to(run_dir / "data") for p in (run_dir / "data").rglob("*") if p.is_file())
    assert files and all((run_dir / "data" / f).read_bytes() == (tmp_path / "data" / f).read_bytes() for f in files)
    assert not cmp.left_only and not cmp.right_only

    rerun("prepare", run_dir / "prepared", tmp_path / "prepared")
    for name in ("stats.json", "class_weights.json"):
        assert json.loads((tmp_path / "prepared" / name).read_text()) == json.loads((run_dir / "prepared" / name).read_text())

    rerun("infer", run_dir / "infer", tmp_path / "infer")
    masks = sorted(p.relative_to(run_dir / "infer") for p in (run_dir / "infer" / "masks").rglob("*.png"))
    assert len(masks) == 4 * 3
    assert all((run_dir / "infer" / m).read_bytes() == (tmp_path / "infer" / m).read_bytes() for m in masks)
    a, b = (json.loads((d / "infer" / "summary.json").read_text()) for d in (run_dir, tmp_path))
    a.pop("run_id"), b.pop("run_id")
    assert a == b


def test_a_rerun_reuses_finished_stages(demo_run, tmp_path):
    run_dir = tmp_path / "run"
    state = copy_run(demo_run[0], run_dir)  # the rerun rewrites the report, which test_report reads
    mtime = (run_dir / "model" / "model.json").stat().st_mtime_ns
    out = run_demo(run_dir)
    for stage in ("synth", "prepare", "train", "infer"):
        assert re.search(rf"\[\d/5\] {stage}: .*\nreusing ", out), stage
    assert "--- report took" in out  # the report is always rewritten (cheap)
    assert json.loads((run_dir / "demo.json").read_text()) == state
    assert (run_dir / "model" / "model.json").stat().st_mtime_ns == mtime


def test_what_a_rerun_does_with_each_stage(tmp_path):
    from segops.commands.demo import decide, plan_stages

    stages = {s.name: s for s in plan_stages(str(tmp_path), 6, 4, (64, 128), 2, progress=False)}
    train = stages["train"]
    Path(train.done_marker).parent.mkdir(parents=True)
    Path(train.done_marker).write_text("{}")
    done = {"args": train.args, "done": True}
    assert decide(train, done, redo_rest=False) == "reuse"
    assert decide(train, {"args": [*train.args[:-1], "--progress"], "done": True}, redo_rest=False) == "reuse"
    assert decide(train, done, redo_rest=True) == "redo"  # an earlier stage was redone
    assert decide(train, {"args": ["--epochs", "1"], "done": True}, redo_rest=False) == "redo"  # options changed
    assert decide(train, None, redo_rest=False) == "redo"  # never ran
    assert decide(train, {"args": train.args, "done": False}, redo_rest=False) == "continue"  # interrupted
    Path(train.done_marker).unlink()
    assert decide(train, done, redo_rest=False) == "continue"  # output incomplete


def test_an_interrupted_training_is_continued(demo_run, tmp_path):
    """Only the checkpoints of epoch 1 survive (killed during epoch 2): the rerun resumes."""
    run_dir, _ = demo_run
    copy = tmp_path / "run"
    state = copy_run(run_dir, copy)
    shutil.rmtree(copy / "model")
    shutil.rmtree(copy / "infer")
    shutil.rmtree(copy / "report")
    # demo.json as the killed demo left it: train started, not done; nothing after it
    state["stages"] = {k: v for k, v in state["stages"].items() if k in ("synth", "prepare", "train")}
    state["stages"]["train"]["done"] = False
    (copy / "demo.json").write_text(json.dumps(state))
    kill_after_first_epoch(printed_commands(demo_run[1])["train"], run_dir, copy)
    out = run_demo(copy)
    assert "continuing the interrupted training run" in out
    assert "Epoch 2/2" in out and "Epoch 1/2" not in out
    history = json.loads((copy / "model" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert (copy / "report" / "report.html").exists()


def kill_after_first_epoch(train_argv: list[str], run_dir: Path, copy: Path) -> None:
    """Run the demo's own `segops train` command line (options parsed by its click command) and stop
    it after epoch 1's checkpoint, leaving what a kill during epoch 2 leaves."""
    import keras

    from segops.commands.train import command as train_command
    from segops.training.loop import train
    from segops.training.options import TrainOptions

    argv = [a.replace(str(run_dir), str(copy)) for a in train_argv[1:] if a not in ("--progress", "--no-progress")]
    params = train_command.make_context("segops train", argv).params
    prepared, out = params.pop("prepared"), params.pop("out")
    params.pop("progress")

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    train(TrainOptions.from_flat(prepared=prepared, out=out, verbose=2, **{**params, "export": False}), extra_callbacks=[Kill()])
    assert json.loads((copy / "model" / "checkpoints" / "state.json").read_text())["epoch"] == 1
    assert not (copy / "model" / "model.json").exists()


def test_a_directory_not_made_by_the_demo_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["demo", str(tmp_path), *TINY])
    assert result.exit_code == 2 and "not made by `segops demo`" in result.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_the_default_demo_trains_under_the_time_budget_and_epochs_override_it(tmp_path):
    from segops.commands.demo import DEMO_TRAIN_MINUTES, plan_stages

    budgeted = {s.name: s for s in plan_stages(str(tmp_path), 6, 4, (64, 128), None, progress=False)}["train"]
    fixed = {s.name: s for s in plan_stages(str(tmp_path), 6, 4, (64, 128), 3, progress=False)}["train"]
    assert budgeted.args[budgeted.args.index("--time-budget") + 1] == f"{DEMO_TRAIN_MINUTES:g}"
    assert "--epochs" not in budgeted.args
    assert fixed.args[fixed.args.index("--epochs") + 1] == "3" and "--time-budget" not in fixed.args
