"""Dataset specs, as the command line names them: ``digits``, ``folder:PATH``, ``market:PATH``.

* ``digits``: scikit-learn's bundled handwritten digits (real, no download), 3x32x32, 10 classes,
  the fixed stratified train/test split; ``digits:0-4`` or ``digits:5,6,7,8,9`` keeps those
  digits, relabelled 0..k-1 (source and target tasks for the design scenarios of "Exploiting
  prunability for person re-identification").
* ``folder:PATH``: ImageFolder layout with ``PATH/train`` and ``PATH/val`` (or ``PATH/test``),
  one sub-folder per class.
* ``market:PATH``: a Market-1501 / DukeMTMC-reID directory (``bounding_box_train``, ``query``,
  ``bounding_box_test``); person re-identification.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


from compressor.training._data import (
    DIGITS_INPUT_SIZE,
    DatasetError,
    MarketDataset,
    digits_dataset,
    image_folder_dataset,
)

__all__ = ["DataSpec", "parse_data_spec"]

_KINDS = ("digits", "folder", "market")
_EVAL_FOLDERS = ("val", "test")


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value.

    Attributes:
        kind: ``"digits"``, ``"folder"`` or ``"market"``.
        path: the dataset's root (None for digits).
        input_size: one sample's shape ``(C, H, W)``.
    """

    kind: str
    path: Path | None
    input_size: tuple[int, int, int]
    digits: tuple[int, ...] | None = None

    @property
    def task(self) -> str:
        """``"classification"`` or ``"reid"``."""
        return "reid" if self.kind == "market" else "classification"

    def train_set(self) -> Any:
        if self.kind == "digits":
            return digits_dataset("train", size=self.input_size[1], channels=self.input_size[0], digits=self.digits)
        if self.kind == "folder":
            return self._folder("train")
        return MarketDataset(self.path, "train", size=self.input_size[1:])

    def eval_sets(self) -> tuple[Any, ...]:
        """``(test_set,)`` for classification, ``(query, gallery)`` for ReID."""
        if self.kind == "digits":
            return (digits_dataset("test", size=self.input_size[1], channels=self.input_size[0], digits=self.digits),)
        if self.kind == "folder":
            for name in _EVAL_FOLDERS:
                if (self.path / name).is_dir():
                    return (self._folder(name),)
            raise DatasetError(f"{self.path} has no {' or '.join(_EVAL_FOLDERS)} folder to evaluate on")
        return (MarketDataset(self.path, "query", size=self.input_size[1:]),
                MarketDataset(self.path, "gallery", size=self.input_size[1:]))

    def _folder(self, name: str) -> Any:
        return image_folder_dataset(self.path / name, size=self.input_size[1:], channels=self.input_size[0])


def _digit_list(text: str, spec: str) -> tuple[int, ...]:
    """``"0-4"`` -> (0, 1, 2, 3, 4); ``"5,7,9"`` -> (5, 7, 9)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise DatasetError(f"digits subset must look like digits:0-4 or digits:5,6,7, got {spec!r}") from None
    if not out or any(not 0 <= d <= 9 for d in out) or len(set(out)) < len(out):
        raise DatasetError(f"digits subset must list distinct digits 0..9, got {spec!r}")
    return tuple(out)


def parse_data_spec(text: str, input_size: tuple[int, ...] | None = None) -> DataSpec:
    """Parse ``digits``, ``digits:0-4``, ``folder:PATH`` or ``market:PATH``.

    Args:
        text: the spec.
        input_size: ``(C, H, W)``; default 3x32x32 for digits and folders, 3x256x128 for ReID.

    Raises:
        DatasetError: an unknown kind, or a path that does not exist (named).
    """
    kind, _, path = text.partition(":")
    if kind not in _KINDS:
        raise DatasetError(f"unknown dataset {text!r}; use digits, folder:PATH or market:PATH")
    if kind == "digits":
        return DataSpec("digits", None, tuple(input_size or DIGITS_INPUT_SIZE), _digit_list(path, text) if path else None)
    if not path:
        raise DatasetError(f"{kind} needs a path: {kind}:PATH")
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    default = (3, 256, 128) if kind == "market" else (3, 32, 32)
    size = tuple(input_size or default)
    if len(size) != 3:
        raise DatasetError(f"input size must be C,H,W, got {size}")
    return DataSpec(kind, root, size)  # type: ignore[arg-type]
