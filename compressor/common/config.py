"""Config base: frozen dataclass configs with one JSON round trip and one unknown-key check.

Torch-free, so ``runtimes`` and ``benchmarks`` can build on it as well as the pruning engine.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Callable, ClassVar

Check = tuple[Callable[[Any], bool], str]  # (valid(value), what the value must be)


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_at_least(lo: int) -> Check:
    return (lambda v: is_int(v) and v >= lo), f"an integer >= {lo}"


def number_where(ok: Callable[[float], bool], what: str) -> Check:
    return (lambda v: is_number(v) and ok(v)), what


def check_keys(given: Iterable[str], allowed: Iterable[str], noun: str = "key", owner: str = "") -> None:
    """The one unknown-key check: a ValueError naming every unknown key and listing the allowed ones.

    ``unknown PruneConfig key(s) ['ratoi']; allowed: [...]`` for a config class (``noun`` is
    ``"PruneConfig key"``), ``unknown option(s) ['taux'] for criterion 'simc'; allowed: ['tau']``
    with ``noun="option"`` and an ``owner``.
    """
    allowed = set(allowed)
    unknown = sorted((key for key in given if key not in allowed), key=str)
    if unknown:
        where = f" for {owner}" if owner else ""
        raise ValueError(f"unknown {noun}(s) {unknown}{where}; allowed: {sorted(allowed)}")


def check_fields(cls: type, data: Mapping[str, Any]) -> None:
    """:func:`check_keys` of ``data`` against the fields of dataclass ``cls``."""
    check_keys(data, (f.name for f in dataclasses.fields(cls)), f"{cls.__name__} key")


class JsonConfig:
    """JSON round trip of a frozen dataclass config: ``Config.from_dict(config.to_dict()) == config``.

    Fields named in ``_TUPLE_FIELDS`` are tuples in the config and lists in JSON; an unknown key is
    a ValueError that lists the allowed ones.
    """

    _TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        for name in self._TUPLE_FIELDS:
            out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):  # noqa: ANN206 - returns cls
        check_fields(cls, data)
        data = dict(data)
        for name in cls._TUPLE_FIELDS:
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):  # noqa: ANN206 - returns cls
        return cls.from_dict(json.loads(text))
