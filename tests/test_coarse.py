"""Coarse annotations end to end on a tiny synthetic dataset: `segops synth --coarse` writes
gtCoarse/ in the official names with coarser labels, `segops prepare --annotations fine+coarse`
writes both kinds (kind in every record and in stats.json) while fine-only outputs stay what they
were, and training samples the kinds in the asked ratio, or coarse first, then fine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import read_png, tree_bytes

from segops.core import labels, layout, records
from segops.core.labels import LABEL_ID_TO_TRAIN_ID
from segops.datasets import synth
from segops.prepare.options import PrepareOptions
from workflows.prepare import run_prepare

H, W = 64, 128
COUNTS = {"train": 4, "val": 2, "test": 1, layout.TRAIN_EXTRA_SPLIT: 3}
FINE_COUNTS = {s: n for s, n in COUNTS.items() if s in synth.SPLITS}
COARSE_SUFFIXES = ("gtCoarse_labelIds.png", "gtCoarse_instanceIds.png", "gtCoarse_color.png",
                   "gtCoarse_polygons.json")  # fmt: skip


def _records(out: Path, part: str) -> list[bytes]:
    import tensorflow as tf

    files = sorted(str(p) for p in (out / part).glob(f"{layout.part_split(part)}-*-of-*.tfrecord"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coarse_synth")
    synth.generate_dataset(str(root), COUNTS, height=H, width=W, coarse=True)
    return root


@pytest.fixture(scope="module")
def prepared(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same input prepared with fine+coarse and with fine (the default)."""
    out = {}
    for kinds in ("fine+coarse", "fine"):
        out[kinds] = tmp_path_factory.mktemp(kinds.replace("+", "_"))
        run_prepare(PrepareOptions(str(data), str(out[kinds]), annotations=kinds, shards=2))
    return out


def test_synth_writes_gtcoarse_in_the_official_layout(data: Path) -> None:
    files = set(tree_bytes(data))
    for split, n in COUNTS.items():
        stems = sorted((p.parent.name, p.name[: -len(layout.IMAGE_SUFFIX)])
                       for p in (data / layout.IMAGE_DIR / split).glob("*/*" + layout.IMAGE_SUFFIX))  # fmt: skip
        assert len(stems) == n
        for city, stem in stems:
            coarse = {f"gtCoarse/{split}/{city}/{stem}_{suffix}" for suffix in COARSE_SUFFIXES}
            fine = f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png"
            # gtCoarse for train, val and train_extra (as the real download), gtFine not for train_extra
            assert coarse <= files if split != "test" else not coarse & files, (split, stem)
            assert (fine in files) == (split != layout.TRAIN_EXTRA_SPLIT), (split, stem)
            if split == layout.TRAIN_EXTRA_SPLIT:
                assert city in synth.CITIES[layout.TRAIN_EXTRA_SPLIT]


def test_coarse_labels_are_fine_labels_with_more_void(data: Path) -> None:
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    fine_void, coarse_void = [], []
    for path in sorted((data / "gtCoarse").glob("[tv]*/*/*_gtCoarse_labelIds.png")):
        coarse = read_png(path)
        assert coarse.shape == (H, W) and coarse.dtype == np.uint8
        np.testing.assert_array_equal(read_png(Path(str(path).replace("labelIds", "instanceIds"))), coarse)
        if "train_extra" in path.parts:
            continue
        fine = read_png(Path(str(path).replace("gtCoarse", "gtFine")))
        labelled = coarse > 0
        assert labelled.mean() > 0.2  # still a usable label
        # every pixel the coarse labels give a class has that class in the fine labels
        np.testing.assert_array_equal(coarse[labelled], fine[labelled])
        fine_t, coarse_t = LABEL_ID_TO_TRAIN_ID[fine], LABEL_ID_TO_TRAIN_ID[coarse]
        fine_void.append((fine_t == labels.IGNORE_ID).mean())
        coarse_void.append((coarse_t == labels.IGNORE_ID).mean())
        assert coarse_void[-1] > fine_void[-1] + 0.1, path.name
        assert set(np.unique(coarse_t)) <= set(np.unique(fine_t))
    assert len(coarse_void) == COUNTS["train"] + COUNTS["val"]
    # the polygons document rasterises (cityscapesScripts) to the labelIds
    path = sorted((data / "gtCoarse" / "train").glob("*/*_gtCoarse_polygons.json"))[0]
    out = path.parent / "check_labelIds.png"
    json2labelImg(str(path), str(out), "ids")
    agree = (read_png(out) == read_png(Path(str(path).replace("polygons.json", "labelIds.png")))).mean()
    out.unlink()
    assert agree > 0.995


def test_synth_fine_files_do_not_change_with_coarse(data: Path, tmp_path: Path) -> None:
    synth.generate_dataset(str(tmp_path), FINE_COUNTS, height=H, width=W)
    fine_only, with_coarse = tree_bytes(tmp_path), tree_bytes(data)
    del fine_only[layout.SYNTH_MANIFEST_FILE]
    for name, content in fine_only.items():
        assert with_coarse[name] == content, name
    extra = set(with_coarse) - set(fine_only) - {layout.SYNTH_MANIFEST_FILE}
    assert all(n.startswith(("gtCoarse/", f"leftImg8bit/{layout.TRAIN_EXTRA_SPLIT}/")) for n in extra)
    with pytest.raises(ValueError, match="coarse annotations only"):
        synth.generate_dataset(str(tmp_path / "x"), {layout.TRAIN_EXTRA_SPLIT: 1}, height=H, width=W)


def test_discovery_lists_one_part_per_split_and_kind(data: Path, tmp_path: Path) -> None:
    from segops.datasets.cityscapes import DiscoveryError, discover

    fine = discover(str(data))  # the default ignores gtCoarse/ and skips train_extra, as before
    assert fine.splits == ["train", "val", "test"] and "train_extra" in fine.skipped
    assert {p.annotation for p in fine.pairs} == {"fine"}
    coarse = discover(str(data), annotations=("coarse",))
    assert coarse.splits == ["test", "coarse/train", "coarse/val", "coarse/train_extra"]
    assert {p.part: p.label.endswith("_gtCoarse_labelIds.png") for p in coarse.pairs if p.labelled} == {
        "coarse/train": True, "coarse/val": True, "coarse/train_extra": True}  # fmt: skip
    both = discover(str(data), annotations=("fine", "coarse"))
    assert len(both.pairs) == len(fine.pairs) + len(coarse.pairs) - COUNTS["test"]
    assert both.fingerprint != fine.fingerprint  # the gtCoarse files are inputs too
    synth.generate_dataset(str(tmp_path), {"train": 1}, height=H, width=W)
    with pytest.raises(DiscoveryError, match="synth --coarse"):
        discover(str(tmp_path), annotations=("fine", "coarse"))


def test_prepare_fine_plus_coarse_writes_both_kinds(data: Path, prepared: dict[str, Path]) -> None:
    out = prepared["fine+coarse"]
    manifest = json.loads((out / "manifest.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    counts = {part: (s["records"], s["annotation"]) for part, s in manifest["splits"].items()}
    assert counts == {"train": (4, "fine"), "val": (2, "fine"), "test": (1, "none"), "coarse/train": (4, "coarse"),
                      "coarse/val": (2, "coarse"), "coarse/train_extra": (3, "coarse")}  # fmt: skip
    kind_of = {"train": "fine", "val": "fine", "test": "none"}
    for part, (n, kind) in counts.items():
        recs = [records.decode_example(r) for r in _records(out, part)]
        assert len(recs) == n
        assert {r["annotation"] for r in recs} == {kind_of.get(part, "coarse")}
        assert {r["split"] for r in recs} == {layout.part_split(part)}
        if kind != "coarse":
            continue
        pixel_counts = np.zeros(labels.NUM_CLASSES, np.int64)
        for r in recs:  # the record's label is the gtCoarse file's, in trainIds
            src = data / r["source"].replace(layout.IMAGE_DIR, "gtCoarse", 1)
            coarse_t = LABEL_ID_TO_TRAIN_ID[read_png(Path(str(src).replace("_leftImg8bit.png", "_gtCoarse_labelIds.png")))]
            np.testing.assert_array_equal(r["label"], coarse_t)
            pixel_counts += np.bincount(coarse_t.ravel(), minlength=256)[: labels.NUM_CLASSES]
        assert stats["splits"][part]["pixel_counts"] == pixel_counts.tolist()
    per_kind = stats["annotations"]
    assert per_kind["fine"]["splits"] == ["train", "val"] and per_kind["fine"]["images"] == 6
    assert per_kind["coarse"]["splits"] == ["coarse/train", "coarse/val", "coarse/train_extra"]
    assert per_kind["coarse"]["images"] == 9
    share = {k: v["ignore_pixels"] / v["total_pixels"] for k, v in per_kind.items()}
    assert share["coarse"] > share["fine"] + 0.1
    assert json.loads((out / "class_weights.json").read_text())["source_split"] == "train"  # fine train


def test_fine_only_outputs_are_unchanged(prepared: dict[str, Path]) -> None:
    from tensorflow.core.example import example_pb2

    fine, both = prepared["fine"], prepared["fine+coarse"]
    assert not (fine / layout.COARSE_PARTS_DIR).exists()
    for part in ("train", "val", "test"):
        plain = {records.decode_example(r)["frame_id"]: r for r in _records(fine, part)}
        tagged = {records.decode_example(r)["frame_id"]: r for r in _records(both, part)}
        assert plain and set(plain) == set(tagged)
        for frame_id, raw in plain.items():
            assert records.ANNOTATION_KEY not in example_pb2.Example.FromString(raw).features.feature
            assert records.decode_example(raw)["annotation"] == "fine"  # old records read as fine
            # the only difference to the same record of a fine+coarse run is the kind
            ex = example_pb2.Example.FromString(tagged[frame_id])
            del ex.features.feature[records.ANNOTATION_KEY]
            assert ex.SerializeToString(deterministic=True) == raw
    assert (fine / "class_weights.json").read_bytes() == (both / "class_weights.json").read_bytes()
    stats_fine, stats_both = (json.loads((d / "stats.json").read_text()) for d in (fine, both))
    assert "annotations" not in stats_fine
    assert stats_fine["splits"] == {k: v for k, v in stats_both["splits"].items() if "/" not in k}
    import tensorflow as tf

    assert records.parse_example_tf(tf.constant(raw))["annotation"].numpy() == b"fine"


def _kinds(prepared: Path, mix, epoch: int, seed: int = 0, examples: int = 40) -> list[str]:
    """The annotation kind of each training record of ``epoch`` as the training stream yields them."""
    import tensorflow as tf

    from segops.training import input_pipeline as ip
    from segops.training import sampling
    from segops.training.options import PipelineConfig

    fine = sampling.Source(tuple(ip.shard_paths(str(prepared), "train")), 4)
    coarse_files = [f for s in ("train", layout.TRAIN_EXTRA_SPLIT) for f in ip.shard_paths(str(prepared), f"coarse/{s}")]
    coarse = sampling.Source(tuple(sorted(coarse_files)), 7)
    reader = ip.ShardReader(ip.CorruptRecords())
    ds = sampling.epoch_records(sampling.epoch_key(seed, epoch), epoch, fine, coarse, mix, reader,
                                PipelineConfig(batch_size=4), examples)  # fmt: skip
    spec = {records.ANNOTATION_KEY: records.feature_spec()[records.ANNOTATION_KEY]}
    ds = ds.map(lambda r: tf.io.parse_single_example(r, spec)[records.ANNOTATION_KEY]).take(examples)
    return [k.decode() for batch in ds.batch(4) for k in batch.numpy()]


def test_training_samples_the_kinds_in_the_ratio(prepared: dict[str, Path]) -> None:
    from segops.training.options import AnnotationMix

    out = prepared["fine+coarse"]
    mix = AnnotationMix(coarse_ratio=0.25)
    kinds = _kinds(out, mix, epoch=0, examples=240)
    assert len(kinds) == 240
    # binomial(240, 0.25): mean 60, sd 6.7 coarse examples; 4 sd either side
    assert 60 - 27 <= kinds.count("coarse") <= 60 + 27
    assert _kinds(out, mix, epoch=0) == kinds[:40]  # a function of (seed, epoch)
    assert _kinds(out, mix, epoch=1) != kinds[:40]
    assert _kinds(out, mix, epoch=0, seed=1) != kinds[:40]
    assert set(_kinds(out, AnnotationMix(coarse_ratio=1.0), epoch=0)) == {"coarse"}


def test_coarse_first_then_fine_switches_at_the_epoch(prepared: dict[str, Path]) -> None:
    from segops.training.options import AnnotationMix

    mix = AnnotationMix(coarse_epochs=2)
    assert [set(_kinds(prepared["fine+coarse"], mix, epoch=e)) for e in range(3)] == [
        {"coarse"}, {"coarse"}, {"fine"}]  # fmt: skip


def test_train_cli_coarse_then_fine(prepared: dict[str, Path], tmp_path: Path) -> None:
    from segops.cli import cli

    out = tmp_path / "model"
    args = ["train", str(prepared["fine+coarse"]), str(out), "--epochs", "2", "--coarse-epochs", "1",
            "--coarse-ratio", "0.5", "--crop", "32x64", "--model", "unet", "--depth", "1", "--base-filters", "4", "--batch-size", "2",
            "--steps-per-epoch", "2", "--no-export", "--no-progress", "--scale-range", "1,1"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    state = json.loads((out / layout.CHECKPOINT_DIR / layout.TRAIN_STATE_FILE).read_text())
    assert [row["epoch"] for row in state["history"]] == [1, 2]
    assert all(row["val_mean_iou"] is not None for row in state["history"])  # validated on fine val
    assert (state["options"]["coarse_ratio"], state["options"]["coarse_epochs"]) == (0.5, 1)
    # coarse asked for where none was prepared: a clear error before any model is built
    result = CliRunner().invoke(cli, ["train", str(prepared["fine"]), str(tmp_path / "x"), "--coarse-ratio", "0.5",
                                      "--crop", "32x64", "--model", "unet", "--depth", "2"])  # fmt: skip
    assert result.exit_code == 2 and "--annotations fine+coarse" in result.output
    result = CliRunner().invoke(cli, ["train", str(prepared["fine"]), str(tmp_path / "y"), "--epochs", "2",
                                      "--coarse-epochs", "2", "--crop", "32x64", "--model", "unet", "--depth", "2"])  # fmt: skip
    assert result.exit_code == 2 and "must be less than --epochs" in result.output


def test_resume_of_a_run_from_before_the_coarse_options(tmp_path: Path) -> None:
    from segops.training.options import TrainError, TrainOptions
    from segops.training.state import check_resume, state_path

    opts = TrainOptions.from_flat(prepared="p", out=str(tmp_path), resume=True)
    old = {k: v for k, v in opts.to_json().items() if not k.startswith("coarse_")}
    Path(state_path(str(tmp_path))).parent.mkdir(parents=True)
    Path(state_path(str(tmp_path))).write_text(json.dumps({"options": old}))
    check_resume(opts, str(tmp_path))  # absent options had their defaults
    with pytest.raises(TrainError, match="coarse_ratio"):
        check_resume(TrainOptions.from_flat(prepared="p", out=str(tmp_path), resume=True, coarse_ratio=0.5),
                     str(tmp_path))  # fmt: skip
