"""The one registry of loss terms and the ``--loss`` syntax; no TensorFlow or Keras here (the CLI
reads it for ``--loss``'s choices and the terms' hyper-parameter flags).

A loss term is a function ``fn(y_true, logits, **keywords)`` registered with :func:`loss_term`
in a module of :mod:`segops.training.losses.terms`: its name in ``--loss``, the settings of
:class:`~segops.training.losses.total.SegmentationLoss` it takes (:data:`SETTINGS`), and its
hyper-parameters (:class:`HParam`: each is a training option, a ``segops train`` flag, a key of
state.json / model.json and of the loss's Keras config). :func:`registry` imports every module of
that package first, so adding a term is adding one module there.

:func:`parse_loss` / :func:`format_loss` read and write a spec, ``"ce*0.5+lovasz"`` <->
``(("ce", 0.5), ("lovasz", 1.0))``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from segops.core.options import OptionsError

TERMS_PACKAGE = "segops.training.losses.terms"
WEIGHTS = ("class_weights", "use_pixel_weights")  # the per-pixel terms' settings: class and pixel weights
SETTINGS = (*WEIGHTS, "epsilon")  # what SegmentationLoss passes to the terms that name it
LATER_POSITION = 100  # terms without a position are listed after the built-in ones, by name


class LossSpecError(OptionsError):
    """A ``--loss`` spec that does not parse (the message says why)."""


@dataclass(frozen=True)
class HParam:
    """A hyper-parameter of a loss term: option ``name`` (flag ``--name-with-dashes``), passed to
    the term's function as keyword ``arg``. Values lie in the range from ``low`` to ``high``
    (None: unbounded), ends open or closed; a None ``default`` makes None ("off") a valid value."""

    name: str
    arg: str
    default: float | None
    help: str
    low: float = 0  # ints print as such in click's ranges ("x>=0")
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def range_text(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def problem(self, value: float | None) -> str | None:
        """Why ``value`` is not valid (the message of the options error), None if it is."""
        if value is None and self.default is None:
            return None
        low_ok = value is not None and (value > self.low if self.low_open else value >= self.low)
        high_ok = value is not None and (self.high is None or (value < self.high if self.high_open else value <= self.high))
        return None if low_ok and high_ok else f"{self.flag} must be {self.range_text}"


@dataclass(frozen=True)
class LossTerm:
    """A registered term: ``fn(y_true, logits, **keywords)`` -> a scalar loss."""

    name: str
    fn: Callable[..., Any]
    hparams: tuple[HParam, ...] = ()
    settings: tuple[str, ...] = ()  # names of SETTINGS the function takes
    position: int = LATER_POSITION  # where --help and the --loss syntax list it

    def value(self, y_true: Any, logits: Any, hparams: Mapping[str, Any], settings: Mapping[str, Any]) -> Any:
        """The unweighted term, its hyper-parameters and settings taken by name from the mappings."""
        keywords = {hp.arg: hparams[hp.name] for hp in self.hparams}
        return self.fn(y_true, logits, **keywords, **{name: settings[name] for name in self.settings})


_REGISTRY: dict[str, LossTerm] = {}
_discovered = False


def loss_term(
    name: str, hparams: tuple[HParam, ...] = (), settings: tuple[str, ...] = (), position: int = LATER_POSITION
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering the decorated function as loss term ``name`` (returned unchanged).

    Raises ValueError for a name taken or not a lowercase identifier, an unknown setting, a
    hyper-parameter name taken by another term, or a keyword or default the function lacks."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        term = LossTerm(name, fn, tuple(hparams), tuple(settings), position)
        _check(term)
        _REGISTRY[name] = term
        return fn

    return register


def _check(term: LossTerm) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", term.name) or term.name in _REGISTRY:
        raise ValueError(f"loss term {term.name!r}: not a lowercase identifier, or already registered")
    if unknown := set(term.settings) - set(SETTINGS):
        raise ValueError(f"loss term {term.name!r}: unknown settings {sorted(unknown)} (known: {', '.join(SETTINGS)})")
    taken = {hp.name for other in _REGISTRY.values() for hp in other.hparams}
    parameters = inspect.signature(term.fn).parameters
    for hp in term.hparams:
        if hp.name in taken:
            raise ValueError(f"loss term {term.name!r}: hyper-parameter {hp.name} belongs to another term")
        declared = parameters.get(hp.arg)
        if declared is None or declared.default not in (inspect.Parameter.empty, hp.default):
            raise ValueError(f"loss term {term.name!r}: {term.fn.__name__} has no keyword {hp.arg} "
                             f"defaulting to {hp.default}")  # fmt: skip
    if missing := [name for name in term.settings if name not in parameters]:
        raise ValueError(f"loss term {term.name!r}: {term.fn.__name__} takes no {', '.join(missing)}")


def registry() -> dict[str, LossTerm]:
    """name -> term of every registered term, in listing order (position, then name); the
    modules of :data:`TERMS_PACKAGE` are imported on the first call."""
    global _discovered
    if not _discovered:
        package = importlib.import_module(TERMS_PACKAGE)
        for module in sorted(info.name for info in pkgutil.iter_modules(package.__path__)):
            importlib.import_module(f"{TERMS_PACKAGE}.{module}")
        _discovered = True
    return dict(sorted(_REGISTRY.items(), key=lambda item: (item[1].position, item[0])))


def get_term(name: str) -> LossTerm:
    terms = registry()
    if name not in terms:
        raise LossSpecError(f"unknown loss term {name!r}")
    return terms[name]


def term_names() -> tuple[str, ...]:
    return tuple(registry())


def all_hparams() -> tuple[HParam, ...]:
    """The hyper-parameters of every term, term by term in listing order."""
    return tuple(hp for term in registry().values() for hp in term.hparams)


def loss_syntax() -> str:
    return "TERM[*WEIGHT][+TERM[*WEIGHT]...], TERM one of " + ", ".join(term_names())


def parse_loss(spec: str) -> tuple[tuple[str, float], ...]:
    """``"ce*0.5+lovasz"`` -> ``(("ce", 0.5), ("lovasz", 1.0))``: the one parser of --loss.

    Terms are joined by ``+``; a term is a registered name with an optional positive weight after
    ``*`` (``0.5*ce`` is accepted too). Names are case-insensitive, spaces are ignored, a term may
    appear once. Raises :class:`LossSpecError` saying what is wrong.

    Example:
        >>> parse_loss("ce*0.5+lovasz")
        (('ce', 0.5), ('lovasz', 1.0))
        >>> parse_loss("0.5 * CE + Dice")
        (('ce', 0.5), ('dice', 1.0))
        >>> format_loss(parse_loss("ce*1+dice*0.25"))
        'ce+dice*0.25'
        >>> parse_loss("ce+ce")
        Traceback (most recent call last):
        ...
        segops.training.losses.spec.LossSpecError: --loss 'ce+ce': ce appears twice
    """
    names_known = registry()
    terms: dict[str, float] = {}
    for part in str(spec).replace(" ", "").lower().split("+"):
        factors = part.split("*")
        names = [f for f in factors if f in names_known]
        numbers = [f for f in factors if f not in names_known]
        if len(factors) > 2 or len(names) != 1:
            raise LossSpecError(f"--loss {spec!r}: {part!r} is not a term ({loss_syntax()})")
        try:
            weight = float(numbers[0]) if numbers else 1.0
        except ValueError:
            raise LossSpecError(f"--loss {spec!r}: {numbers[0]!r} is not a number ({loss_syntax()})") from None
        if not 0 < weight < float("inf"):
            raise LossSpecError(f"--loss {spec!r}: the weight of {names[0]} must be a positive number")
        if names[0] in terms:
            raise LossSpecError(f"--loss {spec!r}: {names[0]} appears twice")
        terms[names[0]] = weight
    return tuple(terms.items())


def format_loss(terms: tuple[tuple[str, float], ...]) -> str:
    """The canonical spec of parsed terms (weights 1 omitted): ``parse_loss``'s inverse."""
    return "+".join(name if weight == 1 else f"{name}*{weight:.12g}" for name, weight in terms)
