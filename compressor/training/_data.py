"""Datasets for training, fine-tuning and evaluating compressed models.

Three sources, all returning float32 CHW tensors normalised with a fixed mean/std:

* ``digits_dataset``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no
  download), upsampled to 32x32 and replicated to 3 channels so the CIFAR-sized zoo models
  take it. The quick, real-data check that a pruned classifier still learns.
* ``image_folder_dataset``: any ``root/<class>/<image>`` tree (the ImageFolder layout).
* ``MarketDataset``: person re-identification in the Market-1501 layout, with
  ``make_synthetic_market`` writing a tiny learnable one for tests, and ``PKSampler`` for the
  P identities x K images batches that triplet losses need.

Only torch and numpy are imported here; Pillow (image files) and scikit-learn (digits) are
imported on first use. Every bad input raises ``DatasetError`` naming the file or folder.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler, TensorDataset

from compressor.common.errors import CompressorError

__all__ = [
    "DIGITS_INPUT_SIZE", "DIGITS_MEAN", "DIGITS_STD", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS",
    "DatasetError", "DigitsDataset", "ImageFolderDataset", "MarketDataset", "PKSampler",
    "digits_dataset", "image_folder_dataset", "make_synthetic_market", "parse_market_filename",
]


class DatasetError(CompressorError, ValueError):
    """A dataset file or folder is missing, empty, misnamed or unreadable; the message names it."""


# Extensions read as images (lower-cased; the same list as torchvision's ImageFolder).
# Any other file (Market-1501 ships a Thumbs.db, folders collect .DS_Store) is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Grey-scale defaults: the average of the ImageNet channel statistics.
_GRAY_MEAN = (0.449,)
_GRAY_STD = (0.226,)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------------
# Image decoding: one spec (size, channels, mean, std) shared by the folder and ReID datasets
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ImageSpec:
    """How a file becomes a tensor: resize to ``size`` = (height, width) pixels, convert to
    ``channels`` (1 = grey, 3 = RGB), scale to [0, 1], then ``(x - mean) / std`` per channel."""

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.size) != 2 or any(not isinstance(s, int) or s < 1 for s in self.size):
            raise ValueError(f"size must be (height, width) of positive ints, got {self.size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.channels:
                raise ValueError(f"{name} needs {self.channels} value(s), one per channel, got {values!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std!r}")

    @classmethod
    def build(cls, size: tuple[int, int] | int, channels: int,
              mean: Sequence[float] | None, std: Sequence[float] | None) -> _ImageSpec:
        """``size`` as an int means a square; ``mean``/``std`` None means the ImageNet statistics."""
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if mean is None:
            mean = IMAGENET_MEAN if channels == 3 else _GRAY_MEAN
        if std is None:
            std = IMAGENET_STD if channels == 3 else _GRAY_STD
        return cls(hw, channels, tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def load(self, path: Path) -> torch.Tensor:
        """Decode ``path`` into a normalised float32 tensor [channels, height, width].

        Raises DatasetError naming the file when it cannot be decoded (corrupt, truncated,
        not an image despite its extension)."""
        from PIL import Image  # optional SDK: PIL

        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if self.channels == 3 else "L")
        # ImportError: a decoder plugin another package registered with PIL (Ultralytics' HEIF opener)
        # may try to import its library on a file PIL's own decoders refused
        except (OSError, SyntaxError, ValueError, ImportError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
        height, width = self.size
        if img.size != (width, height):
            img = img.resize((width, height), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        pixels = pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return ((pixels - mean) / std).contiguous()


# --------------------------------------------------------------------------------------------
# Digits (scikit-learn's bundled copy of the UCI optical digits test set)
# --------------------------------------------------------------------------------------------

DIGITS_INPUT_SIZE = (3, 32, 32)
# Pixel mean/std of the default train split (seed 0, 1,437 images) after scaling to [0, 1] and
# bilinear upsampling to 32x32. The mean does not depend on the size; the std does a little
# (0.376 at 8x8, 0.325 at 64x64), and the same constants are used at every size so that a
# model sees the same normalisation whatever split or seed it is evaluated on.
DIGITS_MEAN = 0.3054
DIGITS_STD = 0.3237
_DIGITS_TEST_FRACTION = 0.2


class DigitsDataset(TensorDataset):
    """The digits images as one tensor; items are (image float32 [C, size, size], int label).

    Attributes: ``images``, ``targets`` (int64), ``indices`` (rows of sklearn's
    ``load_digits()`` in item order), ``split``, ``seed``, ``mean``, ``std``, ``classes``
    (``"0"`` .. ``"9"``), ``num_classes`` (10)."""

    num_classes = 10
    classes = tuple(str(d) for d in range(10))
    mean = DIGITS_MEAN
    std = DIGITS_STD

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, indices: np.ndarray,
                 split: str, seed: int, digits: tuple[int, ...] | None = None) -> None:
        super().__init__(images, targets)
        self.images, self.targets, self.indices = images, targets, indices
        self.split, self.seed = split, seed
        if digits is not None:  # a class subset: labels 0..k-1 stand for these digits
            self.classes = tuple(str(d) for d in digits)
            self.num_classes = len(digits)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])


def digits_dataset(split: str = "train", *, size: int = 32, channels: int = 3,
                   seed: int = 0, digits: tuple[int, ...] | None = None) -> DigitsDataset:
    """scikit-learn's 1,797 real 8x8 digit images as a 10-class dataset (nothing is downloaded).

    Pixels (0..16) are scaled to [0, 1], upsampled to ``size`` x ``size`` pixels with bilinear
    interpolation, normalised with ``DIGITS_MEAN``/``DIGITS_STD`` and replicated to
    ``channels`` (3 so the CIFAR-sized zoo models take them). The split is a stratified 80/20
    ``train_test_split`` with ``random_state=seed``; the default seed 0 is *the* fixed split
    (1,437 train, 360 test images). Deterministic.

    ``digits`` keeps only those digits, relabelled ``0..k-1`` in the order given (so that a
    source task on 0-4 and a target task on 5-9 share a 5-way head, for the design scenarios of
    "Exploiting prunability for person re-identification"); the split is the same fixed split,
    restricted.

    Raises DatasetError for an unknown split, a non-positive size or channel count, or a digit
    outside 0-9 (or repeated).
    """
    if digits is not None:
        digits = tuple(digits)
        if not digits or any(not isinstance(d, int) or not 0 <= d <= 9 for d in digits) or len(set(digits)) < len(digits):
            raise DatasetError(f"digits must be distinct integers in 0..9, got {digits!r}")
    if split not in ("train", "test"):
        raise DatasetError(f"digits split must be 'train' or 'test', got {split!r}")
    if not isinstance(size, int) or size < 1:
        raise DatasetError(f"digits size must be a positive int (pixels), got {size!r}")
    if not isinstance(channels, int) or channels < 1:
        raise DatasetError(f"digits channels must be a positive int, got {channels!r}")
    from sklearn.datasets import load_digits  # optional SDK: sklearn
    from sklearn.model_selection import train_test_split  # optional SDK: sklearn

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=_DIGITS_TEST_FRACTION, stratify=labels, random_state=seed)
    indices = np.sort(train_idx if split == "train" else test_idx)
    raw = torch.from_numpy(bunch.images[indices].astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False)
    images = ((images - DIGITS_MEAN) / DIGITS_STD).expand(-1, channels, -1, -1).contiguous()
    targets = torch.from_numpy(labels[indices])
    if digits is not None:
        keep = torch.from_numpy(np.isin(labels[indices], digits))
        remap = torch.full((10,), -1, dtype=torch.int64)
        remap[torch.tensor(digits)] = torch.arange(len(digits))
        images, targets, indices = images[keep].contiguous(), remap[targets[keep]], indices[keep.numpy()]
    return DigitsDataset(images, targets, indices, split, seed, digits)


# --------------------------------------------------------------------------------------------
# ImageFolder layout: root/<class>/<image>
# --------------------------------------------------------------------------------------------

class ImageFolderDataset(Dataset):
    """Classification over ``root/<class>/**/<image>``; items are (image tensor, int label).

    Attributes: ``root``, ``classes`` (sorted folder names), ``class_to_idx``, ``samples``
    (list of (path, label)), ``targets``, ``num_classes``."""

    def __init__(self, root: Path, classes: list[str], samples: list[tuple[Path, int]],
                 spec: _ImageSpec) -> None:
        self.root, self.classes, self.samples, self._spec = root, classes, samples, spec
        self.class_to_idx = {name: i for i, name in enumerate(classes)}
        self.targets = [label for _, label in samples]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self._spec.load(path), label


def image_folder_dataset(root: str | os.PathLike, *, size: tuple[int, int] | int, channels: int = 3,
                         mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None) -> ImageFolderDataset:
    """An ImageFolder-layout classification dataset: one sub-folder of ``root`` per class.

    Classes are the sorted names of ``root``'s sub-folders (hidden ones, starting with ".",
    are skipped); every image below a class folder, at any depth, is a sample of that class.
    Files whose extension is not in ``IMAGE_EXTENSIONS`` are ignored. Images are resized to
    ``size`` = (height, width) pixels (an int means a square) and normalised with ``mean``/``std``
    (default: the ImageNet statistics, or their average for ``channels=1``).

    Raises DatasetError when ``root`` is missing, has no class folders, or a class folder
    holds no image (named: an empty or mislabelled class would silently shift every label
    after it); a corrupt image raises DatasetError naming the file when it is loaded.
    Raises ValueError for a bad size, channel count, mean or std.
    """
    spec = _ImageSpec.build(size, channels, mean, std)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder root {root} does not exist or is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"image folder root {root} is empty: expected one sub-folder per class "
                           f"holding its images ({root}/<class>/<image>)")
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = sorted(Path(dirpath) / f for dirpath, _, files in os.walk(root / name, followlinks=True)
                       for f in files if _is_image(Path(f)))
        if not found:
            raise DatasetError(f"class folder {root / name} holds no image with extension in "
                               f"{IMAGE_EXTENSIONS} (mislabelled or empty class folder)")
        samples.extend((path, label) for path in found)
    return ImageFolderDataset(root, classes, samples, spec)


# --------------------------------------------------------------------------------------------
# Person re-identification, Market-1501 layout
# --------------------------------------------------------------------------------------------

# Market-1501 names a crop PID_cCsS_FRAME_BB.jpg (0002_c1s1_000451_03.jpg); DukeMTMC-reID uses
# the same folders with PID_cC_fFRAME.jpg (0001_c2_f0046182.jpg). Both start PID_cC.
_MARKET_NAME = re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d+)(?:s\d+)?_")
MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
JUNK_PID = -1
DISTRACTOR_PID = 0


def parse_market_filename(name: str | os.PathLike) -> tuple[int, int]:
    """(person id, camera id) of a Market-1501 or DukeMTMC-reID crop file name.

    ``0002_c1s1_000451_03.jpg`` -> (2, 1). Camera ids are kept 1-based as written. Person id
    -1 marks junk crops (``-1_c1s1_...``) and 0 distractors (``0000_...``); both are returned
    as parsed, the dataset decides what to drop. Raises DatasetError naming the file when
    the name does not start ``PID_cC`` or the camera id is 0.
    """
    base = Path(name).name
    match = _MARKET_NAME.match(base)
    if match is None or int(match["cam"]) < 1:
        raise DatasetError(f"{name}: not a Market-1501 file name (expected PID_cCsS_FRAME_BB.jpg, "
                           f"e.g. 0002_c1s1_000451_03.jpg, or DukeMTMC's PID_cC_fFRAME.jpg)")
    return int(match["pid"]), int(match["cam"])


class MarketDataset(Dataset):
    """One split of a Market-1501 (or DukeMTMC-reID: same layout) person ReID dataset.

    Folders under ``root``: ``bounding_box_train`` (split "train"), ``query`` ("query"),
    ``bounding_box_test`` ("gallery"). Junk crops (pid -1) are dropped from every split;
    distractors (pid 0) are dropped from train and query (a distractor query has no true
    match) and kept in the gallery, where they make retrieval harder, as in the benchmark.

    Items are (image float32 [3, height, width], pid, camid). With ``relabel`` (default: only
    for train) pids are mapped to 0..num_ids-1 in sorted order of the raw ids, so they index a
    classifier's logits; otherwise they are the raw ids (0 = distractor).

    Attributes: ``root``, ``split``, ``paths``, ``pids`` and ``camids`` (int64 arrays in item
    order, pids relabelled when ``relabel``), ``raw_pids``, ``pid_to_label`` (raw -> label,
    empty without relabel), ``num_ids`` (distinct identities, distractors not counted).

    Raises DatasetError when the split's folder is missing (named), holds no usable image, or
    an image's name does not parse; a corrupt image raises DatasetError naming it when loaded.
    Raises ValueError for an unknown split or a bad size, mean or std.
    """

    def __init__(self, root: str | os.PathLike, split: str, *, size: tuple[int, int] | int = (256, 128),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 relabel: bool | None = None) -> None:
        if split not in MARKET_FOLDERS:
            raise ValueError(f"split must be one of {sorted(MARKET_FOLDERS)}, got {split!r}")
        self._spec = _ImageSpec.build(size, 3, mean, std)
        self.root, self.split = Path(root), split
        self.relabel = split == "train" if relabel is None else relabel
        folder = self.root / MARKET_FOLDERS[split]
        if not folder.is_dir():
            raise DatasetError(f"{split} folder {folder} does not exist (expected the Market-1501 "
                               f"layout: {', '.join(MARKET_FOLDERS.values())} under {self.root})")
        keep_distractors = split == "gallery"
        self.paths: list[Path] = []
        raw_pids, camids = [], []
        for path in sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p)):
            pid, camid = parse_market_filename(path)
            if pid == JUNK_PID or (pid == DISTRACTOR_PID and not keep_distractors):
                continue
            self.paths.append(path)
            raw_pids.append(pid)
            camids.append(camid)
        if not self.paths:
            raise DatasetError(f"{split} folder {folder} is empty: no image of a labelled identity "
                               f"(junk pid -1{'' if keep_distractors else ' and distractor pid 0'} dropped)")
        self.raw_pids = np.asarray(raw_pids, dtype=np.int64)
        self.camids = np.asarray(camids, dtype=np.int64)
        identities = sorted(set(raw_pids) - {DISTRACTOR_PID})
        self.num_ids = len(identities)
        self.pid_to_label = {pid: i for i, pid in enumerate(identities)} if self.relabel else {}
        if self.relabel:
            # a distractor can only be here if relabel was asked for the gallery: label it -1
            self.pids = np.asarray([self.pid_to_label.get(p, -1) for p in raw_pids], dtype=np.int64)
        else:
            self.pids = self.raw_pids.copy()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self._spec.load(self.paths[index]), int(self.pids[index]), int(self.camids[index])


def make_synthetic_market(root: str | os.PathLike, *, num_ids: int = 8, cams: int = 3,
                          images_per_id_per_cam: int = 2, size: tuple[int, int] = (64, 32),
                          seed: int = 0, distractors: int = 2, junk: int = 2) -> Path:
    """Write a tiny, learnable Market-1501-format dataset under ``root`` and return ``root``.

    ``num_ids`` identities go to train (odd pids 1, 3, 5, ...) and another ``num_ids``,
    disjoint as in Market-1501, to test (even pids 2, 4, ...). Every identity has
    ``images_per_id_per_cam`` JPEG crops of ``size`` = (height, width) pixels from each of
    ``cams`` cameras. Of a test identity, the first crop from each camera but the last is a
    query, the rest go to the gallery, so every query has a match in another camera. The
    gallery also gets ``distractors`` crops of pid 0000 and ``junk`` crops of pid -1.

    A crop is a "person" whose upper and lower body colours and stripe period are fixed per
    identity, on a random grey background, shifted sideways by a few pixels, with pixel noise:
    an identity is learnable, no two crops are equal. The same seed writes the same files.

    Raises ValueError for bad counts or size (cams < 2 leaves no cross-camera match) and
    DatasetError when one of the three folders already exists with files in it.
    """
    for name, value, low in (("num_ids", num_ids, 1), ("cams", cams, 2), ("images_per_id_per_cam",
                             images_per_id_per_cam, 1), ("distractors", distractors, 0), ("junk", junk, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if 2 * num_ids > 9999:
        raise ValueError(f"num_ids must be <= 4999 (pids are 4 digits), got {num_ids}")
    if len(size) != 2 or any(not isinstance(s, int) or s < 8 for s in size):
        raise ValueError(f"size must be (height, width) ints >= 8, got {size!r}")
    from PIL import Image  # optional SDK: PIL

    root = Path(root)
    folders = {split: root / name for split, name in MARKET_FOLDERS.items()}
    for folder in folders.values():
        if folder.is_dir() and any(folder.iterdir()):
            raise DatasetError(f"{folder} already holds files; make_synthetic_market writes into empty folders")
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frame = 0

    def write(split: str, pid: int, cam: int, pixels: np.ndarray) -> None:
        nonlocal frame
        frame += 1
        name = f"{'-1' if pid == JUNK_PID else f'{pid:04d}'}_c{cam}s1_{frame:06d}_00.jpg"
        Image.fromarray(pixels).save(folders[split] / name, quality=95)

    for pid in range(1, 2 * num_ids + 1):
        look = np.random.default_rng([seed, pid])  # appearance depends on the id only
        upper, lower = look.integers(0, 256, size=3), look.integers(0, 256, size=3)
        period = int(look.integers(2, 6))
        for cam in range(1, cams + 1):
            for shot in range(images_per_id_per_cam):
                if pid % 2 == 1:
                    split = "train"
                else:
                    split = "query" if shot == 0 and cam < cams else "gallery"
                write(split, pid, cam, _draw_person(rng, size, upper, lower, period))
    for _ in range(distractors):
        look = rng.integers(0, 256, size=6)
        write("gallery", DISTRACTOR_PID, int(rng.integers(1, cams + 1)),
              _draw_person(rng, size, look[:3], look[3:], int(rng.integers(2, 6))))
    for _ in range(junk):
        write("gallery", JUNK_PID, int(rng.integers(1, cams + 1)), _draw_person(rng, size, None, None, 0))
    return root


def _draw_person(rng: np.random.Generator, size: tuple[int, int], upper: np.ndarray | None,
                 lower: np.ndarray | None, period: int) -> np.ndarray:
    """uint8 HxWx3 crop: grey background, a body box (upper colour with dark stripes every
    ``period`` rows, lower colour) shifted sideways at random, plus noise. ``upper`` None draws
    background only (a junk crop)."""
    height, width = size
    img = np.full((height, width, 3), rng.integers(60, 200), dtype=np.float32)
    if upper is not None:
        shift = int(rng.integers(-(width // 8), width // 8 + 1))
        left, right = width // 4 + shift, 3 * width // 4 + shift
        top, waist, bottom = height // 8, height // 2, height - height // 16
        img[top:waist, left:right] = upper
        img[top:waist:period, left:right] *= 0.5
        img[waist:bottom, left:right] = lower
    img += rng.normal(0.0, 12.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# P x K identity sampling for metric learning
# --------------------------------------------------------------------------------------------

class PKSampler(Sampler[int]):
    """Yields dataset indices in consecutive batches of ``p`` identities x ``k`` images each.

    Use it as a plain sampler with ``batch_size = p * k`` (``sampler.batch_size``)::

        DataLoader(ds, batch_size=sampler.batch_size, sampler=sampler)

    Every batch holds exactly ``p`` distinct pids, each ``k`` consecutive indices. An identity
    with fewer than ``k`` images is sampled with replacement; otherwise its images are
    shuffled and cut into chunks of ``k`` (the remainder is left out this epoch). Batches draw
    ``p`` identities without replacement, weighted by their chunks left, until fewer than
    ``p`` identities have chunks left (as torchreid's RandomIdentitySampler, which draws
    uniformly). The order depends only on ``seed`` and the epoch: call ``set_epoch(epoch)``
    before each epoch, as with DistributedSampler. ``len()`` is the exact number of indices
    of the current epoch (a multiple of ``p * k``; it may vary a little between epochs).

    Raises ValueError when p or k is below 1 or fewer than ``p`` identities exist.
    """

    def __init__(self, pids: Sequence[int], p: int, k: int, *, seed: int = 0) -> None:
        if not isinstance(p, int) or p < 1:
            raise ValueError(f"p (identities per batch) must be a positive int, got {p!r}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k (images per identity) must be a positive int, got {k!r}")
        labels = np.asarray(pids, dtype=np.int64).reshape(-1)
        identities = np.unique(labels)
        if len(identities) < p:
            raise ValueError(f"PKSampler needs at least p={p} identities, the pids hold {len(identities)}")
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self._by_pid = [np.flatnonzero(labels == pid) for pid in identities]
        self._cache: tuple[int, list[int]] | None = None

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks: list[list[np.ndarray]] = []
        for members in self._by_pid:
            if len(members) < self.k:
                order = rng.choice(members, size=self.k, replace=True)
            else:
                order = rng.permutation(members)
            chunks.append([order[i:i + self.k] for i in range(0, len(order) - self.k + 1, self.k)])
        out: list[int] = []
        left = np.array([len(c) for c in chunks], dtype=np.float64)
        while np.count_nonzero(left) >= self.p:
            for ident in rng.choice(len(chunks), size=self.p, replace=False, p=left / left.sum()):
                out.extend(int(i) for i in chunks[ident].pop())
                left[ident] -= 1
        self._cache = (self.epoch, out)
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())
