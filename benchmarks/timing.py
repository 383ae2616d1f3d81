"""Measuring two implementations of the same work fairly on a shared machine: interleaved repetitions,
medians, peak memory, and a description of the machine.

Interleaving (ours, baseline, baseline, ours, ...) in short turns makes a change of speed of the
machine hit both sides alike, so their ratio stays meaningful when the absolute times do not; every
other turn runs the sides in the opposite order, so that neither always runs after the other.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
SMALL_THRESHOLD = 64 * 1024  # while measuring memory: freed blocks above it go back to the system at once
HELD_MMAP_THRESHOLD = 32 * 1024 * 1024  # while timing: blocks up to it come from the heap (glibc's 64-bit maximum)
HELD_TRIM_THRESHOLD = 2**31 - 1  # ... and freed heap memory is kept for the next allocation (mallopt takes a C int)


def hold_freed_memory() -> None:
    """Make glibc keep freed memory for reuse, as PyTorch's own CUDA allocator does on a GPU.

    With glibc's defaults, whether a large freed block (a 100 x 100 x 784 float tensor is 31 MB) goes
    back to the system depends on where it sits in the heap; when it does, the next allocation of
    that size faults every page in again. That cost hit the two sides of a case unevenly, run to run
    (a third of the log-likelihood case's time in some runs and none in others), so every timing
    runs with freed memory held. Does nothing where the C library is not glibc."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, HELD_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, HELD_TRIM_THRESHOLD)


@dataclass
class Side:
    """The repeated measurements of one implementation: seconds per repetition and the units of work
    (datapoints) each repetition did."""

    seconds: list[float] = field(default_factory=list)
    work: float = 0.0
    peak_memory_mb: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self) -> dict[str, Any]:
        return {"median_seconds": self.median, "seconds": self.seconds,
                "throughput_per_second": self.work / self.median, "peak_memory_mb": self.peak_memory_mb}


Run = Callable[[], float]
"""One repetition: does the work and returns the seconds it took (measured by itself, so that set-up
such as building a model or loading data can be left out)."""


def timed(work: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``work()`` takes, the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(runs: dict[str, Run], work: float, repeats: int, device: torch.device,
               turns: int = 1) -> dict[str, Any]:
    """Run each of ``runs`` (one of them named ``baseline``) in turn: ``repeats`` rounds of ``turns``
    turns, each side running once per turn, in the opposite order every other turn; a round's seconds
    are the sum of its turns, and ``work`` is the datapoints one round of a side processes. Short
    turns (one training step, one chunk of an evaluation) make a slow spell of a shared CPU, which
    lasts seconds, fall on both sides alike. One unmeasured round of each side comes first (the
    one-off costs of first calls, TorchScript's profiling runs) and measures its peak memory.
    Returns each run's summary and, beside each run but the baseline, its ``ratio``: its throughput
    / the baseline's, the median over the rounds of each round's ratio."""
    sides = {name: Side(work=work) for name in runs}
    for name, run in runs.items():
        sides[name].peak_memory_mb = peak_memory_mb(lambda: [run() for _ in range(turns)], device)
    order = list(runs)
    for _ in range(repeats):
        for side in sides.values():
            side.seconds.append(0.0)
        for turn in range(turns):
            for name in order if turn % 2 == 0 else order[::-1]:
                sides[name].seconds[-1] += runs[name]()
    reference = sides["baseline"].seconds
    return {name: {**side.summary(), **({} if name == "baseline" else {"ratio": paired_ratio(reference, side.seconds)})}
            for name, side in sides.items()}


def round_ratios(reference: list[float], seconds: list[float]) -> list[float]:
    """Each round's reference seconds / ``seconds``: the throughput of the side that took ``seconds``
    relative to the reference's in that round (above 1: faster)."""
    return [theirs / mine for theirs, mine in zip(reference, seconds, strict=True)]


def paired_ratio(reference: list[float], seconds: list[float]) -> float:
    """The median of :func:`round_ratios`: the paired estimate of the relative throughput."""
    return statistics.median(round_ratios(reference, seconds))


def peak_memory_mb(run: Run, device: torch.device) -> float | None:
    """Memory in MB that ``run()`` needs above what was in use before it: the CUDA allocator's peak on
    a GPU; on Linux CPUs with glibc the peak resident set size (its high-water mark reset first), with
    freed memory handed back to the system before and during the run, so that the peak is this run's
    alone (then held again for the timings: :func:`hold_freed_memory`); None elsewhere."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    status, clear = "/proc/self/status", "/proc/self/clear_refs"
    libc = _glibc()
    if libc is None or not (os.path.exists(status) and os.access(clear, os.W_OK)):
        return None
    libc.malloc_trim(0)
    libc.mallopt(M_MMAP_THRESHOLD, SMALL_THRESHOLD)  # every freed block above 64 KiB goes back at once
    libc.mallopt(M_TRIM_THRESHOLD, SMALL_THRESHOLD)
    try:
        before = _status_kb(status, "VmRSS")
        with open(clear, "w") as file:
            file.write("5")  # resets VmHWM, the peak resident set size, to the current size
        run()
        return max(_status_kb(status, "VmHWM") - before, 0) / 1024  # the run may free what was in use before
    finally:
        hold_freed_memory()


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc
        return None


def _status_kb(path: str, key: str) -> int:
    with open(path) as file:
        for line in file:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, GPU, library versions."""
    import pyro

    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as file:
            cpu = next((line.split(":", 1)[1].strip() for line in file if line.startswith("model name")), cpu)
    return {
        "hostname": platform.node(), "cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
        "platform": platform.platform(),
    }


def machine_tag(info: dict[str, Any]) -> str:
    """A file name for the machine's results, e.g. ``cpu-2cores-myhost`` or ``cuda-nvidia-h100``."""
    if info["gpu"]:
        name = info["gpu"]
    else:
        name = f"cpu-{info['cpu_cores']}cores-{info['hostname']}"
    return "".join(character if character.isalnum() else "-" for character in name.lower()).strip("-")
