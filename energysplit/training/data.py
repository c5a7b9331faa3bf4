"""Datasets: Fashion-MNIST (Debian ``dataset-fashion-mnist`` IDX files), scikit-learn digits,
and any ``torchvision.datasets.ImageFolder`` directory. Nothing is downloaded at run time.

Splits are deterministic: the validation set is a fixed, seeded slice of the training files.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..errors import DataError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_ENV = "ENERGYSPLIT_FASHION_MNIST"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SPLIT_SEED = 20191007  # fixed: the validation slice never changes between runs


@dataclass
class DataSplits:
    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    in_channels: int
    num_classes: int
    image_size: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def subset(self, train: int | None = None, val: int | None = None, test: int | None = None) -> "DataSplits":
        """The first n items of each split (deterministic), for quick profiles and tests."""

        def cut(ds: Dataset, n: int | None) -> Dataset:
            return ds if n is None or n >= len(ds) else Subset(ds, range(n))

        return DataSplits(self.name, cut(self.train, train), cut(self.val, val), cut(self.test, test),
                          self.in_channels, self.num_classes, self.image_size)


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped) into a uint8 tensor (LeCun's MNIST format)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    count = 1
    for d in dims:
        count *= d
    body = raw[4 + 4 * ndim:]
    if len(body) != count:
        raise DataError(f"{path} is truncated: expected {count} bytes of data, found {len(body)}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    return None


def fashion_mnist_dir(data_dir: str | Path | None = None) -> Path:
    """Where the Fashion-MNIST IDX files are: ``data_dir``, $ENERGYSPLIT_FASHION_MNIST, or Debian's path."""
    candidates = [Path(data_dir)] if data_dir else []
    if os.environ.get(FASHION_MNIST_ENV):
        candidates.append(Path(os.environ[FASHION_MNIST_ENV]))
    candidates += [Path(p) for p in FASHION_MNIST_DIRS]
    for directory in candidates:
        if all(_find_idx(directory, stem) for stem in FASHION_MNIST_FILES.values()):
            return directory
    raise DataError(
        "Fashion-MNIST not found (looked in " + ", ".join(map(str, candidates)) + "); install it with "
        "`apt-get install dataset-fashion-mnist`, or pass --data-dir / set "
        f"{FASHION_MNIST_ENV} to a directory holding the four IDX files"
    )


def _split_train_val(images: torch.Tensor, labels: torch.Tensor, val_size: int):
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_idx, train_idx = order[:val_size], order[val_size:]
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


def _normalise(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return ((images.float() / 255.0) - mean) / std


def load_fashion_mnist(data_dir: str | Path | None = None, val_size: int = 5000) -> DataSplits:
    """Full Fashion-MNIST: 55k train / 5k validation (seeded) / 10k test, 1x28x28, 10 classes."""
    directory = fashion_mnist_dir(data_dir)
    arrays = {key: read_idx(_find_idx(directory, stem)) for key, stem in FASHION_MNIST_FILES.items()}
    mean, std = 0.2860, 0.3530  # Fashion-MNIST training-set statistics
    train_x = _normalise(arrays["train_images"], mean, std).unsqueeze(1)
    test_x = _normalise(arrays["test_images"], mean, std).unsqueeze(1)
    (tx, ty), (vx, vy) = _split_train_val(train_x, arrays["train_labels"].long(), val_size)
    return DataSplits("fashion-mnist", TensorDataset(tx, ty), TensorDataset(vx, vy),
                      TensorDataset(test_x, arrays["test_labels"].long()), 1, 10, 28)


def load_digits() -> DataSplits:
    """scikit-learn's bundled 8x8 digits (1,797 images): 1,197 train / 300 val / 300 test."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn: `pip install scikit-learn`") from None
    bunch = sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = (images - 0.3) / 0.4
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    images, labels = images[order], labels[order]
    parts = [(0, 1197), (1197, 1497), (1497, len(labels))]
    train, val, test = (TensorDataset(images[a:b], labels[a:b]) for a, b in parts)
    return DataSplits("digits", train, val, test, 1, 10, 8)


def load_image_folder(root: str | Path, image_size: int = 32, grayscale: bool = False,
                      val_fraction: float = 0.1, test_fraction: float = 0.1) -> DataSplits:
    """A ``torchvision.datasets.ImageFolder`` directory (one sub-folder per class).

    If ``root`` holds ``train/`` and ``val/`` (and optionally ``test/``) sub-folders they are used as
    the splits; otherwise the images are split by a seeded permutation.
    """
    from torchvision import datasets, transforms

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass a directory with one sub-folder per class")
    steps = [transforms.Grayscale(1)] if grayscale else [transforms.Lambda(lambda im: im.convert("RGB"))]
    steps += [transforms.Resize((image_size, image_size)), transforms.ToTensor(),
              transforms.Normalize([0.5] * (1 if grayscale else 3), [0.5] * (1 if grayscale else 3))]
    tf = transforms.Compose(steps)
    try:
        if (root / "train").is_dir() and (root / "val").is_dir():
            train = datasets.ImageFolder(root / "train", transform=tf)
            val = datasets.ImageFolder(root / "val", transform=tf)
            test = datasets.ImageFolder(root / "test", transform=tf) if (root / "test").is_dir() else val
            classes = len(train.classes)
        else:
            full = datasets.ImageFolder(root, transform=tf)
            classes = len(full.classes)
            order = torch.randperm(len(full), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
            n_val, n_test = int(len(full) * val_fraction), int(len(full) * test_fraction)
            val = Subset(full, order[:n_val])
            test = Subset(full, order[n_val:n_val + n_test])
            train = Subset(full, order[n_val + n_test:])
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"cannot read image folder {root}: {exc}") from None
    return DataSplits(f"folder:{root.name}", train, val, test, 1 if grayscale else 3, classes, image_size)


BUILTIN_DATASETS = ("fashion-mnist", "digits")


def load_dataset(name: str, data_dir: str | Path | None = None, **kwargs) -> DataSplits:
    """``fashion-mnist``, ``digits``, or a path to an ImageFolder directory."""
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, **kwargs)
    if name == "digits":
        return load_digits()
    if Path(name).is_dir():
        return load_image_folder(name, **kwargs)
    raise DataError(f"unknown dataset {name!r}; use one of {', '.join(BUILTIN_DATASETS)} "
                    "or a path to an ImageFolder directory")
