"""Datasets: Fashion-MNIST (Debian ``dataset-fashion-mnist`` IDX files), scikit-learn digits,
and any ``torchvision.datasets.ImageFolder`` directory. Nothing is downloaded at run time.

Splits are deterministic: the validation set is a fixed, seeded ``random_split`` of the training files.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, TensorDataset, random_split

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
    """An unsigned-byte IDX file (LeCun's MNIST format), optionally gzipped, as a uint8 tensor; read by
    torchvision's MNIST reader (a gzipped file is unpacked into a temporary file for it first)."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    path = Path(path)
    try:
        if path.suffix != ".gz":
            tensor = read_sn3_pascalvincent_tensor(str(path), strict=False)
        else:
            with gzip.open(path, "rb") as packed, tempfile.NamedTemporaryFile(suffix=".idx") as plain:
                shutil.copyfileobj(packed, plain)
                plain.flush()
                tensor = read_sn3_pascalvincent_tensor(plain.name, strict=False)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    except (AssertionError, KeyError, ValueError) as exc:  # the reader's checks of the magic number
        raise DataError(f"{path} is not an IDX file") from exc
    except RuntimeError as exc:  # the data does not fill the shape the header gives
        raise DataError(f"{path} is truncated: its data does not match the shape in its header ({exc})") from exc
    if tensor.dtype != torch.uint8:
        raise DataError(f"{path} is not an unsigned-byte IDX file ({tensor.dtype})")
    return tensor


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


def seeded_split(n: int, sizes: list[int]) -> list[torch.Tensor]:
    """Indices of ``n`` items cut into parts of ``sizes`` by ``random_split`` with the fixed SPLIT_SEED."""
    parts = random_split(range(n), sizes, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return [torch.tensor(part.indices, dtype=torch.long) for part in parts]


def _normalise(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return ((images.float() / 255.0) - mean) / std


def load_fashion_mnist(data_dir: str | Path | None = None, val_size: int = 5000) -> DataSplits:
    """Full Fashion-MNIST: 55k train / 5k validation (seeded) / 10k test, 1x28x28, 10 classes."""
    directory = fashion_mnist_dir(data_dir)
    arrays = {key: read_idx(_find_idx(directory, stem)) for key, stem in FASHION_MNIST_FILES.items()}
    mean, std = 0.2860, 0.3530  # Fashion-MNIST training-set statistics
    train_x = _normalise(arrays["train_images"], mean, std).unsqueeze(1)
    test_x = _normalise(arrays["test_images"], mean, std).unsqueeze(1)
    train_y = arrays["train_labels"].long()
    val_idx, train_idx = seeded_split(len(train_y), [val_size, len(train_y) - val_size])
    return DataSplits("fashion-mnist", TensorDataset(train_x[train_idx], train_y[train_idx]),
                      TensorDataset(train_x[val_idx], train_y[val_idx]),
                      TensorDataset(test_x, arrays["test_labels"].long()), 1, 10, 28)


def load_digits() -> DataSplits:
    """scikit-learn's bundled 8x8 digits (1,797 images): 1,197 train / 300 val / 300 test."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as exc:
        raise DataError("the digits dataset needs scikit-learn: `pip install scikit-learn`") from exc
    bunch = sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = (images - 0.3) / 0.4
    labels = torch.tensor(bunch.target, dtype=torch.long)
    parts = seeded_split(len(labels), [1197, 300, len(labels) - 1497])
    train, val, test = (TensorDataset(images[idx], labels[idx]) for idx in parts)
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
            n_val, n_test = int(len(full) * val_fraction), int(len(full) * test_fraction)
            val, test, train = (Subset(full, idx.tolist())
                                for idx in seeded_split(len(full), [n_val, n_test, len(full) - n_val - n_test]))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"cannot read image folder {root}: {exc}") from exc
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
