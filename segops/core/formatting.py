"""How numbers that may be missing (None or NaN: a class with no score) appear in text and JSON."""

from __future__ import annotations

import math
from typing import Any


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_score(value: float | None, digits: int = 4, missing: str = "–", width: int = 0) -> str:
    """``value`` with fixed decimals (right-aligned to ``width``), or ``missing`` for no score."""
    return missing if is_missing(value) else f"{value:{width}.{digits}f}"


def finite_or_none(value: Any) -> float | None:
    """A float for JSON/Parquet: None for a missing, NaN or infinite value."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value
