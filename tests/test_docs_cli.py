"""The docs and the CLI agree: every `segops <cmd> --flag` in a code block of README.md or docs/*.md
names a real option of that subcommand, every README command line parses, and every subcommand
and option has a help text."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from segops.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "2>&1", "<"}
FENCE = re.compile(r"^(\s*)(```|~~~)")


def code_blocks(text: str) -> list[str]:
    """Contents of fenced code blocks (``` or ~~~), any language."""
    blocks, current, fence = [], None, None
    for line in text.splitlines():
        m = FENCE.match(line)
        if current is None and m:
            current, fence = [], m.group(2)
        elif current is not None and m and m.group(2) == fence:
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def logical_lines(block: str) -> list[str]:
    """Lines with backslash continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def tokens(line: str) -> list[str]:
    line = line.strip()
    if line.startswith(("$ ", "> ")):  # shell prompt
        line = line[2:]
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # unbalanced quotes in prose-like lines: fall back to whitespace
        return line.split("#")[0].split()


def subcommand(name: str) -> click.Command:
    """The command ``name`` names: a subcommand, or ``"group sub"`` for one of a group's."""
    cmd: click.Command = cli
    for part in name.split():
        assert isinstance(cmd, click.Group), name
        cmd = cmd.get_command(click.Context(cmd), part)
        assert cmd is not None, name
    return cmd


def leaf_names() -> list[str]:
    """Every command that runs: the subcommands, and ``"group sub"`` for those of a group."""
    names = []
    for name in COMMANDS:
        cmd = subcommand(name)
        subs = cmd.list_commands(click.Context(cmd)) if isinstance(cmd, click.Group) else []
        names += [f"{name} {sub}" for sub in subs] or [name]
    return names


def segops_invocations(line: str) -> list[tuple[str | None, list[str]]]:
    """(subcommand or None for the group, its arguments) for every `segops ...` in a shell line.

    Arguments end at a shell operator; Beam options after a standalone `--` are kept (the
    command line must parse with them) but are not segops options.
    """
    toks = tokens(line)
    found = []
    for i, tok in enumerate(toks):
        if tok != "segops" and not tok.endswith("/segops"):
            continue
        rest = []
        for t in toks[i + 1 :]:
            if t in SHELL_OPERATORS or t.startswith(("2>", ">")):
                break
            rest.append(t)
        j = 0
        while j < len(rest) and rest[j].startswith("-") and rest[j] not in ("--",):  # group options, e.g. -v
            j += 1
        if j < len(rest) and rest[j] in COMMANDS:
            name, args = rest[j], rest[j + 1 :]
            group = subcommand(name)
            if isinstance(group, click.Group) and args and group.get_command(click.Context(group), args[0]):
                name, args = f"{name} {args[0]}", args[1:]
            found.append((name, args))
        elif rest and all(t.startswith("-") for t in rest[:1]):
            found.append((None, rest))
    return found


def segops_options(args: list[str]) -> list[str]:
    """The --flags in ``args`` that belong to segops (before a standalone `--`)."""
    flags = []
    for arg in args:
        if arg == "--" or arg.startswith("[--"):
            break
        if arg.startswith("--") and len(arg) > 2:
            flags.append(arg.split("=", 1)[0])
    return flags


def all_invocations() -> list[tuple[str, str, str | None, list[str]]]:
    """(doc file, line, subcommand, args) for every segops invocation in a code block of the docs."""
    out = []
    for doc in DOCS:
        for block in code_blocks(doc.read_text(encoding="utf-8")):
            for line in logical_lines(block):
                for cmd, args in segops_invocations(line):
                    out.append((doc.name, line.strip(), cmd, args))
    return out


def option_names(command: click.Command) -> set[str]:
    names = set()
    for param in command.params:
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names




INVOCATIONS = all_invocations()
LEAVES = leaf_names()


def test_the_docs_show_every_subcommand():
    shown = {cmd for _, _, cmd, _ in INVOCATIONS if cmd}
    assert shown >= set(LEAVES), f"subcommands never shown in a code block: {set(LEAVES) - shown}"


@pytest.mark.parametrize("name", LEAVES)
def test_every_flag_in_the_docs_exists(name):
    known = option_names(subcommand(name)) | {"--help", "-h"}
    unknown = [
        f"{doc}: {flag} in `{line}`"
        for doc, line, cmd, args in INVOCATIONS
        if cmd == name
        for flag in segops_options(args)
        if flag not in known
    ]
    assert not unknown, "flags the CLI does not have:\n" + "\n".join(unknown)


def test_group_flags_in_the_docs_exist():
    known = option_names(cli) | {"--help", "-h"}
    unknown = [f"{doc}: {f}" for doc, _, cmd, args in INVOCATIONS if cmd is None for f in segops_options(args) if f not in known]
    assert not unknown


def test_every_readme_command_line_parses():
    readme = [(line, cmd, args) for doc, line, cmd, args in INVOCATIONS if doc == "README.md"]
    assert len(readme) >= 8, "the README should show the stages' commands"
    for line, cmd, args in readme:
        if cmd is None:
            continue
        command = subcommand(cmd)
        if "--help" in args or "-h" in args:
            continue
        try:
            command.make_context(f"segops {cmd}", list(args), resilient_parsing=False)
        except click.ClickException as exc:
            pytest.fail(f"README command does not parse: `{line}`: {exc.format_message()}")


def test_a_wrong_flag_is_caught_by_this_test():
    # the checker itself: a made-up flag is reported, a real one and Beam options are not
    (cmd, args), = segops_invocations("segops infer m in out --no-crf --made-up -- --runner=DirectRunner")
    assert cmd == "infer"
    flags = segops_options(args)
    assert flags == ["--no-crf", "--made-up"]
    assert "--made-up" not in option_names(subcommand("infer")) and "--no-crf" in option_names(subcommand("infer"))
    with pytest.raises(click.UsageError):
        subcommand("infer").make_context("segops infer", ["m", "i", "o", "--made-up"], resilient_parsing=False)


@pytest.mark.parametrize("name", LEAVES)
def test_every_subcommand_and_option_has_help(name):
    command = subcommand(name)
    assert (command.help or "").strip(), f"segops {name} has no help text"
    missing = [p.opts[0] for p in command.params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not missing, f"segops {name}: options without help: {missing}"
    group_line = COMMANDS[name.split()[0]][1]
    assert group_line.strip(), f"segops --help lists {name} without a description"


def test_top_level_help_lists_every_subcommand():
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", result.output, re.M), name
