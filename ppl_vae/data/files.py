"""Dataset files: where they live, their SHA256 checks and their downloads.

Files are looked up in the data folder (see :func:`data_dir`), checked against SHA256 hashes on
every load and, when missing, downloaded from their canonical URLs. A download goes to a temporary
file that is renamed into place only once its hash is right, so a broken connection never leaves a
half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from ppl_vae.errors import DataError

DATA_DIR_ENV = "PPL_VAE_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/ppl_vae")
USER_AGENT = "ppl_vae dataset downloader (Python urllib)"
DOWNLOAD_TIMEOUT_S = 60.0
DOWNLOAD_CHUNK_BYTES = 1 << 20
DELETE_CORRUPTED = (
    "The file is corrupted or not the right one: delete it and load again to re-download it "
    "(or replace it with a good copy)."
)
DISCARDED_DOWNLOAD = "The download was corrupted and has been discarded; try again later."


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The folder datasets are read from: ``explicit`` if given, else $PPL_VAE_DATA, else
    ~/.cache/ppl_vae."""
    folder = explicit or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    try:
        return Path(folder).expanduser()
    except RuntimeError:  # ~user of no such user
        raise DataError(f"data folder {str(folder)!r}: cannot expand '~' (no such user or home folder); give a full "
                        f"path (--data-dir, data.data_dir or ${DATA_DIR_ENV}).") from None


@dataclass(frozen=True)
class DataFile:
    """A file the loaders read: its path under the data folder and where to get it.

    Either ``sha256`` is the hash of the file and ``urls`` are mirrors of it, tried in order; or
    ``assemble(path)`` makes the file from all of ``urls`` and checks what it wrote, and the loader
    checks the contents of the file on every load.
    """

    relpath: str
    urls: tuple[str, ...]
    sha256: str | None = None
    assemble: Callable[[Path], None] | None = None

    def sources(self) -> str:
        """Where the file comes from, for error messages."""
        if self.assemble:
            return "made from " + ", ".join(self.urls)
        return "download from " + " or ".join(self.urls)


def fetch(files: list[DataFile], folder: Path, download: bool) -> list[Path]:
    """The paths of ``files`` in ``folder``, downloading missing ones if ``download``, each checked
    against its SHA256. One DataError lists every file still missing."""
    paths = [folder / file.relpath for file in files]
    for path in paths:
        with _readable(path):  # a name too long, a folder that may not be listed...
            is_dir = path.is_dir()
        if is_dir:
            raise DataError(f"{path} is a folder where the dataset file should be; remove it (and load again "
                            "to download the file) or put the file there.")
    failures = []
    for file, path in zip(files, paths):
        if download and not path.exists():
            try:
                _download(file, path)
            except (OSError, DataError) as error:
                failures.append(f"{path.name}: {error}")
    missing = [(file, path) for file, path in zip(files, paths) if not path.exists()]
    if missing:
        raise DataError(_missing_files_message(missing, folder, download, failures))
    for file, path in zip(files, paths):
        if file.sha256:
            check_file_sha256(path, file.sha256)
    return paths


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Turn an OSError while reading ``path`` in the block (no permission, a folder, an I/O error)
    into a DataError naming the file and how to fix it."""
    try:
        yield
    except OSError as error:
        raise DataError(
            f"{path}: cannot be read ({error.strerror or error}); check the path and that it is a file you may "
            "read (e.g. chmod u+r), or delete it and load again to re-download it."
        ) from None


def _missing_files_message(
    missing: list[tuple[DataFile, Path]], folder: Path, download: bool, failures: list[str]
) -> str:
    lines = [f"Missing dataset files in {folder}:"]
    lines += [f"  {path}\n    ({file.sources()})" for file, path in missing]
    if download:
        lines.append("Downloading them failed:")
        lines += [f"  {failure}" for failure in failures]
    else:
        lines.append("Downloading is off (download=False).")
    lines.append(
        "Put the files at those paths, "
        "or set PPL_VAE_DATA / pass --data-dir to a folder that holds them."
    )
    return "\n".join(lines)


def _download(file: DataFile, path: Path) -> None:
    """Put ``file`` at ``path``, from the first of its URLs that serves the right bytes.

    Raises OSError (network) or DataError (wrong bytes), listing every URL tried; on failure
    nothing is left at ``path``.
    """
    with _new_folders_removed_unless_filled(path.parent):
        if file.assemble:
            file.assemble(path)
            return
        failures = []
        for url in file.urls:
            try:
                with downloaded(url, path.parent) as part:
                    check_file_sha256(part, file.sha256, shown_as=url, fix=DISCARDED_DOWNLOAD)
                    os.replace(part, path)
                return
            except (OSError, DataError) as error:
                failures.append(f"{url}: {error}")
        raise OSError("; ".join(failures))


@contextlib.contextmanager
def _new_folders_removed_unless_filled(folder: Path) -> Iterator[None]:
    """Create ``folder`` and its missing parents for the block, and remove on exit those it created
    that are still empty: a failed download leaves no new empty folders behind."""
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        for new in created:  # deepest first
            with contextlib.suppress(OSError):  # not empty: a file was written
                new.rmdir()


@contextlib.contextmanager
def downloaded(url: str, folder: Path) -> Iterator[Path]:
    """Download ``url`` to a temporary file in ``folder``, deleted on exit unless moved away."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with temporary_file(folder) as part:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            name = url.rsplit("/", 1)[-1]
            with part.open("wb") as file, tqdm(
                total=size, unit="B", unit_scale=True, desc=name, leave=False
            ) as progress:
                while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                    file.write(chunk)
                    progress.update(len(chunk))
        yield part


@contextlib.contextmanager
def temporary_file(folder: Path) -> Iterator[Path]:
    """A new empty file in ``folder`` (so that ``os.replace`` into it is atomic), deleted on exit
    unless moved away."""
    handle, name = tempfile.mkstemp(dir=folder, prefix=".ppl_vae-", suffix=".part")
    os.close(handle)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def check_file_sha256(
    path: Path, expected: str, shown_as: str | None = None, fix: str = DELETE_CORRUPTED
) -> None:
    with _readable(path), path.open("rb") as file:
        actual = hashlib.file_digest(file, "sha256").hexdigest()
    if actual != expected:
        raise DataError(f"{shown_as or path}: SHA256 {actual}, expected {expected}. {fix}")


def check_array_sha256(
    array: np.ndarray, expected: str, shown_as: str, fix: str = DELETE_CORRUPTED
) -> None:
    """Check the SHA256 of a uint8 array's bytes in C order."""
    actual = hashlib.sha256(np.ascontiguousarray(array, dtype=np.uint8)).hexdigest()
    if array.dtype != np.uint8 or actual != expected:
        raise DataError(
            f"{shown_as}, {array.dtype} array of shape {array.shape}: "
            f"SHA256 {actual}, expected {expected}. {fix}"
        )
