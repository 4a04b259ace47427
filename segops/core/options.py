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
