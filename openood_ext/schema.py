"""Argument schemas of registered parts, derived from their constructor signatures and type hints.

A part declares what it accepts the ordinary Python way; nothing else is needed::

    class KNNPostprocessor:
        def __init__(self, k: PositiveInt = 50, backend: Literal["auto", "faiss", "torch"] = "auto"): ...

:func:`check_arguments` then rejects, before anything runs:

* unknown keyword arguments (naming the accepted ones) and missing required ones;
* values of the wrong type: an ``int`` hint takes only integers (``2.5`` and ``true`` are errors, never
  2 and 1), ``float`` takes integers and floats, ``bool`` only booleans, ``str`` only text,
  ``Literal[...]`` only the listed values, ``list[X]``/``tuple[X, ...]`` lists of X, ``dict`` mappings,
  ``X | None`` also null;
* values outside a declared range: ``Annotated[int, Range(1)]`` (see the aliases below), and lists
  shorter or longer than ``Annotated[list[int], Length(1)]`` allows.

Parameters without a hint (or with a hint this module does not understand, such as a class) are not
checked. Hints are resolved with :func:`typing.get_type_hints`, so ``from __future__ import
annotations`` is fine.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from .errors import ConfigError

__all__ = [
    "Length",
    "NonNegativeFloat",
    "NonNegativeInt",
    "Percentile",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "Range",
    "UnitFloat",
    "check_arguments",
    "check_section",
    "check_value",
]


@dataclass(frozen=True)
class Range:
    """Inclusive bounds for a number (``None``: unbounded); ``open_low``/``open_high`` exclude the bound itself."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def check(self, value: float) -> str | None:
        """None when ``value`` is inside the range, else what was expected."""
        if isinstance(value, float) and math.isnan(value):
            return "a number, got nan"
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return self.describe()
        if self.high is not None and (value > self.high or (self.open_high and value == self.high)):
            return self.describe()
        return None

    def describe(self) -> str:
        low = None if self.low is None else (f"> {self.low}" if self.open_low else f">= {self.low}")
        high = None if self.high is None else (f"< {self.high}" if self.open_high else f"<= {self.high}")
        return " and ".join(p for p in (low, high) if p) or "any number"


@dataclass(frozen=True)
class Length:
    """Inclusive bounds for the number of items of a list (``None``: unbounded)."""

    low: int = 0
    high: int | None = None

    def check(self, value: Any) -> str | None:
        """None when ``len(value)`` is inside the bounds, else what was expected."""
        n = len(value)
        if n < self.low or (self.high is not None and n > self.high):
            if self.high == self.low:
                return f"exactly {self.low} item(s)"
            if self.high is None:
                return "a non-empty list" if self.low == 1 else f"at least {self.low} items"
            return f"{self.low} to {self.high} items"
        return None


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, open_low=True)]
NonNegativeFloat = Annotated[float, Range(0)]
UnitFloat = Annotated[float, Range(0, 1)]
Probability = UnitFloat
Percentile = Annotated[float, Range(0, 100)]


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _type_name(typing.get_args(hint)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin in (list, tuple, typing.get_origin(typing.Sequence[int])):
        return "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def check_value(where: str, value: Any, hint: Any) -> None:
    """Raise ConfigError(``where: expected ..., got ...``) unless ``value`` fits ``hint``."""
    problem = _mismatch(value, hint)
    if problem:
        raise ConfigError(f"{where}: expected {problem}, got {value!r}")


def _mismatch(value: Any, hint: Any) -> str | None:
    """None when ``value`` fits ``hint`` (or the hint is not understood), else what was expected."""
    if hint is Any or hint is inspect.Parameter.empty or isinstance(hint, (str, typing.ForwardRef)):
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        problem = _mismatch(value, args[0])
        if problem:
            return problem
        for meta in args[1:]:
            if isinstance(meta, Range) and isinstance(value, (int, float)) and not isinstance(value, bool):
                bad = meta.check(value)
                if bad:
                    return f"{_type_name(args[0])} {bad}"
            if isinstance(meta, Length) and _is_list(value):
                bad = meta.check(value)
                if bad:
                    return bad if bad.startswith("a ") else f"a list of {bad}"
        return None
    if origin in (Union, types.UnionType):
        problems = [_mismatch(value, a) for a in args]
        if any(p is None for p in problems):
            return None
        # a value of the right type but out of range: say the range, not the whole union
        narrowed = [p for p, a in zip(problems, args) if _base_ok(value, a)]
        return narrowed[0] if narrowed else " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return None if any(value == a and type(value) is type(a) for a in args) else _type_name(hint)
    if hint is type(None) or hint is None:
        return None if value is None else "null"
    if hint is bool:
        return None if isinstance(value, bool) else "bool (true or false)"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "int"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "float"
    if hint is str:
        return None if isinstance(value, str) else "str"
    if origin in (list, tuple) or hint in (list, tuple) or origin is typing.get_origin(typing.Sequence[int]):
        if not _is_list(value):
            return "a list"
        item_hints = [a for a in args if a is not Ellipsis]
        if len(item_hints) == 1:
            for item in value:
                problem = _mismatch(item, item_hints[0])
                if problem:
                    return f"a list of {problem}"
        return None
    if origin is dict or hint is dict or origin is typing.get_origin(typing.Mapping[str, int]):
        return None if isinstance(value, abc.Mapping) else "a mapping"  # config nodes (DictConfig) too
    return None  # classes, callables, ...: not checked here


def _is_list(value: Any) -> bool:
    """A list, tuple or other sequence that is not text (config nodes such as ListConfig too)."""
    return isinstance(value, abc.Sequence) and not isinstance(value, (str, bytes))


def _base_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the outer type of ``hint`` (a number for a ranged number, a list for a list of
    X), so that a union reports that member's finer problem (its range, a bad item)."""
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    origin = typing.get_origin(hint)
    if origin in (list, tuple) or hint in (list, tuple) or origin is typing.get_origin(typing.Sequence[int]):
        return _is_list(value)
    if origin is dict or hint is dict:
        return isinstance(value, abc.Mapping)
    if hint in (int, float):
        return _mismatch(value, hint) is None
    return False


def parameter_hints(factory: Callable) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """(keyword parameters, their resolved type hints, accepts **kwargs) of a class or function."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without signatures
        return {}, {}, True
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable names in annotations: check names only
        hints = {}
    params = {name: p for name, p in sig.parameters.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return params, hints, var_kw


def check_arguments(where: str, factory: Callable, kwargs: dict) -> None:
    """Check ``kwargs`` against ``factory``'s signature and hints; ConfigError names ``where.key``."""
    params, hints, var_kw = parameter_hints(factory)
    if not params and var_kw:
        return
    if not var_kw:
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ConfigError(f"{where} does not accept {', '.join(repr(u) for u in unknown)}; "
                              f"it takes: {', '.join(sorted(params)) or 'no arguments'}")
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"{where}: missing required argument(s) {', '.join(repr(m) for m in missing)}")
    for key, value in kwargs.items():
        if key in params and key in hints:
            check_value(f"{where} argument '{key}'", value, hints[key])


def check_section(section: str, settings: Callable, values: abc.Mapping) -> None:
    """Check the keys of config section ``section`` against the typed fields (or keyword parameters) of
    ``settings``, usually a dataclass; ConfigError names ``section.key`` and what was expected.

    The same rules as :func:`check_arguments`; a key the settings do not declare is an error that lists
    the declared ones.
    """
    params, hints, var_kw = parameter_hints(settings)
    if not var_kw:
        unknown = sorted(set(values) - set(params))
        if unknown:
            raise ConfigError(f"{section}: unknown key(s) {', '.join(repr(u) for u in unknown)} "
                              f"(known: {', '.join(sorted(params))})")
    for key, value in values.items():
        if key in hints:
            check_value(f"{section}.{key}", value, hints[key])
