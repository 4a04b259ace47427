"""The one options pattern of every stage: frozen dataclasses validated at construction that
raise :class:`OptionsError` for anything a user can fix, the value parsers they share (``HxW``
sizes, ``MIN,MAX`` ranges, comma lists), and each field's command-line flag declared on the field
itself (:func:`flag`: help, range, metavar, choices), from which
:mod:`segops.commands.flags` generates the click options. No click here: workers import this."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_HW = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


class OptionsError(ValueError):
    """Options a user can fix (the message says how); the CLI shows it as a usage error."""


def parse_hw(value: str, what: str = "size", example: str = "256x512") -> tuple[int, int]:
    """'HEIGHTxWIDTH' -> (height, width), both positive; OptionsError names ``what`` otherwise."""
    m = _HW.match(value)
    if not m:
        raise OptionsError(f"{what}: {value!r} is not HxW (e.g. {example})")
    height, width = int(m.group(1)), int(m.group(2))
    if height <= 0 or width <= 0:
        raise OptionsError(f"{what}: {value!r}: height and width must be positive")
    return height, width


def read_hw(value: str, min_side: int = 1, max_pixels: int | None = None) -> tuple[int, int]:
    """A command-line 'HxW' -> (H, W), sides >= ``min_side``, area <= ``max_pixels``; the
    OptionsError's message is the flag's error."""
    try:
        h, w = parse_hw(str(value))
    except OptionsError:
        raise OptionsError(f"{value!r} is not HxW, e.g. 256x512 or 1024x2048") from None
    if h < min_side or w < min_side:
        raise OptionsError(f"{value!r} is too small: height and width must be at least {min_side}")
    if max_pixels is not None and h * w > max_pixels:
        raise OptionsError(f"{value!r} is too large: at most {max_pixels} pixels")
    return h, w


def read_range(value: str) -> tuple[float, float]:
    """A command-line 'MIN,MAX' -> (MIN, MAX) with 0 < MIN <= MAX."""
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise OptionsError(f"{value!r} is not MIN,MAX (e.g. 0.5,2.0)") from None
    if not 0 < lo <= hi:
        raise OptionsError(f"{value!r}: need 0 < MIN <= MAX")
    return lo, hi


def read_names(value: str) -> tuple[str, ...]:
    """A command-line comma list -> its non-empty names ('' -> ())."""
    return tuple(n.strip() for n in value.split(",") if n.strip())


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` (so a click option shows the one true default)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise KeyError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name}")


# --- flat (flag-name) form ---------------------------------------------------------------------
# Every command's options are a frozen dataclass, possibly made of *sections* (fields holding
# another options dataclass, e.g. TrainOptions.model, InferOptions.crf_params). The CLI hands
# over its keywords, named after the flags (``--batch-size`` -> ``batch_size``); ``from_flat``
# routes each to the field it sets. A field whose flag name differs from its own says so in its
# metadata: ``{FLAG: "model"}``, or ``{FLAG: None}`` for a field no flag sets; a section may put
# a prefix before its fields' flag names (``{FLAG_PREFIX: "crf_"}``: ``--crf-iterations``).
FLAG = "flag"
FLAG_PREFIX = "flag_prefix"


def flag_names(cls: type) -> dict[str, str]:
    """flag name -> field name of the fields of dataclass ``cls`` that are flags (sections too)."""
    names = {f.metadata.get(FLAG, f.name): f.name for f in dataclasses.fields(cls)}
    names.pop(None, None)
    return names


def option_sections(cls: type) -> dict[str, tuple[type, str]]:
    """Fields of ``cls`` that hold an options dataclass -> (that dataclass, its flag prefix)."""
    return {
        f.name: (f.default_factory, f.metadata.get(FLAG_PREFIX, ""))
        for f in dataclasses.fields(cls)
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)
    }


class FlatOptions:
    """The one options pattern: a frozen dataclass (validated in ``__post_init__``, raising
    :class:`OptionsError`) built from and written as its flat flag names."""

    @classmethod
    def from_flat(cls, **flat: Any) -> Any:
        """Options from flag names (a command's keywords, or a recorded ``to_flat()``; lists are
        read as tuples). An unknown name is a TypeError, as for any constructor."""
        rest = {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()}
        kwargs: dict[str, Any] = {}
        sections = option_sections(cls)  # type: ignore[arg-type]
        for name, (section, prefix) in sections.items():
            names = {prefix + flag: field for flag, field in flag_names(section).items()}
            kwargs[name] = section(**{names[k]: rest.pop(k) for k in list(rest) if k in names})
        own = {flag: name for flag, name in flag_names(cls).items() if name not in sections}  # type: ignore[arg-type]
        unknown = [k for k in rest if k not in own]
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown option(s) {', '.join(sorted(unknown))}")
        return cls(**kwargs, **{own[k]: v for k, v in rest.items()})

    def to_flat(self) -> dict[str, Any]:
        """The flat options (tuples as lists), this dataclass's own fields first, then each
        section's, in field order."""
        flat: dict[str, Any] = {}
        sections = option_sections(type(self))
        owners = [(self, ""), *((getattr(self, name), prefix) for name, (_, prefix) in sections.items())]
        for owner, prefix in owners:
            for flag, name in flag_names(type(owner)).items():
                if owner is self and name in sections:
                    continue
                value = getattr(owner, name)
                flat[prefix + flag] = list(value) if isinstance(value, tuple) else value
        return flat


# --- command-line flags, declared on the fields ------------------------------------------------
# A field's flag lives in its metadata (``field(default=..., metadata=flag("Help.", ...))``), so a
# new option is one field: segops.commands.flags turns every flag field of a command's options
# dataclass, sections included, into its click option.
CLI = "cli"


@dataclass(frozen=True)
class Text:
    """How a field whose value is not a plain str, int, float or bool is written on the command
    line: ``parse`` (raising OptionsError with the flag's error) and ``format`` (for the default)."""

    parse: Callable[[str], Any]
    format: Callable[[Any], str | None]


def hw_text(auto: str | None = None) -> Text:
    """'HxW' sizes; ``auto``: the word that means None (the default) instead of no value."""

    def parse(value: str) -> tuple[int, int] | None:
        return None if auto and value.strip().lower() == auto else read_hw(value)

    return Text(parse, lambda hw: auto if hw is None else f"{hw[0]}x{hw[1]}")


RANGE_TEXT = Text(read_range, lambda lo_hi: f"{lo_hi[0]},{lo_hi[1]}")
NAMES_TEXT = Text(read_names, ",".join)


@dataclass(frozen=True)
class Flag:
    """The command-line side of an options field (see :func:`flag`)."""

    help: str
    opt: str | None = None  # the spelling when it is not --<flat-name> (e.g. --class for classes)
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    low: float | None = None  # a range, ends closed unless *_open
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    negatable: bool = True  # a bool field: --x/--no-x; False: a switch --x, off by default
    multiple: bool = False  # repeatable: the field takes the tuple of the values
    text: Text | None = None
    show_default: bool = True


def flag(help: str, *, name: str | None = None, **declaration: Any) -> dict[str, Any]:
    """Field metadata declaring the field's flag: ``help`` and the :class:`Flag` keywords
    (``metavar``, ``choices``, ``low``/``high`` ranges, ``text`` for non-scalar values, ...);
    ``name``: its flat name (and flag) when it is not the field's, e.g. ``model`` for
    ``ModelOptions.name``."""
    return {CLI: Flag(help, **declaration), **({FLAG: name} if name else {})}


# A flat option with no flag of its own: the command sets it another way (``verbose`` from
# ``--progress``) or leaves the default (a tuning knob); it is still read from and recorded in the flat form.
NOT_ON_CLI: Mapping[str, Any] = types.MappingProxyType({CLI: None})


@dataclass(frozen=True)
class FlagField:
    """One flag of an options dataclass: the keyword it sets (its flat name, section prefix
    included), its declaration, the field's value type (None stripped) and default (None for a
    default_factory, which the dataclass applies)."""

    name: str
    flag: Flag
    type: type
    default: Any


def flag_fields(cls: type) -> list[FlagField]:
    """The flags of options dataclass ``cls`` in field order, each section's in its place. Fields
    without a default are the command's arguments; a field that is neither a flag nor marked
    (``{FLAG: None}``, :data:`NOT_ON_CLI`) is a TypeError, so none is silently missing."""
    sections = option_sections(cls)
    hints = typing.get_type_hints(cls)
    found: list[FlagField] = []
    for f in dataclasses.fields(cls):
        if f.name in sections:
            section, prefix = sections[f.name]
            found += [dataclasses.replace(ff, name=prefix + ff.name) for ff in flag_fields(section)]
            continue
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if f.metadata.get(FLAG, f.name) is None or not has_default or (CLI in f.metadata and f.metadata[CLI] is None):
            continue
        if CLI not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name}: declare its flag (metadata=flag('Help.', ...)) "
                            "or mark it NOT_ON_CLI")  # fmt: skip
        default = None if f.default is dataclasses.MISSING else f.default
        found.append(FlagField(f.metadata.get(FLAG, f.name), f.metadata[CLI], _value_type(hints[f.name]), default))
    return found


def _value_type(hint: Any) -> type:
    """``int | None`` -> int, ``tuple[str, ...]`` -> tuple."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _value_type(args[0])
    return typing.get_origin(hint) or hint
