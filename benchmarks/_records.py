"""JSON round trips of the harness's dataclasses (configs and results). No torch, no SDKs."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from compressor.common.config import check_fields

__all__ = ["check_known_keys"]


def check_known_keys(cls: type, data: Mapping[str, Any]) -> None:
    """Raise ValueError naming the keys of ``data`` that are not fields of dataclass ``cls``.

    ``from_dict`` methods call it first, so a misspelt key in a config or an edited results file
    is an error that names it, not a silent default.
    """
    check_fields(cls, data)
