"""The data layer: digits, ImageFolder layout, Market-1501 ReID and the P x K sampler."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from compressor.training._data import (
    DIGITS_INPUT_SIZE,
    DIGITS_MEAN,
    DIGITS_STD,
    DatasetError,
    MarketDataset,
    PKSampler,
    digits_dataset,
    image_folder_dataset,
    make_synthetic_market,
    parse_market_filename,
)

# --------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return digits_dataset("train"), digits_dataset("test")


def _raw_digits(ds) -> np.ndarray:
    """sklearn's raw 8x8 rows of the dataset's items."""
    from sklearn.datasets import load_digits

    return load_digits().data[ds.indices]


def test_digits_shapes_dtypes_and_classes(digits):
    train, test = digits
    image, label = train[0]
    assert image.shape == DIGITS_INPUT_SIZE == (3, 32, 32)
    assert image.dtype == torch.float32
    assert isinstance(label, int)
    assert train.num_classes == test.num_classes == 10
    assert list(train.classes) == [str(d) for d in range(10)]
    assert set(train.targets.tolist()) == set(range(10)) == set(test.targets.tolist())
    # the three channels are the same grey image
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    # pixel range: [0, 1] normalised with the documented constants
    lo, hi = (0 - DIGITS_MEAN) / DIGITS_STD, (1 - DIGITS_MEAN) / DIGITS_STD
    assert train.images.min() >= lo - 1e-5 and train.images.max() <= hi + 1e-5
    assert (train.mean, train.std) == (DIGITS_MEAN, DIGITS_STD)


def test_digits_split_sizes_stratified_and_disjoint(digits):
    train, test = digits
    assert len(train) + len(test) == 1797
    assert (len(train), len(test)) == (1437, 360)
    train_share = np.bincount(train.targets.numpy()) / len(train)
    test_share = np.bincount(test.targets.numpy()) / len(test)
    np.testing.assert_allclose(train_share, test_share, atol=0.01)
    assert not set(train.indices) & set(test.indices)
    train_rows = {row.tobytes() for row in _raw_digits(train)}
    assert not any(row.tobytes() in train_rows for row in _raw_digits(test))


def test_digits_split_is_fixed(digits):
    train, _ = digits
    again = digits_dataset("train")
    assert np.array_equal(train.indices, again.indices)
    assert torch.equal(train.images, again.images)
    assert not np.array_equal(train.indices, digits_dataset("train", seed=1).indices)


def test_digits_train_is_normalised(digits):
    train, _ = digits
    assert abs(train.images.mean().item()) < 1e-3
    assert abs(train.images.std().item() - 1.0) < 1e-3


def test_digits_other_sizes_and_errors():
    ds = digits_dataset("test", size=16, channels=1)
    assert ds[0][0].shape == (1, 16, 16)
    with pytest.raises(DatasetError, match="'val'"):
        digits_dataset("val")
    with pytest.raises(DatasetError, match="size"):
        digits_dataset(size=0)


# --------------------------------------------------------------------------------- image folder


def _write_png(path: Path, value: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _make_folder(root: Path) -> Path:
    _write_png(root / "cat" / "a.png", 10)
    _write_png(root / "cat" / "b.PNG", 20)
    _write_png(root / "dog" / "nested" / "c.png", 200)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "cat" / "Thumbs.db").write_bytes(b"\x00\x01")
    return root


def test_image_folder_happy_path(tmp_path):
    ds = image_folder_dataset(_make_folder(tmp_path / "imgs"), size=(8, 6))
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert len(ds) == 3 and ds.targets == [0, 0, 1]
    image, label = ds[2]
    assert image.shape == (3, 8, 6) and image.dtype == torch.float32 and label == 1
    expected = (200 / 255 - 0.485) / 0.229
    assert image[0].mean().item() == pytest.approx(expected, abs=1e-4)
    grey = image_folder_dataset(tmp_path / "imgs", size=5, channels=1, mean=[0.0], std=[1.0])
    assert grey[0][0].shape == (1, 5, 5)
    assert grey[0][0].mean().item() == pytest.approx(10 / 255, abs=1e-4)
    batch, labels = next(iter(DataLoader(ds, batch_size=3)))
    assert batch.shape == (3, 3, 8, 6) and labels.tolist() == [0, 0, 1]


def test_image_folder_missing_and_empty_root(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        image_folder_dataset(tmp_path / "nowhere", size=8)
    (tmp_path / "empty").mkdir()
    _write_png(tmp_path / "empty" / "loose.png", 0)  # an image but no class folder
    with pytest.raises(DatasetError, match="empty"):
        image_folder_dataset(tmp_path / "empty", size=8)


def test_image_folder_class_without_images(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    (root / "emu").mkdir()
    (root / "emu" / "readme.md").write_text("no images here")
    with pytest.raises(DatasetError, match="emu.*mislabelled or empty class folder"):
        image_folder_dataset(root, size=8)


def test_image_folder_corrupt_image_names_the_file(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    (root / "dog" / "x.png").write_bytes(b"this is not a png at all")
    ds = image_folder_dataset(root, size=8)  # found by extension, read on access
    bad = [i for i, (path, _) in enumerate(ds.samples) if path.name == "x.png"]
    with pytest.raises(DatasetError, match=r"x\.png"):
        ds[bad[0]]


def test_image_spec_errors(tmp_path):
    root = _make_folder(tmp_path / "imgs")
    with pytest.raises(ValueError, match="channels"):
        image_folder_dataset(root, size=8, channels=2)
    with pytest.raises(ValueError, match="mean"):
        image_folder_dataset(root, size=8, channels=1, mean=(0.1, 0.2, 0.3))


# --------------------------------------------------------------------------------- Market-1501


@pytest.mark.parametrize("name, expected", [
    ("0002_c1s1_000451_03.jpg", (2, 1)),
    ("1501_c6s4_001877_01.jpg", (1501, 6)),
    ("-1_c3s2_012345_00.jpg", (-1, 3)),          # junk
    ("0000_c2s1_000100_02.jpg", (0, 2)),         # distractor
    ("0001_c2_f0046182.jpg", (1, 2)),            # DukeMTMC-reID
    ("some/dir/0042_c5s3_000001_01.jpg", (42, 5)),
])
def test_parse_market_filename(name, expected):
    assert parse_market_filename(name) == expected


@pytest.mark.parametrize("name", ["Thumbs.db", "c1s1_000451_03.jpg", "0002_s1c1_000451.jpg",
                                  "-2_c1s1_000451_03.jpg", "abcd_c1s1_000451_03.jpg", "0002_c0s1_000001_01.jpg"])
def test_parse_market_filename_rejects(name):
    with pytest.raises(DatasetError, match=name.replace(".", r"\.")):
        parse_market_filename(name)


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    return make_synthetic_market(tmp_path_factory.mktemp("market"))


def _pids_in(folder: Path) -> Counter:
    return Counter(parse_market_filename(p)[0] for p in folder.iterdir())


def test_synthetic_market_files(market):
    train, query, gallery = (_pids_in(market / f) for f in ("bounding_box_train", "query", "bounding_box_test"))
    assert sum(train.values()) == 8 * 3 * 2 and set(train) == {1, 3, 5, 7, 9, 11, 13, 15}
    assert sum(query.values()) == 8 * 2 and set(query) == {2, 4, 6, 8, 10, 12, 14, 16}
    assert gallery[0] == 2 and gallery[-1] == 2 and sum(gallery.values()) == 8 * 4 + 4
    assert not (set(train) & set(gallery)) - {0, -1}


def test_synthetic_market_is_deterministic(market, tmp_path):
    again = make_synthetic_market(tmp_path / "again")
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        names = sorted(p.name for p in (market / folder).iterdir())
        assert names == sorted(p.name for p in (again / folder).iterdir())
        assert all((market / folder / n).read_bytes() == (again / folder / n).read_bytes() for n in names)
    with pytest.raises(DatasetError, match="already holds files"):
        make_synthetic_market(again)


def test_synthetic_identities_are_learnable(market):
    """Cross-camera rank-1 retrieval on raw pixels is far above chance (1/8): the identity
    pattern survives the shift and noise, so a model can learn it."""
    query = MarketDataset(market, "query", size=(32, 16))
    gallery = MarketDataset(market, "gallery", size=(32, 16))
    xq = torch.stack([query[i][0] for i in range(len(query))]).flatten(1)
    xg = torch.stack([gallery[i][0] for i in range(len(gallery))]).flatten(1)
    same_pid = torch.as_tensor(query.pids)[:, None] == torch.as_tensor(gallery.pids)[None]
    same_cam = torch.as_tensor(query.camids)[:, None] == torch.as_tensor(gallery.camids)[None]
    distance = torch.cdist(xq, xg).masked_fill(same_pid & same_cam, float("inf"))  # Market protocol
    rank1 = same_pid[torch.arange(len(query)), distance.argmin(1)].float().mean().item()
    assert rank1 > 0.6


def test_market_train_relabelled_and_distractor_free(market, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(market, root)
    # a junk and a distractor crop in train must be dropped too
    shutil.copy(next((root / "bounding_box_test").glob("-1_*")), root / "bounding_box_train")
    shutil.copy(next((root / "bounding_box_test").glob("0000_*")), root / "bounding_box_train")
    ds = MarketDataset(root, "train", size=(32, 16))
    assert len(ds) == 48 and ds.num_ids == 8
    assert sorted(set(ds.pids.tolist())) == list(range(8))
    assert set(ds.raw_pids.tolist()) == {1, 3, 5, 7, 9, 11, 13, 15}
    assert ds.pid_to_label[1] == 0 and ds.pid_to_label[15] == 7
    image, pid, camid = ds[0]
    assert image.shape == (3, 32, 16) and image.dtype == torch.float32
    assert pid == ds.pids[0] and camid == ds.camids[0] and 1 <= camid <= 3


def test_market_query_and_gallery(market):
    query = MarketDataset(market, "query", size=(32, 16))
    gallery = MarketDataset(market, "gallery", size=(32, 16))
    assert len(query) == 16 and len(gallery) == 8 * 4 + 2  # junk dropped, distractors kept
    assert not query.relabel and not gallery.relabel
    assert set(query.pids.tolist()) == {2, 4, 6, 8, 10, 12, 14, 16}
    assert (gallery.pids == 0).sum() == 2 and -1 not in gallery.pids
    assert query.num_ids == 8 and gallery.num_ids == 8
    assert set(query.camids.tolist()) == {1, 2} and set(gallery.camids.tolist()) <= {1, 2, 3}
    for pid, camid in zip(query.pids, query.camids):  # every query has a cross-camera match
        assert ((gallery.pids == pid) & (gallery.camids != camid)).any()
    assert len(query.pids) == len(query.camids) == len(query.paths)


def test_market_missing_folder_and_empty(market, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(market, root)
    shutil.rmtree(root / "query")
    with pytest.raises(DatasetError, match="query"):
        MarketDataset(root, "query")
    (root / "query").mkdir()
    (root / "query" / "Thumbs.db").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        MarketDataset(root, "query")
    (root / "query" / "notaname.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"notaname\.jpg"):
        MarketDataset(root, "query")
    with pytest.raises(ValueError, match="'val'"):
        MarketDataset(root, "val")


# --------------------------------------------------------------------------------- P x K


def _batches(sampler: PKSampler) -> list[list[int]]:
    indices = list(sampler)
    assert len(indices) == len(sampler) and len(indices) % sampler.batch_size == 0
    return [indices[i:i + sampler.batch_size] for i in range(0, len(indices), sampler.batch_size)]


def test_pk_sampler_batches():
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(10) * 7, rng.integers(1, 9, size=10))  # 1..8 images per id
    sampler = PKSampler(pids, p=4, k=3)
    batches = _batches(sampler)
    assert len(batches) >= 2
    for batch in batches:
        counts = Counter(int(pids[i]) for i in batch)
        assert len(counts) == 4 and set(counts.values()) == {3}
        # the k images of an identity are consecutive
        assert all(len({int(pids[i]) for i in batch[j:j + 3]}) == 1 for j in range(0, 12, 3))


def test_pk_sampler_deterministic_per_epoch():
    pids = np.repeat(np.arange(12), 6)
    a, b = PKSampler(pids, p=3, k=2, seed=5), PKSampler(pids, p=3, k=2, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) and list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(PKSampler(pids, p=3, k=2, seed=6)) != first


def test_pk_sampler_with_dataloader_on_market(market):
    ds = MarketDataset(market, "train", size=(16, 8))
    sampler = PKSampler(ds.pids, p=4, k=4)
    loader = DataLoader(ds, batch_size=sampler.batch_size, sampler=sampler)
    assert len(loader) == len(sampler) // 16
    _, pids, _ = next(iter(loader))
    assert sorted(Counter(pids.tolist()).values()) == [4, 4, 4, 4]


def test_pk_sampler_errors():
    with pytest.raises(ValueError, match="p=4 identities.*3"):
        PKSampler([0, 0, 1, 1, 2, 2], p=4, k=2)
    with pytest.raises(ValueError, match="k"):
        PKSampler([0, 1], p=1, k=0)


def test_digits_subset_relabels_and_keeps_the_fixed_split():
    import compressor as C
    from compressor.training._datasets import parse_data_spec

    full = C.digits_dataset("train")
    target = parse_data_spec("digits:5-9").train_set()
    assert target.num_classes == 5 and target.classes == ("5", "6", "7", "8", "9")
    expected = [i for i in range(len(full)) if int(full.targets[i]) >= 5]
    assert len(target) == len(expected)
    assert torch.equal(target.images, full.images[expected])
    assert torch.equal(target.targets, full.targets[expected] - 5)
    picked = parse_data_spec("digits:7,2").eval_sets()[0]
    assert set(picked.targets.tolist()) == {0, 1} and picked.classes == ("7", "2")
    for bad in ("digits:3-12", "digits:a", "digits:1,1"):
        with pytest.raises(C.DatasetError, match="digits"):
            parse_data_spec(bad)
