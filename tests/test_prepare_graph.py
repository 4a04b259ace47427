"""The prepare pipeline graph is built from patterns: it holds no input path and does not grow with the input."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
from conftest import make_dataset

from segops.prepare.options import PrepareOptions
from workflows.prepare import build_prepare_pipeline


def _graph(root: Path, out: Path) -> bytes:
    p = beam.Pipeline()
    build_prepare_pipeline(p, PrepareOptions(input=str(root), output=str(out)))
    return p.to_runner_api().SerializeToString()


def test_graph_does_not_grow_from_3_to_30_pairs_and_names_no_input_file(tmp_path):
    frames = make_dataset(tmp_path / "a", {"train": 3}, height=16, width=32)
    make_dataset(tmp_path / "b", {"train": 20, "val": 10}, height=16, width=32)
    small, large = _graph(tmp_path / "a", tmp_path / "out"), _graph(tmp_path / "b", tmp_path / "out")
    assert abs(len(large) - len(small)) < 500  # pickled closures vary by tens of bytes; a pair adds ~200
    for frame in frames:
        assert frame.frame_id.encode() not in small
