"""Data-parallel training on ``torch.distributed``: each process trains on its shard of every batch.

A run of N processes (``torchrun --nproc-per-node N``, or :func:`launch`) trains the same model as
one process with the same config, ``data.batch_size`` being the global batch:

- **Data.** Every process draws the epoch's order and dynamic binarization from the same data
  generator, builds the same global batch and keeps its slice of it (:meth:`Processes.shard`): the
  union of the shards is exactly the batch one process would train on. A batch of B rows gives
  each process B // N rows, the first B % N processes one more; every batch (the last of an epoch
  too) needs at least one row per process, else a ConfigError before training.
- **Gradients.** Our losses are sums over the batch (Pyro's ELBO losses are), so the gradient of the
  global batch is the *sum* of the shards' gradients: after the user's model and guide have run
  through the objective's own ``loss_and_grads`` (a Pyro ELBO), the gradients and the loss are summed
  over the processes before the optimizer steps (:meth:`Processes.loss_and_grads`), as Pyro's
  ``HorovodOptimizer`` does between ``loss_and_grads`` and the update. Parameters start from rank 0's
  and stay identical on every process.
- **Reported numbers and objective state.** The terms of each step and its datapoint count are
  summed over the processes (:class:`SummedTrainingState`), so the history is that of the global
  batch on every process. An objective whose state depends on the batch (GECO's λ and C_ma) has an
  ``all_reduce`` hook that this module points at a sum over the processes, so that state is
  identical everywhere too. β depends only on the step and epoch counters, which all processes share.
- **Noise.** Each process draws its own sampling noise: before every step torch's generator is
  seeded from (seed, rank, step) (:class:`RankNoise`), so a resumed run draws exactly the noise an
  uninterrupted one would. A data-parallel run is therefore not bitwise the single-process run with
  the same seed; it is the same estimator of the same gradient.
- **Files.** Only rank 0 writes (run directory, checkpoints, figures, progress bar); every process
  reads the checkpoint to resume (on several machines, ``--out`` must be on a shared filesystem).
  Ctrl-C stops every process after the same step (:class:`AgreedInterrupt`).

One process (no ``WORLD_SIZE`` above 1 in the environment and no process group) is the plain run:
every method here then returns what it was given.
"""

from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyro
import torch
import torch.distributed as dist
from torch import nn

from ppl_vae.errors import ConfigError
from ppl_vae.objectives import Objective
from ppl_vae.training.callbacks import Callback, InterruptHandler
from ppl_vae.training.loop import Batches
from ppl_vae.training.state import TrainingState

LossAndGrads = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Processes:
    """This process's place in a data-parallel run: ``rank`` of ``world_size`` processes, ``local_rank``
    on its machine, and the ``device`` its collectives run on (CPU for gloo, its GPU for nccl)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    control_group: Any = None  # a gloo group for flags read on the host (None: the default group, gloo already)

    @property
    def parallel(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def writes(self) -> bool:
        """Whether this process writes files and reports (rank 0)."""
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes (in place), on every process; unchanged once the
        process group is left (an objective used after training sums its own batch only)."""
        if self.parallel and dist.is_initialized():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true in any process (on the CPU: no wait for a GPU's queued work)."""
        if not self.parallel:
            return flag
        count = torch.tensor([float(flag)])
        dist.all_reduce(count, op=dist.ReduceOp.SUM, group=self.control_group)
        return bool(count.item())

    def shard(self, batches: Batches, num_rows: int, batch_size: int) -> Batches:
        """Each global batch of ``batches`` cut to this process's rows. A ConfigError if a batch of
        an epoch of ``num_rows`` rows in batches of ``batch_size`` has fewer rows than processes."""
        if not self.parallel:
            return batches
        last = num_rows % batch_size
        if batch_size < self.world_size or 0 < last < self.world_size:
            smallest = batch_size if batch_size < self.world_size else last
            raise ConfigError(
                f"data.batch_size: with {self.world_size} processes every batch needs at least one row per process, "
                f"but batches of {batch_size} from {num_rows} training rows include one of {smallest} rows; choose a "
                f"batch size (or data.train_size) for which every batch, the last of an epoch included, has at least "
                f"{self.world_size} rows, or use fewer processes."
            )

        def sharded(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
            for batch in batches(generator):
                rows = shard_rows(batch[0].shape[0], self.rank, self.world_size)
                yield tuple(value[rows] for value in batch)

        return sharded

    def loss_and_grads(self, loss_and_grads: LossAndGrads) -> LossAndGrads:
        """``loss_and_grads`` followed by summing the loss and the gradients of every parameter in
        Pyro's param store over the processes (one collective): the global batch's loss and gradient."""
        if not self.parallel:
            return loss_and_grads

        def summed(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
            loss = loss_and_grads(model, guide, *args, **kwargs)
            grads = [parameter.grad for _, parameter in pyro.get_param_store().named_parameters()
                     if parameter.grad is not None]
            flat = self.sum(torch.cat([loss.detach().reshape(1), *(grad.reshape(-1) for grad in grads)]))
            for grad, value in zip(grads, flat[1:].split([grad.numel() for grad in grads])):
                grad.copy_(value.view_as(grad))
            return flat[0]

        return summed

    def synchronize(self, module: nn.Module, objective: Objective) -> None:
        """Start every process from rank 0's parameters and buffers, and point an objective that keeps
        batch-dependent state (an ``all_reduce`` attribute, e.g. GECO's) at the sum over processes."""
        if not self.parallel:
            return
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)
        if hasattr(objective, "all_reduce"):
            objective.all_reduce = self.sum

    def training_state(self, generator: torch.Generator, num_rows: int, batch_size: int) -> TrainingState:
        """A fresh training state for epochs of ``num_rows`` rows in global batches of ``batch_size``:
        in data-parallel training its steps count the datapoints and terms of all processes."""
        if not self.parallel:
            return TrainingState(generator)
        return SummedTrainingState(generator=generator, processes=self, num_rows=num_rows, batch_size=batch_size)


def shard_rows(batch_size: int, rank: int, world_size: int) -> slice:
    """The rows of a batch that process ``rank`` of ``world_size`` trains on: ``batch_size //
    world_size`` of them, one more for the first ``batch_size % world_size`` ranks, in rank order."""
    base, extra = divmod(batch_size, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


@dataclass
class SummedTrainingState(TrainingState):
    """A :class:`TrainingState` whose every step adds the datapoints and terms of all processes, so
    its history and checkpointed sums are those of the global batch, the same on every process.

    The global batch's size follows from the epoch's ``num_rows`` and ``batch_size`` (every batch is
    full but the last); the terms are summed on their device, without waiting for it."""

    processes: Processes = field(default_factory=Processes)
    num_rows: int = 0
    batch_size: int = 1

    def add_step(self, batch_size: int, terms: dict[str, torch.Tensor]) -> None:
        global_size = min(self.batch_size, self.num_rows - self.epoch_step * self.batch_size)
        summed = self.processes.sum(torch.stack(list(terms.values()))) if terms else []
        super().add_step(global_size, dict(zip(terms, summed)))


class RankNoise(Callback):
    """Seed torch's generator from (``seed``, rank, step) before every step (placed after the
    callbacks that draw random numbers between steps, like the epoch's evaluation): each process
    samples its own noise, and a resumed run the noise an uninterrupted one would."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank = seed, rank

    def _reseed(self, state: TrainingState) -> None:
        torch.manual_seed(int(np.random.SeedSequence([self.seed, self.rank, state.step]).generate_state(1)[0]))

    def on_train_start(self, state: TrainingState) -> None:
        self._reseed(state)

    def on_step(self, state: TrainingState, loss: torch.Tensor) -> None:
        self._reseed(state)

    def on_epoch_end(self, state: TrainingState) -> None:
        self._reseed(state)


class AgreedInterrupt(InterruptHandler):
    """Ctrl-C in a data-parallel run: after every step and epoch the processes agree whether any of
    them was asked to stop, so all stop after the same step; rank 0 saves with ``save`` (if given)
    while the others wait for it, and every process then raises TrainingInterrupted with its path."""

    def __init__(self, processes: Processes, save: Callable[[TrainingState], Path] | None, resume_hint: str = "") -> None:
        super().__init__(None if save is None else self._save_on_rank_0, resume_hint)
        self.processes, self.save_state = processes, save

    def _save_on_rank_0(self, state: TrainingState) -> Path:
        path = [self.save_state(state) if self.processes.writes else None]
        dist.broadcast_object_list(path, src=0)
        return path[0]

    def _stop_if_agreed(self, state: TrainingState) -> None:
        """Stop if any process was asked to: decided from the collective's result alone, so that a
        Ctrl-C arriving during the collective is agreed on after the next step, by every process."""
        asked = self.requested  # read once: the signal handler may set it at any moment
        if self.processes.any(asked):
            self.requested = True
            self._stop_if_requested(state)

    def on_step(self, state: TrainingState, loss: torch.Tensor) -> None:
        self._stop_if_agreed(state)

    def on_epoch_end(self, state: TrainingState) -> None:
        self._stop_if_agreed(state)


def _environment_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; torchrun sets it for every "
                          "process: unset it to train in one process.") from None


@contextmanager
def process_group(device: torch.device) -> Iterator[Processes]:
    """This process's :class:`Processes` for a run on ``device``, in the process group for the
    duration of the block.

    An existing process group is used as it is. Otherwise, with ``WORLD_SIZE`` above 1 in the
    environment (torchrun, :func:`launch`), the group is joined with gloo on CPU or nccl on CUDA
    (each process on the GPU of its ``LOCAL_RANK``) from torchrun's ``MASTER_ADDR`` and
    ``MASTER_PORT``, and left at the end of the block. Else this is the one process of a plain run."""
    local_rank = _environment_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        yield Processes(dist.get_rank(), dist.get_world_size(), local_rank, _collective_device(device, local_rank),
                        _control_group())
        return
    world_size = _environment_int("WORLD_SIZE", 1)
    if world_size <= 1:
        yield Processes(device=device)
        return
    rank, collective_device = _environment_int("RANK", 0), _collective_device(device, local_rank)
    dist.init_process_group("nccl" if collective_device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    try:
        yield Processes(rank, world_size, local_rank, collective_device, _control_group())
    finally:
        dist.destroy_process_group()


def _control_group() -> Any:
    """A gloo group beside an nccl one, for flags read on the host; None when the group is gloo."""
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def _collective_device(device: torch.device, local_rank: int) -> torch.device:
    """CPU, or for CUDA this process's GPU (made the current one, so ``cuda`` means it)."""
    if device.type != "cuda":
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"device: process {local_rank} on this machine needs GPU {local_rank}, but torch sees "
                          f"{torch.cuda.device_count()}; start at most one process per GPU, or set device: cpu.")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def launch(nproc: int, function: Callable[..., int | None], *args: Any) -> int:
    """Run ``function(*args)`` in ``nproc`` new processes on this machine that form one process group
    (what ``torchrun --standalone --nproc-per-node nproc`` does). ``function`` must be importable by
    name (a module-level function). Returns 0 when every process returned 0 or None, else the first
    non-zero exit status (the others are then stopped). Ctrl-C reaches every process, which save and
    stop on their own: this process keeps waiting for them."""
    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException, start_processes

    context = start_processes(_process, args=(nproc, _free_port(), function, args), nprocs=nproc, join=False,
                              start_method="spawn")
    while True:
        try:
            if context.join():
                return 0
        except KeyboardInterrupt:
            continue
        except ProcessExitedException as exited:
            return exited.exit_code if exited.exit_code > 0 else 128 - exited.exit_code
        except ProcessRaisedException as raised:
            print(raised, file=sys.stderr)
            return 1


def _process(local_rank: int, nproc: int, port: int, function: Callable[..., int | None], args: tuple) -> None:
    """One process started by :func:`launch`: torchrun's environment for it, then ``function``."""
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    status = function(*args)
    if status:
        sys.exit(status)


def _free_port() -> int:
    """A TCP port free on this machine now, for rank 0's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
