"""The click options of an options dataclass, generated from the flags declared on its fields
(:func:`segops.core.options.flag`): one option per flag field, sections included, in field order,
with the field's default, type, choices, range, metavar and help. A command decorated with
:func:`options_from` receives the flat keywords its dataclass's ``from_flat`` takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from segops.core.options import FlagField, OptionsError, flag_fields

F = TypeVar("F", bound=Callable[..., Any])


def options_from(cls: type) -> Callable[[F], F]:
    """Decorator adding the click options of every flag of options dataclass ``cls``."""
    options = [click_option(ff) for ff in flag_fields(cls)]

    def decorate(command: F) -> F:
        for option in reversed(options):  # click lists the last-applied decorator first
            command = option(command)
        return command

    return decorate


def click_option(ff: FlagField) -> Callable[[F], F]:
    """The click option of one flag field."""
    f = ff.flag
    opt = f.opt or "--" + ff.name.replace("_", "-")
    common: dict[str, Any] = {"help": f.help, "metavar": f.metavar, "show_default": f.show_default}
    if ff.type is bool:
        decls = f"{opt}/--no-{opt[2:]}" if f.negatable else opt
        return click.option(decls, ff.name, default=ff.default, is_flag=not f.negatable or None, **common)
    kind, callback = _type(ff)
    default = ff.default
    if f.multiple:
        default = tuple(default or ())
    elif f.text is not None:
        default = f.text.format(default)
    elif f.choices is not None and not all(isinstance(c, str) for c in f.choices):
        default = None if default is None else str(default)
    return click.option(opt, ff.name, type=kind, default=default, multiple=f.multiple, callback=callback, **common)


def _type(ff: FlagField) -> tuple[Any, Callable[[click.Context, click.Parameter, Any], Any] | None]:
    """(click type, callback) of a flag: choices, a range, or the field's own type; a ``text``
    is read by its parser and non-string choices are offered as text and mapped back."""
    f = ff.flag
    if f.text is not None:
        return None, _text_callback(ff)
    if f.choices is not None:
        by_text = {str(c): c for c in f.choices}
        if all(isinstance(c, str) for c in f.choices):
            return click.Choice(f.choices), None
        return click.Choice(tuple(by_text)), lambda _ctx, _param, value: None if value is None else by_text[value]
    if f.low is not None or f.high is not None:
        bounds = {"min": f.low, "max": f.high, "min_open": f.low_open, "max_open": f.high_open}
        return (click.IntRange(**bounds) if ff.type is int else click.FloatRange(**bounds)), None
    return (ff.type if ff.type in (int, float) else None), None


def _text_callback(ff: FlagField) -> Callable[[click.Context, click.Parameter, Any], Any]:
    text = ff.flag.text
    assert text is not None

    def parse(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            if value is None:
                return None
            if ff.flag.multiple:  # each repeat may itself be a list: --splits a,b --splits c
                return tuple(item for v in value for item in text.parse(v))
            return text.parse(value)
        except OptionsError as exc:
            raise click.BadParameter(str(exc), param=param) from None

    return parse
