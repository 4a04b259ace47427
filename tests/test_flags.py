"""Options are declared once: the commands' flags are generated from the options dataclasses'
field metadata (segops.core.options.flag, segops.commands.flags), so a flag's default is the
field's default and a new field is a new flag."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import click
import pytest
from click.testing import CliRunner

from segops.cli import cli
from segops.commands.flags import options_from
from segops.core.options import FLAG_PREFIX, NOT_ON_CLI, FlatOptions, flag, flag_fields
from segops.inference.crf import CRFParams


def leaf(name: str) -> click.Command:
    cmd: click.Command = cli
    for part in name.split():
        assert isinstance(cmd, click.Group)
        found = cmd.get_command(click.Context(cmd), part)
        assert found is not None, name
        cmd = found
    return cmd


def parsed_defaults(name: str, args: list[str]) -> dict[str, Any]:
    """The keywords command ``name`` gets from the command line ``args`` (callbacks run)."""
    return dict(leaf(name).make_context(name, list(args)).params)


def options_class(name: str) -> type:
    from segops.datasets.synth import SynthOptions
    from segops.inference.options import InferOptions
    from segops.prepare.options import PrepareOptions
    from segops.review.export import ExportOptions
    from segops.review.select import SelectOptions
    from segops.training.options import TrainOptions

    return {"train": TrainOptions, "infer": InferOptions, "prepare": PrepareOptions, "synth": SynthOptions,
            "review select": SelectOptions, "review export": ExportOptions}[name]  # fmt: skip


# command, its arguments, and the keywords that make its options valid (set on both sides)
COMMANDS = [
    ("train", ["PREP", "OUT"], {"prepared": "PREP", "out": "OUT"}),
    ("infer", ["MODEL", "IN", "OUT"], {"model_dir": "MODEL", "input": "IN", "output": "OUT", "run_id": "r1"}),
    ("prepare", ["IN", "OUT"], {"input": "IN", "output": "OUT"}),
    ("synth", ["OUT"], {}),
    ("review select", ["INFER_OUT"], {"lowest_confidence": 1}),  # at least one rule is required
    ("review export", ["INFER_OUT"], {}),
]


@pytest.mark.parametrize(("name", "args", "required"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_generated_flag_defaults_to_its_dataclass_default(name: str, args: list[str], required: dict) -> None:
    cls = options_class(name)
    flags = {ff.name for ff in flag_fields(cls)}
    given = {k: v for k, v in parsed_defaults(name, args).items() if k in flags}
    assert set(given) == flags  # every flag field is an option of the command
    assert cls.from_flat(**{**given, **required}).to_flat() == cls.from_flat(**required).to_flat()


def test_every_crf_parameter_is_an_infer_flag() -> None:
    options = {opt for p in leaf("infer").params for opt in p.opts}
    for f in dataclasses.fields(CRFParams):
        if f.metadata.get("cli", True) is not None:  # NOT_ON_CLI: a tuning knob the CLI leaves alone
            assert "--crf-" + f.name.replace("_", "-") in options, f.name


@dataclass(frozen=True)
class _MoreCRF(CRFParams):
    edge_boost: float = field(default=0.5, metadata=flag("A throwaway CRF parameter.", low=0))


@dataclass(frozen=True)
class _Options(FlatOptions):
    crf_params: _MoreCRF = field(default_factory=_MoreCRF, metadata={FLAG_PREFIX: "crf_"})


@click.command()
@options_from(_Options)
def _show(**kw: Any) -> None:
    click.echo(repr(_Options.from_flat(**kw).crf_params))


def test_a_new_crf_field_is_a_new_crf_flag() -> None:
    runner = CliRunner()
    assert "--crf-edge-boost FLOAT RANGE" in runner.invoke(_show, ["--help"]).output
    assert "A throwaway CRF parameter." in runner.invoke(_show, ["--help"]).output
    assert "edge_boost=0.5" in runner.invoke(_show, []).output
    shown = runner.invoke(_show, ["--crf-edge-boost", "2", "--crf-iterations", "3"])
    assert "edge_boost=2.0" in shown.output and "iterations=3" in shown.output
    assert runner.invoke(_show, ["--crf-edge-boost", "-1"]).exit_code == 2


def test_a_field_without_a_declared_flag_is_refused() -> None:
    @dataclass(frozen=True)
    class Undeclared(CRFParams):
        forgotten: int = 3

    @dataclass(frozen=True)
    class Hidden(CRFParams):
        knob: int = field(default=3, metadata=NOT_ON_CLI)

    with pytest.raises(TypeError, match="Undeclared.forgotten"):
        flag_fields(Undeclared)
    assert "knob" not in {ff.name for ff in flag_fields(Hidden)}


def test_model_help_lists_every_registered_model() -> None:
    from segops.models import REGISTRY

    (model,) = [p for p in leaf("train").params if p.name == "model"]
    for name in REGISTRY:
        assert name in str(model.help), name
