"""`segops prepare` when things go wrong around it: killed with SIGKILL at several points and
rerun, a disk that fills up during the write (ENOSPC injected into Beam's local filesystem) and
an output path that cannot be written. After the rerun the shards hold every good pair exactly
once and no temporary file is left."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apache_beam.io.localfilesystem import LocalFileSystem
from click.testing import CliRunner
from conftest import make_dataset, subprocess_env
from test_prepare import read_records

from segops.cli import cli as main
from segops.core.records import decode_example

pytestmark = pytest.mark.slow
SPLITS = ("train", "val")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, set[str]]:
    """8 good pairs and one zero-byte image (dead-lettered); returns (root, good image paths)."""
    root = tmp_path_factory.mktemp("faults") / "raw"
    frames = make_dataset(root, {"train": 6, "val": 3}, seed=7)
    bad = frames[-1]
    (root / bad.image_rel).write_bytes(b"")
    return root, {f"{f.split}/{f.city}/{Path(f.image_rel).name}" for f in frames[:-1]}


def prepare_cmd(raw: Path, out: Path, shards: int) -> list[str]:
    return [sys.executable, "-m", "segops.cli", "prepare", str(raw), str(out), "--shards", str(shards)]


def kill_when(cmd: list[str], ready, timeout: float = 120.0) -> int:
    """Start ``cmd`` and SIGKILL it as soon as ``ready()`` holds; returns its exit status."""
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and not ready():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".tmp-" in p.name or "beam-temp-" in p.name)


def sources(out: Path) -> list[str]:
    """The image each record was made from, over every split (repeats kept)."""
    found = []
    for split in SPLITS:
        found += [decode_example(r)["source"].split("leftImg8bit/", 1)[-1] for r in read_records(out, split)]
    return found


def assert_complete(out: Path, good: set[str], shards: int) -> None:
    found = sources(out)
    assert len(found) == len(set(found)) == len(good) and set(found) == good
    for split in SPLITS:  # this run's shard count only: no shard of an earlier run survives
        assert sorted(p.name for p in (out / split).iterdir()) == [
            f"{split}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)
        ]
    assert leftovers(out) == []
    assert (out / "manifest.json").exists()


def test_prepare_killed_at_several_points_then_rerun_holds_every_good_pair_once(raw, tmp_path):
    root, good = raw
    out = tmp_path / "out"
    run = CliRunner().invoke(main, ["prepare", str(root), str(out), "--shards", "3"])
    assert run.exit_code == 0, run.output
    assert_complete(out, good, 3)
    # killed while the new shards are being written (Beam's temporary shard directory exists)
    status = kill_when(prepare_cmd(root, out, 2), lambda: bool(list(out.glob("*/beam-temp-*/*"))))
    assert status == -signal.SIGKILL
    assert leftovers(out) and not (out / "manifest.json").exists()  # incomplete, and says so
    # killed again once it is moving shards into place, or finishing (whichever it reaches first)
    kill_when(prepare_cmd(root, out, 2), lambda: bool(list(out.glob("*/*-of-00002.tfrecord"))))
    run = CliRunner().invoke(main, ["prepare", str(root), str(out), "--shards", "2"])
    assert run.exit_code == 0, run.output
    assert_complete(out, good, 2)


class FullDisk:
    """Beam's local filesystem as on a disk with ``free`` bytes left under ``root``: the write
    that passes the limit raises ENOSPC (after writing what fits, as a real full disk does)."""

    def __init__(self, root: Path, free: int) -> None:
        self.root, self.free = str(root), free

    def install(self, monkeypatch) -> None:
        original = LocalFileSystem.create
        disk = self

        class Limited:
            def __init__(self, f) -> None:
                self._f = f

            def write(self, data) -> int:
                if len(data) > disk.free:
                    self._f.write(bytes(data)[: disk.free])
                    disk.free = 0
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.free -= len(data)
                return self._f.write(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                self._f.close()

        def create(fs, path, *args, **kwargs):
            f = original(fs, path, *args, **kwargs)
            return Limited(f) if path.startswith(disk.root) else f

        monkeypatch.setattr(LocalFileSystem, "create", create)


def test_prepare_on_a_full_disk_fails_naming_the_path_and_a_rerun_after_freeing_space_completes(
    raw, tmp_path, monkeypatch
):
    root, good = raw
    out = tmp_path / "out"
    FullDisk(out, free=20_000).install(monkeypatch)  # a third of the shards fit
    run = CliRunner().invoke(main, ["prepare", str(root), str(out), "--shards", "2"])
    assert run.exit_code == 1
    assert "No space left on device" in run.output and str(out) in run.output
    assert "Traceback" not in run.output
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*/*.tfrecord"))  # no shard (whole or partial) is visible
    monkeypatch.undo()  # space freed
    run = CliRunner().invoke(main, ["prepare", str(root), str(out), "--shards", "2"])
    assert run.exit_code == 0, run.output
    assert_complete(out, good, 2)


def test_prepare_into_an_unwritable_output_fails_naming_it(raw, tmp_path):
    root, _ = raw
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "out"  # unwritable for every user, root included
    run = CliRunner().invoke(main, ["prepare", str(root), str(out)])
    assert run.exit_code == 1
    assert f"cannot write to {out}" in run.output and "Traceback" not in run.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory anyway")
def test_prepare_into_a_read_only_directory_fails_naming_it(raw, tmp_path):
    root, _ = raw
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        run = CliRunner().invoke(main, ["prepare", str(root), str(parent / "out")])
    finally:
        parent.chmod(0o700)
    assert run.exit_code == 1
    assert "cannot write to" in run.output and "Permission denied" in run.output
