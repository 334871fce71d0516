"""Type and range checks for the experiment config's plain-data sections (frames, starts,
landscape, ...): each check is a small callable ``check(value, where)`` that raises a one-line
:class:`~FluoroRegistrationLib.errors.FluoroRegError` naming the key, the value and what is allowed.

    STARTS = Mapping({"mtre_bins_mm": List(Number(0)), "per_bin": Integer(1, 1000)})
    STARTS({"per_bin": "two"}, "starts")   # error: starts.per_bin = 'two' is not an integer from 1 to 1000
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import FluoroRegError


def _fail(where: str, value, allowed: str):
    raise FluoroRegError(f"{where} = {value!r} is not {allowed}")


@dataclass(frozen=True)
class Number:
    """A finite int or float within [low, high]."""

    low: float | None = None
    high: float | None = None
    integer: bool = False

    def text(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return f"{kind} from {self.low:g} to {self.high:g}"
        return f"{kind} >= {self.low:g}" if self.low is not None else kind

    def __call__(self, value, where: str) -> None:
        ok = isinstance(value, int) if self.integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not math.isfinite(value) \
                or (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            _fail(where, value, self.text())


def Integer(low=None, high=None) -> Number:  # noqa: N802 (reads as a type)
    return Number(low, high, integer=True)


def Flag(value, where: str) -> None:  # noqa: N802 (reads as a type)
    """true or false (YAML booleans)."""
    if not isinstance(value, bool):
        _fail(where, value, "true or false")


@dataclass(frozen=True)
class Text:
    """A non-empty string, one of ``choices`` when given."""

    choices: tuple = ()

    def __call__(self, value, where: str) -> None:
        if not isinstance(value, str) or not value or (self.choices and value not in self.choices):
            _fail(where, value, "one of " + ", ".join(self.choices) if self.choices else "a non-empty text")


@dataclass(frozen=True)
class List:
    """A list of items each passing ``item``, with ``min_len`` to ``max_len`` entries."""

    item: object
    min_len: int = 0
    max_len: int | None = None

    def __call__(self, value, where: str) -> None:
        if not isinstance(value, (list, tuple)) or len(value) < self.min_len \
                or (self.max_len is not None and len(value) > self.max_len):
            size = f"{self.min_len}" + (f" to {self.max_len}" if self.max_len != self.min_len else "") \
                if self.max_len is not None else f"at least {self.min_len}"
            _fail(where, value, f"a list of {size} entries")
        for i, v in enumerate(value):
            self.item(v, f"{where}[{i}]")


@dataclass(frozen=True)
class Mapping:
    """A mapping holding only ``keys`` (each checked when present), all of ``required``."""

    keys: dict = field(default_factory=dict)
    required: tuple = ()

    def __call__(self, value, where: str) -> None:
        if not isinstance(value, dict):
            _fail(where, value, f"a mapping of {', '.join(self.keys)}")
        unknown = sorted(str(k) for k in value if k not in self.keys)
        if unknown:
            raise FluoroRegError(f"unknown key(s) {', '.join(unknown)} in {where or 'the config'}; allowed: "
                                 f"{', '.join(self.keys)}")
        missing = [k for k in self.required if k not in value]
        if missing:
            raise FluoroRegError(f"{where or 'the config'} needs {', '.join(missing)}")
        for k, v in value.items():
            self.keys[k](v, f"{where}.{k}" if where else k)


@dataclass(frozen=True)
class AnyMapping:
    """A mapping with text keys, whatever they are (its values are checked elsewhere)."""

    def __call__(self, value, where: str) -> None:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            _fail(where, value, "a mapping of settings")


@dataclass(frozen=True)
class Optional:
    """``None`` or a value passing ``inner``."""

    inner: object

    def __call__(self, value, where: str) -> None:
        if value is not None:
            self.inner(value, where)


def Anything(value, where: str) -> None:  # noqa: N802 (checked elsewhere, e.g. RegistrationConfig)
    return None
