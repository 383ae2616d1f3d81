"""Datasets as in-memory tensors, and a batch iterator over them.

Every dataset is loaded whole into memory (the largest, MNIST, is 220 MB as float32) and batched by
slicing, which is much faster than a ``DataLoader`` for data this small. Images are flattened to
``(N, height * width)`` float32 rows with values in [0, 1].

Files are read through :mod:`ppl_vae.data.files` (SHA256-checked, downloaded when missing)::

    dataset = load_dataset("mnist-binarized", device="cuda")
    generator = torch.Generator().manual_seed(0)
    for x in batches(dataset.train, 128, generator, binarize=dataset.dynamic_binarization):
        svi.step(x)
"""

from __future__ import annotations

import gzip
import os
import zipfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ppl_vae.data.batching import sample_binary
from ppl_vae.data.files import (DELETE_CORRUPTED, DISCARDED_DOWNLOAD, DataFile, check_array_sha256, data_dir,
                                downloaded, fetch, temporary_file)
from ppl_vae.errors import ConfigError, DataError
from ppl_vae.registry import Registry

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_SHAPE = (28, 28)
FREY_SHAPE = (28, 20)
FREY_TEST_SIZE = 200
DIGITS_TEST_SIZE = 297
SPLIT_SEED = 0
FIXED_BINARIZED_MNIST_URL = (
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
    "binarized_mnist_{split}.amat"
)
# SHA256 of each array's bytes (uint8, C order). The .npz file itself has no stable hash: re-saving
# the same arrays changes the zip timestamps.
FIXED_BINARIZED_MNIST_SHA256 = {
    "train": "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a",
    "valid": "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e",
    "test": "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86",
}
SPLITS = ("train", "valid", "test")


@dataclass
class Dataset:
    """A dataset held in memory: flattened images in [0, 1], one row per example.

    ``train``, ``test`` and ``valid`` are float32 tensors of shape (N, height * width); the labels,
    where the dataset has them, are int64 tensors of shape (N,). ``binary`` says every value the
    model sees is exactly 0 or 1 (after any binarization); ``dynamic_binarization`` says the
    training set is grayscale and must be resampled on every batch with
    ``batches(..., binarize=True)``.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    image_shape: tuple[int, int]
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None
    binary: bool = False
    dynamic_binarization: bool = False

    @property
    def data_dim(self) -> int:
        return self.train.shape[1]

    @property
    def splits(self) -> list[str]:
        """The splits this dataset has, among ``"train"``, ``"valid"`` and ``"test"``."""
        return [split for split in SPLITS if getattr(self, split) is not None]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The examples and labels (``None`` if unlabelled) of split ``name``."""
        if name not in self.splits:
            raise DataError(
                f"Dataset {self.name!r} has no {name!r} split. "
                f"Use one of: {', '.join(self.splits)} "
                "(of the datasets here, only 'mnist-fixed' has a 'valid' split)."
            )
        return getattr(self, name), getattr(self, f"{name}_labels")

    def to(self, device: str | torch.device) -> Dataset:
        """A copy with every tensor on ``device``."""
        moved = {
            field.name: getattr(self, field.name).to(device)
            for field in fields(self)
            if isinstance(getattr(self, field.name), torch.Tensor)
        }
        return replace(self, **moved)

    def subset(self, train_size: int | None) -> Dataset:
        """A copy whose training split is its first ``train_size`` examples (labels with them), for
        small-data experiments (AEVB Fig. 3 trains on 1000 MNIST digits); ``None`` keeps them all."""
        if train_size is None:
            return self
        available = self.train.shape[0]
        if train_size > available:
            raise ConfigError(f"data.train_size: {train_size} is more than the {available} training examples of "
                              f"{self.name!r}; choose at most {available}, or null for all of them.")
        labels = None if self.train_labels is None else self.train_labels[:train_size]
        return replace(self, train=self.train[:train_size], train_labels=labels)


DATASETS: Registry[Dataset] = Registry("dataset")


_find_data_dir = data_dir  # load_dataset's ``data_dir`` argument hides the function


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    download: bool = True,
) -> Dataset:
    """Load dataset ``name`` (one of ``DATASETS.names()``) onto ``device``.

    Files are read from ``data_dir`` (default: $PPL_VAE_DATA, else ~/.cache/ppl_vae), checked
    against their SHA256, and downloaded there first if missing and ``download`` is true.
    """
    loader = DATASETS.get(name, key="data.name")
    if data_dir is not None and not reads_files(loader):
        raise ConfigError(
            f"data.data_dir: dataset {name!r} is built in and reads no files, so the data folder "
            f"{str(data_dir)!r} would be ignored; leave data.data_dir (--data-dir) unset for it, or choose a "
            "dataset that is read from files."
        )
    dataset = check_dataset(loader(_find_data_dir(data_dir), download))
    return dataset.to(device)


Loader = Callable[[Path, bool], Dataset]


def built_in(loader: Loader) -> Loader:
    """Mark a dataset loader as reading no files (its data ship with a library or are generated):
    :func:`load_dataset` then refuses an explicit data folder, which it would ignore."""
    loader.reads_files = False
    return loader


def reads_files(loader: Loader) -> bool:
    """Whether a registered dataset loader reads files from the data folder (see :func:`built_in`)."""
    return getattr(loader, "reads_files", True)


# -- the datasets --------------------------------------------------------------------------------


@DATASETS.register("digits")
@built_in
def load_digits(data_dir: Path, download: bool = True) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (bundled with scikit-learn: no file, no download).

    Split: the 1797 images are shuffled by ``torch.randperm`` with seed 0; the first 1500 are the
    training set and the last 297 the test set. Pixels 0..16 are divided by 16. Labelled 0..9.
    """
    import sklearn.datasets  # imported here: scikit-learn takes seconds to import

    digits = sklearn.datasets.load_digits()
    images = torch.from_numpy(digits.data / 16).float()
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    train, test = order[:-DIGITS_TEST_SIZE], order[-DIGITS_TEST_SIZE:]
    return Dataset(
        name="digits",
        train=images[train],
        test=images[test],
        image_shape=(8, 8),
        train_labels=labels[train],
        test_labels=labels[test],
    )


@DATASETS.register("mnist")
def load_mnist(data_dir: Path, download: bool = True) -> Dataset:
    """MNIST in grayscale, pixels divided by 255: the official split of 60000 training and 10000
    test images, 28x28, labelled 0..9."""
    return _load_mnist_files("mnist", data_dir, download)


@DATASETS.register("mnist-binarized")
def load_mnist_binarized(data_dir: Path, download: bool = True) -> Dataset:
    """MNIST with dynamic binarization (Burda et al. 2015), on the official 60000/10000 split.

    The training set stays grayscale, to be resampled on every batch
    (``dynamic_binarization=True``); the test set is binarized once, with a generator seeded 0, so
    that every evaluation sees the same binary images.
    """
    dataset = _load_mnist_files("mnist-binarized", data_dir, download)
    test = sample_binary(dataset.test, torch.Generator().manual_seed(SPLIT_SEED))
    return replace(dataset, test=test, binary=True, dynamic_binarization=True)


@DATASETS.register("mnist-fixed")
def load_mnist_fixed(data_dir: Path, download: bool = True) -> Dataset:
    """Larochelle & Murray's (2011) fixed binarization of MNIST, with its own split: 50000 training,
    10000 validation and 10000 test images, 28x28, values in {0, 1}, unlabelled.

    Read from ``binarized_mnist.npz``; each array is checked against the SHA256 of its bytes.
    """
    (path,) = fetch([FIXED_BINARIZED_MNIST], data_dir, download)
    try:
        with np.load(path) as arrays:
            splits = {split: arrays[split] for split in SPLITS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(
            f"{path}: not a readable .npz with arrays {', '.join(SPLITS)} ({error}). "
            + DELETE_CORRUPTED
        ) from error
    for split, array in splits.items():
        check_array_sha256(array, FIXED_BINARIZED_MNIST_SHA256[split], f"{path} (array {split!r})")
    return Dataset(
        name="mnist-fixed",
        **{split: torch.from_numpy(array.astype(np.float32)) for split, array in splits.items()},
        image_shape=MNIST_SHAPE,
        binary=True,
    )


@DATASETS.register("frey")
def load_frey(data_dir: Path, download: bool = True) -> Dataset:
    """The Frey Face dataset: 1965 grayscale 28x20 frames of a video, pixels divided by 255.

    Split: the first 1765 frames are the training set and the last 200 the test set. Neighbouring
    frames are near-duplicates, so a random split would leak test faces into training. Unlabelled.
    """
    (path,) = fetch([FREY_FACE], data_dir, download)
    import scipy.io  # imported here: SciPy takes a second to import

    faces = scipy.io.loadmat(path)["ff"].T.reshape(-1, *FREY_SHAPE)
    pixels = _unit_rows(faces, scale=255)
    return Dataset(
        name="frey",
        train=pixels[:-FREY_TEST_SIZE],
        test=pixels[-FREY_TEST_SIZE:],
        image_shape=FREY_SHAPE,
    )


MIXTURE_CENTRES = ((0.2, 0.4), (0.2, 0.6), (0.8, 0.4), (0.8, 0.6))
MIXTURE_STD = 0.02
MIXTURE_SIZES = (2000, 500)


@DATASETS.register("mixture2d")
@built_in
def load_mixture2d(data_dir: Path, download: bool = True) -> Dataset:
    """A 2-D mixture of four Gaussians (std 0.02) in the unit square, in two pairs: the pairs are
    0.6 apart, the clusters in a pair 0.2 apart (Taming VAEs Fig. 2, β-VAE phase transitions).

    2000 training and 500 test points, drawn with seed 0 (no file); labels are the cluster indices.
    Each point is a 1x2 "image"."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    count = sum(MIXTURE_SIZES)
    labels = torch.randint(len(MIXTURE_CENTRES), (count,), generator=generator)
    noise = MIXTURE_STD * torch.randn(count, 2, generator=generator)
    points = (torch.tensor(MIXTURE_CENTRES)[labels] + noise).clamp(0, 1)
    train = slice(0, MIXTURE_SIZES[0])
    test = slice(MIXTURE_SIZES[0], count)
    return Dataset(name="mixture2d", train=points[train], test=points[test], image_shape=(1, 2),
                   train_labels=labels[train], test_labels=labels[test])


def _load_mnist_files(name: str, folder: Path, download: bool) -> Dataset:
    """MNIST from the four IDX files: grayscale pixels / 255, official split, labels."""
    paths = dict(zip(MNIST_FILES, fetch(list(MNIST_FILES.values()), folder, download)))
    return Dataset(
        name=name,
        train=_unit_rows(_read_idx(paths["train-images"], ndim=3), scale=255),
        test=_unit_rows(_read_idx(paths["test-images"], ndim=3), scale=255),
        image_shape=MNIST_SHAPE,
        train_labels=torch.from_numpy(_read_idx(paths["train-labels"], ndim=1).astype(np.int64)),
        test_labels=torch.from_numpy(_read_idx(paths["test-labels"], ndim=1).astype(np.int64)),
    )


def _unit_rows(pixels: np.ndarray, scale: float) -> torch.Tensor:
    """Images (N, height, width) as float32 rows (N, height * width) divided by ``scale``."""
    return torch.from_numpy(pixels.reshape(len(pixels), -1).astype(np.float32)).div_(scale)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte array from a gzipped IDX file (LeCun's format: magic 0x0000080<ndim>, then
    ``ndim`` big-endian uint32 dimensions, then the bytes)."""
    with gzip.open(path, "rb") as file:
        raw = file.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x800 + ndim:
        raise DataError(
            f"{path}: not an IDX file of {ndim}-d unsigned bytes (magic number {magic:#010x}, "
            f"expected {0x800 + ndim:#010x}). {DELETE_CORRUPTED}"
        )
    shape = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if pixels.size != shape.prod():
        raise DataError(
            f"{path}: the header says shape {tuple(shape)} but the file holds {pixels.size} "
            f"values. {DELETE_CORRUPTED}"
        )
    return pixels.reshape(shape)


def check_dataset(dataset: Dataset) -> Dataset:
    """Return ``dataset`` if every split is what the model needs, else raise a DataError saying
    which split is wrong and how: a non-empty float32 tensor of shape (N, height * width) with
    finite values in [0, 1], and N labels where labelled."""
    for split in dataset.splits:
        _check_split(dataset, split)
    return dataset


def _check_split(dataset: Dataset, split: str) -> None:
    x, labels = dataset.split(split)
    where = f"Dataset {dataset.name!r}, split {split!r}"
    data_dim = int(np.prod(dataset.image_shape))
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise DataError(
            f"{where}: expected a torch tensor of float32, got {type(x).__name__} of "
            f"{getattr(x, 'dtype', 'no dtype')}; a loader should return torch.from_numpy(array).float()."
        )
    if x.ndim != 2 or x.shape[0] == 0 or data_dim == 0 or x.shape[1] != data_dim:
        raise DataError(
            f"{where}: expected a non-empty (N, {data_dim}) array (image shape "
            f"{tuple(dataset.image_shape)}), got shape {tuple(x.shape)}. {DELETE_CORRUPTED}"
        )
    low, high = torch.aminmax(x)  # NaN if any value is NaN
    if not (0 <= low and high <= 1):
        raise DataError(
            f"{where}: values span [{low:g}, {high:g}], expected finite values in [0, 1]. "
            + DELETE_CORRUPTED
        )
    if labels is not None and labels.shape != (x.shape[0],):
        raise DataError(
            f"{where}: {x.shape[0]} examples but labels of shape {tuple(labels.shape)}. "
            + DELETE_CORRUPTED
        )


def _mnist_file(name: str, sha256: str) -> DataFile:
    return DataFile(f"mnist/{name}", tuple(mirror + name for mirror in MNIST_MIRRORS), sha256)


MNIST_FILES = {
    "train-images": _mnist_file(
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train-labels": _mnist_file(
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "test-images": _mnist_file(
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "test-labels": _mnist_file(
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}
FREY_FACE = DataFile(
    "frey_rawface.mat",
    ("https://cs.nyu.edu/~roweis/data/frey_rawface.mat",),
    "265a83a23adb081755cd3de375509828e690324d1d60f076b8ecebc840d59c64",
)


def _assemble_fixed_binarized_mnist(path: Path) -> None:
    """Download Larochelle's three text files (784 space-separated 0/1 per row), check each array's
    hash and save them together as ``path`` (.npz)."""
    arrays = {}
    for split in SPLITS:
        url = FIXED_BINARIZED_MNIST_URL.format(split=split)
        with downloaded(url, path.parent) as part:
            arrays[split] = np.loadtxt(part, dtype=np.uint8, ndmin=2)
        expected = FIXED_BINARIZED_MNIST_SHA256[split]
        check_array_sha256(arrays[split], expected, url, fix=DISCARDED_DOWNLOAD)
    with temporary_file(path.parent) as part:
        with part.open("wb") as file:
            np.savez_compressed(file, **arrays)
        os.replace(part, path)


FIXED_BINARIZED_MNIST = DataFile(
    "binarized_mnist.npz",
    tuple(FIXED_BINARIZED_MNIST_URL.format(split=split) for split in SPLITS),
    assemble=_assemble_fixed_binarized_mnist,
)


def evaluation_split(dataset: Dataset, split: str) -> torch.Tensor:
    """The data of a split as the model sees it when evaluated: dynamically binarized data is
    binarized once with a fixed seed, so that evaluations are comparable between epochs and runs."""
    x, _ = dataset.split(split)
    if dataset.dynamic_binarization and split == "train":
        x = sample_binary(x, torch.Generator().manual_seed(SPLIT_SEED))
    return x
