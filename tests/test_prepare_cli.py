"""`segops prepare` on the command line: clear failures, and synth -> prepare end to end."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from segops.cli import cli


def _run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_missing_input_directory_is_a_usage_error(tmp_path):
    result = _run("prepare", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "input directory" in result.output and "does not exist" in result.output
    assert not (tmp_path / "out").exists()


def test_empty_listing_fails_with_a_clear_message(tmp_path):
    (tmp_path / "raw" / "leftImg8bit" / "train").mkdir(parents=True)
    result = _run("prepare", str(tmp_path / "raw"), str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "no Cityscapes images under" in result.output and "_leftImg8bit.png" in result.output
    assert not (tmp_path / "out").exists()


def test_unknown_option_is_rejected(tmp_path):
    result = _run("prepare", str(tmp_path), str(tmp_path / "out"), "--shard", "3")
    assert result.exit_code == 2
    assert "No such option '--shard'" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shards", "0"], "Invalid value for '--shards'"),
        (["--weight-scheme", "sqrt"], "Invalid value for '--weight-scheme'"),
        (["--sigma", "0"], "--sigma must be > 0"),
        (["--weights-split", "val"], "--weights-split val is not among the labelled splits"),
        (["--splits", "train,nope"], "split(s) nope not found"),
        (["stray"], "unexpected argument(s) stray"),
    ],
)
def test_bad_options_fail_before_any_work(tiny_dataset, tmp_path, args, message):
    root, _ = tiny_dataset
    (root / "gtFine" / "val").rename(tmp_path / "val-labels")  # no labelled val split
    (root / "leftImg8bit" / "val").rename(tmp_path / "val-images")
    result = _run("prepare", str(root), str(tmp_path / "out"), *args)
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_synth_then_prepare_end_to_end_with_two_worker_processes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run("synth", "data", "--train", "3", "--val", "2", "--test", "1", "--size", "64x128", "-q")
    assert result.exit_code == 0, result.output
    result = _run("prepare", "data", "prepared", "--weight-scheme", "enet", "--",
                  "--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = tmp_path / "prepared"
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s: v["records"] for s, v in manifest["splits"].items()} == {"train": 3, "val": 2, "test": 1}
    assert manifest["dead_letter"]["total"] == 0
    assert manifest["input"] == str(tmp_path / "data")
    for split, v in manifest["splits"].items():
        assert v["shards"] == [f"{split}/{split}-00000-of-00001.tfrecord"]
        assert (out / v["shards"][0]).stat().st_size > 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["splits"]["train"]["images"] == 3 and stats["splits"]["train"]["labelled_pixels"] > 0
    weights = json.loads((out / "class_weights.json").read_text())
    assert weights["default_scheme"] == "enet" and set(weights["schemes"]) == {"median_frequency", "enet", "inverse_frequency"}
    assert (out / "dead_letter.jsonl").read_text() == ""
    # the human summary
    assert "read 6 image(s)" in result.output
    assert "train" in result.output and "3 record(s) in 1 shard(s)" in result.output
    assert "dead-lettered: 0" in result.output
    assert "class distribution (train: 3 images" in result.output and "road" in result.output
