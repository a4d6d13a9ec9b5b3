"""The one registry class: name -> value for criteria, strategies, runtimes and pipeline steps.

A name is registered once; a second registration is a :class:`DuplicateNameError`. Looking up an
unknown name is an :class:`UnknownNameError` that lists the known names. Both are ``ValueError``
(and :class:`CompressorError`), as the per-registry checks they replace were. Torch-free, so
``runtimes`` can use it on a target device. The model zoo (``models``, the lowest layer, which
may not import ``compressor``) keeps a registry of its own with the same rules and wording.
"""
from __future__ import annotations

from typing import Any, Generic, Iterator, TypeVar

from compressor.common.errors import CompressorError

__all__ = ["DuplicateNameError", "Registry", "UnknownNameError"]

T = TypeVar("T")
_MISSING: Any = object()


class DuplicateNameError(CompressorError, ValueError):
    """A name is registered twice (timm only warns; here it is an error)."""


class UnknownNameError(CompressorError, ValueError):
    """A name that is not registered; the message lists the known ones."""


class Registry(Generic[T]):
    """Registered values of one ``kind`` (``"criterion"``, ``"runtime"`` ...), by name.

    Args:
        kind: what a value is, for messages: ``"criterion 'l1' is already registered"``.
        plural: the plural for the list of known names (default ``kind + "s"``).
        sort: list names sorted (default) or in registration order (pipeline steps, whose
            order is the documented one).
    """

    def __init__(self, kind: str, plural: str | None = None, *, sort: bool = True):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.sort = sort
        self._entries: dict[str, T] = {}

    def register(self, name: str, value: T = _MISSING) -> Any:
        """Register ``value`` under ``name`` and return it; without ``value``, a decorator that does.

        Raises:
            ValueError: ``name`` is not a non-empty string.
            DuplicateNameError: ``name`` is already registered (checked when the decorator is
                made and again when it is applied).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        self._check_new(name)
        if value is _MISSING:
            def decorator(obj: T) -> T:
                self.register(name, obj)
                return obj

            return decorator
        self._entries[name] = value
        return value

    def _check_new(self, name: str) -> None:
        if name in self._entries:
            owner = getattr(self._entries[name], "__qualname__", None)  # a registered class or function
            by = f" (by {owner})" if owner else ""
            raise DuplicateNameError(f"{self.kind} {name!r} is already registered{by}")

    def get(self, name: str) -> T:
        """The value registered as ``name``; UnknownNameError (a ValueError) lists the known names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a config file
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known {self.plural}: "
                                   f"{', '.join(self.names())}") from None

    __getitem__ = get

    def names(self) -> list[str]:
        """The registered names, sorted or in registration order (see ``sort``)."""
        return sorted(self._entries) if self.sort else list(self._entries)

    def values(self) -> list[T]:
        """The registered values, in the order of :meth:`names`."""
        return [self._entries[name] for name in self.names()]

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (tests register into a copy)."""
        out: Registry[T] = Registry(self.kind, self.plural, sort=self.sort)
        out._entries = dict(self._entries)
        return out

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

