"""Shared test set-up.

Dataset files are read from ``PPL_VAE_DATA``. When it is unset, the project's convention of a
``shared/data`` folder beside the checkout is used (CI runs with ``../shared`` beside the clone).
Tests that need the files skip when they are absent, except in CI (``CI=true``), where a missing
data folder is an error.
"""

import contextlib
import os
from pathlib import Path

import pyro
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

if "PPL_VAE_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["PPL_VAE_DATA"] = str(SHARED_DATA)

# two cores: one torch thread per test process keeps timings steady and avoids oversubscription
torch.set_num_threads(1)


def pytest_sessionstart(session):
    if os.environ.get("CI") == "true" and not Path(os.environ.get("PPL_VAE_DATA", "")).is_dir():
        raise pytest.UsageError("CI=true but PPL_VAE_DATA does not point at a data folder (expected ../shared/data).")


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Every test starts with an empty param store and fixed seeds."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def refuse_reading(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` unreadable: chmod 000, and, since chmod does not stop root, opening that one path
    through ``Path.open`` raises the PermissionError the OS would give anyone else."""
    path.chmod(0)
    if os.geteuid() == 0:
        opened = Path.open

        def refusing_open(self: Path, *args, **kwargs):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return opened(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refusing_open)


@pytest.fixture
def unreadable():
    """:func:`refuse_reading`, for tests: ``unreadable(path, monkeypatch)``."""
    return refuse_reading


@pytest.fixture
def host_reads(monkeypatch):
    """``with host_reads() as reads:`` lists every way a tensor's value reached Python inside the block
    (``item``, ``tolist``, ``bool``, ``float``, ``int``, ``numpy``): on a GPU each one makes the host
    wait for the device."""

    @contextlib.contextmanager
    def counting():
        reads = []
        with monkeypatch.context() as patch:
            for method in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
                original = getattr(torch.Tensor, method)

                def reading(self, *args, _original=original, _method=method, **kwargs):
                    reads.append(_method)
                    return _original(self, *args, **kwargs)

                patch.setattr(torch.Tensor, method, reading)
            yield reads

    return counting
