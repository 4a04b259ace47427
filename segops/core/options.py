"""The one options pattern of every stage: frozen dataclasses validated at construction that
raise :class:`OptionsError` for anything a user can fix, plus the value parsers they share
(``HxW`` sizes). The CLI maps flags onto the dataclasses and takes defaults from them."""

from __future__ import annotations

import dataclasses
import re
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
