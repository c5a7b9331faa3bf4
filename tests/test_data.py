import gzip
import struct

import pytest
import torch

from energysplit.errors import DataError
from energysplit.training.data import (SPLIT_SEED, fashion_mnist_dir, load_dataset, load_fashion_mnist, read_idx,
                                       seeded_split)


def _write_idx(path, array: torch.Tensor):
    header = bytes([0, 0, 0x08, array.dim()]) + struct.pack(">" + "I" * array.dim(), *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.numpy().tobytes())


def _fake_fashion(tmp_path, n_train=60, n_test=20):
    g = torch.Generator().manual_seed(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", torch.randint(0, 256, (n_train, 28, 28), generator=g, dtype=torch.uint8))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", torch.randint(0, 10, (n_train,), generator=g, dtype=torch.uint8))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", torch.randint(0, 256, (n_test, 28, 28), generator=g, dtype=torch.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", torch.randint(0, 10, (n_test,), generator=g, dtype=torch.uint8))


def test_idx_roundtrip_and_truncation(tmp_path):
    array = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    assert torch.equal(read_idx(tmp_path / "a.gz"), array)
    raw = gzip.open(tmp_path / "a.gz").read()
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "b.gz")


def test_idx_plain_garbled_and_unreadable_files(tmp_path):
    array = torch.arange(12, dtype=torch.uint8).reshape(3, 4)
    _write_idx(tmp_path / "a.gz", array)
    (tmp_path / "plain").write_bytes(gzip.open(tmp_path / "a.gz").read())
    assert torch.equal(read_idx(tmp_path / "plain"), array)
    (tmp_path / "text").write_bytes(b"hello, world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "text")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "missing.gz")


def test_splits_are_the_seeded_permutation_of_earlier_versions(digits):
    """random_split with SPLIT_SEED cuts the same permutation the loaders always used: figures do not move."""
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(SPLIT_SEED))
    parts = seeded_split(1797, [1197, 300, 300])
    assert [p.tolist() for p in parts] == [order[:1197].tolist(), order[1197:1497].tolist(), order[1497:].tolist()]
    from sklearn.datasets import load_digits

    labels = torch.tensor(load_digits().target)
    assert torch.equal(digits.val.tensors[1], labels[order[1197:1497]])


def test_fashion_from_directory_is_deterministic(tmp_path):
    _fake_fashion(tmp_path)
    a = load_fashion_mnist(tmp_path, val_size=10)
    b = load_fashion_mnist(tmp_path, val_size=10)
    assert (len(a.train), len(a.val), len(a.test)) == (50, 10, 20)
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    assert a.input_shape == (1, 28, 28) and a.num_classes == 10


def test_missing_dataset_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("energysplit.training.data.FASHION_MNIST_DIRS", (str(tmp_path / "nowhere"),))
    monkeypatch.delenv("ENERGYSPLIT_FASHION_MNIST", raising=False)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_dir()
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_real_fashion_mnist_files():
    try:
        fashion_mnist_dir()
    except DataError:
        pytest.skip("dataset-fashion-mnist is not installed")
    splits = load_fashion_mnist()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    x, y = splits.train[0]
    assert x.shape == (1, 28, 28) and 0 <= int(y) < 10
    labels = splits.test.tensors[1]
    assert torch.bincount(labels).tolist() == [1000] * 10  # the real test set is balanced
    assert abs(splits.train.tensors[0].mean().item()) < 0.05  # normalised with the training statistics


def test_digits_splits(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1197, 300, 300)
    assert digits.input_shape == (1, 8, 8)
    small = digits.subset(train=100, val=50)
    assert (len(small.train), len(small.val), len(small.test)) == (100, 50, 300)


def test_image_folder(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.new("RGB", (20, 24), color=(i * 20, 0, 0)).save(tmp_path / cls / f"{i}.png")
    splits = load_dataset(str(tmp_path), image_size=16)
    assert splits.num_classes == 2 and splits.in_channels == 3
    assert len(splits.train) + len(splits.val) + len(splits.test) == 20
    assert splits.train[0][0].shape == (3, 16, 16)
