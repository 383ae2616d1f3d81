"""Tests of ppl_vae.data: the datasets' documented shapes and splits, file integrity, the offline
download logic (urllib is faked: these tests never touch the network) and the batch iterator."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppl_vae.data import datasets as data, files
from ppl_vae.data import DATASETS, Dataset, batches, load_dataset
from ppl_vae.data.batching import sample_binary
from ppl_vae.errors import ConfigError, DataError

MNIST_TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FIXED_BINARIZED_ONES = {"train": 5118041, "valid": 1028036, "test": 1038896}
MNIST_PATHS = [file.relpath for file in data.MNIST_FILES.values()]


@pytest.fixture(scope="module")
def shared_data() -> Path:
    """The folder of real dataset files that CI points PPL_VAE_DATA at."""
    if not os.environ.get("PPL_VAE_DATA"):
        pytest.skip("PPL_VAE_DATA is not set: point it at a folder holding the dataset files")
    return Path(os.environ["PPL_VAE_DATA"])


def require(folder: Path, *relpaths: str) -> None:
    missing = [str(folder / relpath) for relpath in relpaths if not (folder / relpath).exists()]
    if missing:
        pytest.skip(f"dataset files missing from PPL_VAE_DATA: {', '.join(missing)}")


@pytest.fixture(scope="module")
def mnist(shared_data: Path) -> Dataset:
    require(shared_data, *MNIST_PATHS)
    return load_dataset("mnist", shared_data, download=False)


@pytest.fixture(scope="module")
def mnist_binarized(shared_data: Path) -> Dataset:
    require(shared_data, *MNIST_PATHS)
    return load_dataset("mnist-binarized", shared_data, download=False)


@pytest.fixture
def frey_path(shared_data: Path) -> Path:
    require(shared_data, "frey_rawface.mat")
    return shared_data / "frey_rawface.mat"


class FakeResponse(io.BytesIO):
    """What ``urllib.request.urlopen`` returns, serving ``payload``."""

    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def fake_urlopen(serve: dict[str, bytes], requests: list | None = None):
    """A stand-in for ``urlopen`` serving ``serve[url]``, and failing like a machine with no
    network for any other URL. Records (url, User-Agent, timeout) into ``requests``."""

    def urlopen(request: urllib.request.Request, timeout: float | None = None) -> FakeResponse:
        if requests is not None:
            requests.append((request.full_url, request.get_header("User-agent"), timeout))
        if request.full_url not in serve:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return FakeResponse(serve[request.full_url])

    return urlopen


def is_binary(x: torch.Tensor) -> bool:
    """Every value is 0 or 1, and both occur."""
    return bool(((x == 0) | (x == 1)).all() and (x == 0).any() and (x == 1).any())


def files_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


# -- the datasets --------------------------------------------------------------------------------


def test_digits_documented_split():
    dataset = load_dataset("digits")
    assert dataset.train.shape == (1500, 64) and dataset.test.shape == (297, 64)
    assert dataset.train.dtype == torch.float32 and dataset.image_shape == (8, 8)
    assert dataset.train.min() == 0 and dataset.train.max() == 1
    assert dataset.train_labels.dtype == torch.int64 and dataset.test_labels.shape == (297,)
    assert not dataset.binary and dataset.valid is None
    counts = torch.bincount(torch.cat([dataset.train_labels, dataset.test_labels]))
    assert counts.sum() == 1797 and (counts > 170).all()
    again = load_dataset("digits")
    assert torch.equal(again.test, dataset.test)
    assert torch.equal(again.train_labels, dataset.train_labels)


def test_mnist_documented_split(mnist: Dataset):
    assert mnist.train.shape == (60000, 784) and mnist.test.shape == (10000, 784)
    assert mnist.train.dtype == mnist.test.dtype == torch.float32
    assert mnist.image_shape == (28, 28) and mnist.data_dim == 784
    assert mnist.train.min() == 0 and mnist.train.max() == 1
    assert not mnist.binary and not mnist.dynamic_binarization and mnist.valid is None
    assert mnist.train_labels.dtype == torch.int64
    assert torch.bincount(mnist.train_labels).tolist() == MNIST_TRAIN_LABEL_COUNTS
    assert torch.bincount(mnist.test_labels).tolist() == MNIST_TEST_LABEL_COUNTS
    # grayscale: the 256 levels of a byte, divided by 255
    assert len(torch.unique(mnist.test)) == 256


def test_mnist_binarized(mnist: Dataset, mnist_binarized: Dataset, shared_data: Path):
    assert mnist_binarized.binary and mnist_binarized.dynamic_binarization
    assert torch.equal(mnist_binarized.train, mnist.train)  # resampled per batch, not here
    assert torch.equal(mnist_binarized.test_labels, mnist.test_labels)
    assert is_binary(mnist_binarized.test)
    # a Bernoulli draw per pixel: never 1 where the gray value is 0, never 0 where it is 1
    assert (mnist_binarized.test[mnist.test == 0] == 0).all()
    assert (mnist_binarized.test[mnist.test == 1] == 1).all()
    assert mnist_binarized.test.mean() == pytest.approx(mnist.test.mean().item(), abs=1e-3)
    again = load_dataset("mnist-binarized", shared_data, download=False)
    assert torch.equal(again.test, mnist_binarized.test)


def test_mnist_fixed_documented_split(shared_data: Path):
    require(shared_data, "binarized_mnist.npz")
    dataset = load_dataset("mnist-fixed", shared_data, download=False)
    assert dataset.train.shape == (50000, 784)
    assert dataset.valid.shape == dataset.test.shape == (10000, 784)
    assert dataset.binary and not dataset.dynamic_binarization
    assert dataset.train_labels is dataset.valid_labels is dataset.test_labels is None
    for split, ones in FIXED_BINARIZED_ONES.items():
        x, labels = dataset.split(split)
        assert x.dtype == torch.float32 and labels is None
        assert is_binary(x)
        assert x.sum() == ones


def test_frey_documented_split(frey_path: Path):
    dataset = load_dataset("frey", frey_path.parent, download=False)
    assert dataset.train.shape == (1765, 560) and dataset.test.shape == (200, 560)
    assert dataset.image_shape == (28, 20) and dataset.train.dtype == torch.float32
    assert dataset.train_labels is None and not dataset.binary
    pixels = torch.cat([dataset.train, dataset.test]) * 255
    assert pixels.min() == 8 and pixels.max() == 238  # the documented range of the raw bytes
    # the test set is the last 200 frames of the video, each a row-major 28x20 face
    faces = scipy.io.loadmat(frey_path)["ff"].T.reshape(-1, 28, 20)
    last_frames = torch.from_numpy(faces[-200:]).float()
    assert torch.equal(dataset.test.reshape(-1, 28, 20) * 255, last_frames)


def test_split_of_a_missing_split_is_an_error():
    dataset = load_dataset("digits")
    assert dataset.splits == ["train", "test"]
    assert dataset.split("train")[0] is dataset.train
    with pytest.raises(DataError, match="no 'valid' split.*train, test"):
        dataset.split("valid")


def test_to_moves_every_tensor():
    moved = load_dataset("digits").to("meta")
    tensors = [moved.train, moved.test, moved.train_labels, moved.test_labels]
    assert {tensor.device.type for tensor in tensors} == {"meta"}
    assert moved.image_shape == (8, 8) and moved.name == "digits"


def test_subset_keeps_the_first_training_examples_and_their_labels():
    dataset = load_dataset("digits")
    small = dataset.subset(100)
    assert torch.equal(small.train, dataset.train[:100]) and torch.equal(small.train_labels, dataset.train_labels[:100])
    assert small.test is dataset.test and dataset.subset(None) is dataset
    with pytest.raises(ConfigError, match=r"data.train_size: 5000 is more than the 1500 training examples"):
        dataset.subset(5000)


def test_unknown_dataset_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'mnist'"):
        load_dataset("mnsit")
    assert set(DATASETS.names()) == {"digits", "mnist", "mnist-binarized", "mnist-fixed", "frey", "mixture2d"}


def test_loaded_values_must_be_finite_and_in_the_unit_interval(monkeypatch):
    def broken(data_dir: Path, download: bool = True) -> Dataset:
        train = torch.rand(10, 4)
        train[3, 1] = float("nan")
        return Dataset("broken", train=train, test=torch.rand(5, 4) + 1, image_shape=(2, 2))

    monkeypatch.setitem(DATASETS._factories, "broken", broken)
    with pytest.raises(DataError, match="'broken', split 'train'.*nan"):
        load_dataset("broken")


def test_data_dir_precedence(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PPL_VAE_DATA", str(tmp_path / "from-env"))
    assert files.data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert files.data_dir() == tmp_path / "from-env"
    monkeypatch.delenv("PPL_VAE_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert files.data_dir() == tmp_path / ".cache" / "ppl_vae"


# -- integrity -----------------------------------------------------------------------------------


def test_hashes_match_the_shared_sha256sums(shared_data: Path):
    require(shared_data, "SHA256SUMS")
    published = dict(
        reversed(line.split()) for line in (shared_data / "SHA256SUMS").read_text().splitlines()
    )
    for file in [*data.MNIST_FILES.values(), data.FREY_FACE]:
        assert published[file.relpath] == file.sha256


def test_corrupted_file_is_refused(frey_path: Path, tmp_path: Path):
    copy = tmp_path / "frey_rawface.mat"
    corrupted = bytearray(frey_path.read_bytes())
    corrupted[5000] ^= 0xFF
    copy.write_bytes(corrupted)
    expected = f"{re.escape(str(copy))}: SHA256 [0-9a-f]{{64}}, expected {data.FREY_FACE.sha256}"
    with pytest.raises(DataError, match=expected + ".*delete it"):
        load_dataset("frey", tmp_path)
    assert copy.read_bytes() == corrupted  # refused, not silently replaced


def test_corrupted_mnist_labels_are_refused(shared_data: Path, tmp_path: Path):
    require(shared_data, *MNIST_PATHS)
    shutil.copytree(shared_data / "mnist", tmp_path / "mnist")
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    labels.chmod(0o644)
    corrupted = bytearray(labels.read_bytes())
    corrupted[-20] ^= 0x01
    labels.write_bytes(corrupted)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: SHA256"):
        load_dataset("mnist", tmp_path, download=False)


def test_corrupted_fixed_binarization_array_is_refused(shared_data: Path, tmp_path: Path):
    require(shared_data, "binarized_mnist.npz")
    with np.load(shared_data / "binarized_mnist.npz") as arrays:
        splits = dict(arrays)
    splits["valid"][17, 300] ^= 1
    np.savez(tmp_path / "binarized_mnist.npz", **splits)
    with pytest.raises(DataError, match="binarized_mnist.npz \\(array 'valid'\\).*SHA256"):
        load_dataset("mnist-fixed", tmp_path)


def test_resaved_fixed_binarization_is_accepted(shared_data: Path, tmp_path: Path):
    require(shared_data, "binarized_mnist.npz")
    with np.load(shared_data / "binarized_mnist.npz") as arrays:
        np.savez(tmp_path / "binarized_mnist.npz", **arrays)  # another file hash, same arrays
    assert load_dataset("mnist-fixed", tmp_path).test.sum() == FIXED_BINARIZED_ONES["test"]


def test_idx_magic_number_is_checked(tmp_path: Path):
    path = tmp_path / "labels.gz"
    with gzip.open(path, "wb") as file:
        file.write((0x803).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    with pytest.raises(DataError, match="magic number 0x00000803, expected 0x00000801"):
        data._read_idx(path, ndim=1)


# -- missing files and downloads -----------------------------------------------------------------


def test_missing_files_without_download_are_listed(tmp_path: Path):
    with pytest.raises(DataError) as error:
        load_dataset("mnist", tmp_path, download=False)
    message = str(error.value)
    for relpath in MNIST_PATHS:
        assert str(tmp_path / relpath) in message
        assert "https://ossci-datasets.s3.amazonaws.com/mnist/" + Path(relpath).name in message
    assert "download=False" in message and "PPL_VAE_DATA / pass --data-dir" in message


def test_missing_files_offline_are_listed(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen({}))
    with pytest.raises(DataError) as error:
        load_dataset("mnist-fixed", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "binarized_mnist.npz") in message
    assert "binarized_mnist_valid.amat" in message and "name resolution" in message
    assert "PPL_VAE_DATA / pass --data-dir" in message
    assert files_in(tmp_path) == []


def test_download_falls_back_to_the_second_mirror(monkeypatch, shared_data: Path, tmp_path: Path):
    require(shared_data, *MNIST_PATHS)
    mirror = "http://yann.lecun.com/exdb/mnist/"
    serve = {
        mirror + Path(relpath).name: (shared_data / relpath).read_bytes() for relpath in MNIST_PATHS
    }
    requests = []
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(serve, requests))
    dataset = load_dataset("mnist", tmp_path)
    assert files_in(tmp_path) == [tmp_path / relpath for relpath in sorted(MNIST_PATHS)]
    assert torch.bincount(dataset.test_labels).tolist() == MNIST_TEST_LABEL_COUNTS
    assert len(requests) == 8  # each file: the first mirror fails, the second serves it
    assert all(user_agent and timeout for _, user_agent, timeout in requests)


def test_downloaded_file_is_verified_and_kept(monkeypatch, frey_path: Path, tmp_path: Path):
    serve = {data.FREY_FACE.urls[0]: frey_path.read_bytes()}
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(serve))
    folder = tmp_path / "new"  # created by the download
    assert load_dataset("frey", folder).test.shape == (200, 560)
    assert files_in(folder) == [folder / "frey_rawface.mat"]
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen({}))
    assert load_dataset("frey", folder).train.shape == (1765, 560)  # no second download


def test_corrupted_download_leaves_no_file(monkeypatch, frey_path: Path, tmp_path: Path):
    corrupted = bytearray(frey_path.read_bytes())
    corrupted[-1] ^= 0xFF
    serve = {data.FREY_FACE.urls[0]: bytes(corrupted)}
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(serve))
    with pytest.raises(DataError, match=f"SHA256 [0-9a-f]{{64}}, expected {data.FREY_FACE.sha256}"):
        load_dataset("frey", tmp_path)
    assert files_in(tmp_path) == []


def test_fixed_binarization_download_is_parsed_and_saved(monkeypatch, tmp_path: Path):
    rng = np.random.default_rng(0)
    sizes = {"train": 7, "valid": 3, "test": 2}
    arrays = {
        split: rng.integers(0, 2, (size, 784), dtype=np.uint8) for split, size in sizes.items()
    }
    hashes = {split: hashlib.sha256(array).hexdigest() for split, array in arrays.items()}
    serve = {}
    for split, array in arrays.items():
        text = io.StringIO()
        np.savetxt(text, array, fmt="%d")
        serve[data.FIXED_BINARIZED_MNIST_URL.format(split=split)] = text.getvalue().encode()
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen(serve))
    monkeypatch.setattr(data, "FIXED_BINARIZED_MNIST_SHA256", hashes)
    dataset = load_dataset("mnist-fixed", tmp_path)
    assert files_in(tmp_path) == [tmp_path / "binarized_mnist.npz"]
    assert torch.equal(dataset.valid, torch.from_numpy(arrays["valid"]).float())

    (tmp_path / "binarized_mnist.npz").unlink()
    monkeypatch.setitem(hashes, "test", "0" * 64)
    with pytest.raises(DataError, match="binarized_mnist_test.amat.*expected 0{64}.*discarded"):
        load_dataset("mnist-fixed", tmp_path)
    assert files_in(tmp_path) == []


# -- batches -------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(num_rows=st.integers(0, 50), batch_size=st.integers(1, 60), drop_last=st.booleans())
def test_batches_cover_every_row_once_per_epoch(num_rows: int, batch_size: int, drop_last: bool):
    x = torch.arange(num_rows, dtype=torch.float32).unsqueeze(1)
    generator = torch.Generator().manual_seed(0)
    epoch = list(batches(x, batch_size, generator, drop_last=drop_last))
    assert all(len(batch) == batch_size for batch in epoch[:-1])
    seen = torch.cat(epoch).flatten() if epoch else torch.empty(0)
    assert len(torch.unique(seen)) == len(seen)  # no row twice
    if drop_last:
        assert all(len(batch) == batch_size for batch in epoch)
        assert len(seen) == num_rows - num_rows % batch_size
    else:
        assert sorted(seen.tolist()) == list(range(num_rows))


def test_batches_are_deterministic_given_the_generator():
    x = torch.rand(100, 5)

    def epoch(seed: int, **options) -> list[torch.Tensor]:
        return list(batches(x, 32, torch.Generator().manual_seed(seed), **options))

    for options in [{}, {"binarize": True}]:
        assert all(torch.equal(a, b) for a, b in zip(epoch(1, **options), epoch(1, **options)))
        assert not torch.equal(epoch(1, **options)[0], epoch(2, **options)[0])
    assert torch.equal(torch.cat(epoch(1, shuffle=False)), x)

    generator = torch.Generator().manual_seed(1)
    first, second = (torch.cat(list(batches(x, 32, generator))) for _ in range(2))
    assert not torch.equal(first, second)  # a new order every epoch


def test_batches_binarize_draws_bernoulli_pixels():
    probs = torch.linspace(0, 1, 11).repeat(4000, 1)
    draws = torch.cat(list(batches(probs, 512, torch.Generator().manual_seed(0), binarize=True)))
    assert draws.dtype == torch.float32 and is_binary(draws)
    standard_error = (probs[0] * (1 - probs[0]) / len(draws)).sqrt()
    assert ((draws.mean(0) - probs[0]).abs() <= 5 * standard_error + 1e-6).all()
    assert (draws[:, 0] == 0).all() and (draws[:, -1] == 1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binarization_keeps_its_draws_bit_for_bit(dtype: torch.dtype):
    """A pixel is 1 where a float32 uniform of the generator is below its value, for data of any
    dtype: the draws that every run and reproduction of the project made so far."""
    probs = torch.rand(300, 784, dtype=dtype, generator=torch.Generator().manual_seed(5))
    uniforms = torch.rand(probs.shape, generator=torch.Generator().manual_seed(0))
    draws = sample_binary(probs, torch.Generator().manual_seed(0))
    assert draws.dtype == dtype and torch.equal(draws, (uniforms < probs).to(dtype))


def test_batches_rejects_a_batch_size_below_one():
    with pytest.raises(ConfigError, match="batch_size"):
        next(batches(torch.rand(3, 2), 0, torch.Generator()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_on_cuda_are_drawn_there_without_waiting_for_the_host():
    x = torch.rand(100, 5, device="cuda")
    generator = torch.Generator().manual_seed(3)
    epoch = batches(x, 32, generator, binarize=True)
    first = next(epoch)  # the epoch's order is drawn on the host and copied once
    torch.cuda.set_sync_debug_mode("error")
    try:
        rest = list(epoch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(batch.is_cuda and is_binary(batch) for batch in [first, *rest])
    again = batches(x, 32, torch.Generator().manual_seed(3), binarize=True)
    assert all(torch.equal(batch, other) for batch, other in zip([first, *rest], again, strict=True))


# -- regressions of the fuzzer's findings: each ends in our error naming the file or key ----------

def test_folder_in_place_of_a_data_file_is_refused(tmp_path: Path):
    (tmp_path / "frey_rawface.mat").mkdir()
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'frey_rawface.mat'} is a folder where the dataset")):
        load_dataset("frey", tmp_path, download=False)


def test_unreadable_data_file_is_refused(frey_path: Path, tmp_path: Path, monkeypatch, unreadable):
    path = tmp_path / "frey_rawface.mat"
    shutil.copyfile(frey_path, path)
    unreadable(path, monkeypatch)
    with pytest.raises(DataError, match=re.escape(f"{path}: cannot be read (Permission denied)") + ".*chmod u\\+r"):
        load_dataset("frey", tmp_path, download=False)


def test_failed_download_leaves_no_new_folders(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen({}))
    with pytest.raises(DataError, match="Missing dataset files"):
        load_dataset("mnist", tmp_path / "new" / "data")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["digits", "mixture2d"])
def test_data_dir_for_a_built_in_dataset_is_refused(name: str, tmp_path: Path):
    with pytest.raises(ConfigError, match=f"^data.data_dir: dataset '{name}' is built in and reads no files"):
        load_dataset(name, tmp_path)
    assert load_dataset(name).name == name  # without a folder: the default is fine
