"""What happens around the training loop's steps, one job per callback: the progress bar, the stop on
a non-finite loss or gradient, the per-epoch evaluation, checkpoints, and Ctrl-C.

A callback is told ``on_train_start``, ``on_before_update`` (after a step's loss and gradients,
before the optimizer changes the parameters), ``on_step`` (after every SVI step, with its loss),
``on_step_error`` (when a step raises a RuntimeError, before it propagates; a callback may raise a
clearer error instead),
``on_epoch_end`` (after the epoch's history record is appended; callbacks may add to it) and
``close`` (always, also when training stops on an error). Callbacks run in the order given, so an
evaluation's numbers are in the record before a checkpoint saves it.

Faults lose no run: a NaN or Inf loss or gradient stops training at its step with a
:class:`~ppl_vae.errors.TrainingError`, before any checkpoint could hold it. Ctrl-C stops training
after the step in progress and checkpoints the exact position, mid-epoch included.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ppl_vae.errors import TrainingError, TrainingInterrupted

if TYPE_CHECKING:
    from ppl_vae.training.state import TrainingState

PROGRESS_EVERY = 20  # steps between progress-bar postfix updates (each reads the terms off the device)
CHECK_EVERY_ON_ACCELERATOR = 50  # steps between NonFiniteGuard's reads of the losses off a GPU
OUT_OF_MEMORY = ("can't allocate memory", "out of memory")  # torch's CPU and CUDA allocators' RuntimeErrors


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, state: TrainingState) -> None:
        """Before the first step of this session."""

    def on_before_update(self, state: TrainingState, loss: torch.Tensor) -> None:
        """After a step's loss and gradients, before the parameters are updated (``state`` still counts
        the steps before this one); raising here stops training with the parameters unchanged.
        ``loss`` is as in :meth:`on_step`."""

    def on_step(self, state: TrainingState, loss: torch.Tensor) -> None:
        """After every SVI step; ``loss`` is the step's loss, a detached 0-dim tensor on the device
        (reading it, e.g. ``float(loss)``, waits for the device)."""

    def on_step_error(self, state: TrainingState, error: RuntimeError) -> None:
        """When a step raised ``error`` (re-raised after every callback was told)."""

    def on_epoch_end(self, state: TrainingState) -> None:
        """After each epoch; ``state.history[-1]`` is its record."""

    def close(self) -> None:
        """When training ends, normally or not."""


def _due(epoch: int, every: int, epochs: int) -> bool:
    return epoch % every == 0 or epoch == epochs


class ProgressBar(Callback):
    """A tqdm bar over all steps, showing the epoch, β, the running mean of each term over the epoch's
    batches so far (``bound`` first; the weights change meanwhile, so these are below an evaluation
    with the epoch's final weights) and the objective's status."""

    def __init__(self, total_steps: int, bound: str, status: Callable[[], dict[str, Any]], enabled: bool = True,
                 steps_per_epoch: int | None = None) -> None:
        self.total_steps, self.bound, self.status, self.enabled = total_steps, bound, status, enabled
        self.steps_per_epoch = steps_per_epoch
        self.bar: tqdm | None = None

    def on_train_start(self, state: TrainingState) -> None:
        self.bar = tqdm(total=self.total_steps, initial=state.step, disable=not self.enabled, unit="step",
                        dynamic_ncols=True, desc="train (epoch running means)")

    def on_step(self, state: TrainingState, loss: torch.Tensor) -> None:
        self.bar.update()
        if self.enabled and (state.step % PROGRESS_EVERY == 0 or state.epoch_step == self.steps_per_epoch):
            means = state.epoch_means()
            ordered = {self.bound: means.pop(self.bound, None), **means} if self.bound in means else means
            status = {name: f"{value:.3g}" for name, value in self.status().items() if value is not None}
            self.bar.set_postfix(epoch=state.epoch + 1, **{name: f"{value:.2f}" for name, value in ordered.items()},
                                 beta=f"{state.beta:.3g}", **status, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class NonFiniteGuard(Callback):
    """Stop at the step where the loss, or a gradient, stopped being finite.

    A non-finite gradient shows in the parameters its update made non-finite (Adam and Adagrad turn
    an Inf gradient into a NaN update), and from the next step on in the loss. Either way the error
    names the first step that went wrong, before any evaluation or checkpoint.

    Where reading a number off the device costs nothing (``check_every=1``, the default on the CPU),
    each step's loss is read before its update: a non-finite loss stops training with the parameters
    unchanged, which tells which it was. Parameters that are already non-finite then were broken by
    the previous step's update; finite ones mean this step's forward pass overflowed. The parameters
    are also checked at every epoch's end, for an update in its last step. Nothing is summed per step.

    On a GPU (default ``check_every`` :data:`CHECK_EVERY_ON_ACCELERATOR`) each step's loss and sum of
    the parameters are kept on the device and read every ``check_every`` steps and at every epoch's
    end, so that training does not wait for the device after each step."""

    def __init__(self, module: nn.Module, check_every: int | None = None) -> None:
        self.module = module
        self.parameters = list(module.parameters())
        on_cpu = not self.parameters or self.parameters[0].device.type == "cpu"
        self.check_every = check_every or (1 if on_cpu else CHECK_EVERY_ON_ACCELERATOR)
        self.pending: list[tuple[str, torch.Tensor]] = []  # (where, [loss, sum of the parameters])
        self.last_update: tuple[tuple[int, int, int], float] | None = None  # (step, epoch, batch), its loss

    def on_before_update(self, state: TrainingState, loss: torch.Tensor) -> None:
        if self.check_every != 1:
            return
        step = (state.step + 1, state.epoch + 1, state.epoch_step + 1)  # the step about to update
        value = loss.item()
        if math.isfinite(value):
            self.last_update = step, value
            return
        self._check_parameters()  # broken already: by the previous step's update
        raise _loss_error(_where(*step), value)

    def on_step(self, state: TrainingState, loss: torch.Tensor) -> None:
        if self.check_every == 1:
            return
        with torch.no_grad():  # one sum of sums: a NaN or Inf anywhere makes it non-finite
            total = torch.stack([parameter.sum() for parameter in self.parameters]).sum()
            where = _where(state.step, state.epoch + 1, state.epoch_step)
            self.pending.append((where, torch.stack([loss.to(total.dtype), total])))
        if len(self.pending) >= self.check_every:
            self._check()

    def on_epoch_end(self, state: TrainingState) -> None:
        if self.check_every != 1:
            self._check()
            return
        self._check_parameters()  # every loss was finite: only the epoch's last update can have broken them

    def _check_parameters(self) -> None:
        """Raise if a parameter is non-finite, naming the last update as the one that made it so."""
        broken = non_finite_parameters(self.module)
        if broken and self.last_update is not None:
            raise _gradient_error(_where(*self.last_update[0]), self.last_update[1], broken)

    def _check(self) -> None:
        """Read the pending steps' numbers (one host sync) and raise at the first non-finite one."""
        if not self.pending:
            return
        values = torch.stack([numbers for _, numbers in self.pending]).tolist()
        places = [where for where, _ in self.pending]
        self.pending = []
        for where, (loss, total) in zip(places, values):
            if not math.isfinite(loss):
                raise _loss_error(where, loss)
            broken = [] if math.isfinite(total) else non_finite_parameters(self.module)  # empty if the sum overflowed
            if broken:
                raise _gradient_error(where, loss, broken)


def non_finite_parameters(module: nn.Module) -> list[str]:
    """The names of ``module``'s parameters with a NaN or Inf anywhere."""
    return [name for name, parameter in module.named_parameters() if not bool(parameter.isfinite().all())]


def _where(step: int, epoch: int, batch: int) -> str:
    return f"at step {step} (epoch {epoch}, batch {batch})"


def _loss_error(where: str, loss: float) -> TrainingError:
    return TrainingError(
        f"the loss became {loss} {where}. Likely causes: a learning rate too high (lower optim.lr), exploding "
        "activations (set optim.clip_norm, e.g. 10) or a likelihood that does not fit the data. Training stopped; "
        "the last checkpoint is kept intact."
    )


def _gradient_error(where: str, loss: float, broken: list[str]) -> TrainingError:
    return TrainingError(
        f"a gradient became NaN or Inf {where}: the loss was finite ({loss:.6g}) but the update made "
        f"{', '.join(broken)} non-finite. Likely cause: exploding gradients; set optim.clip_norm (e.g. 10) or lower "
        "optim.lr. Training stopped; the last checkpoint is kept intact."
    )


class OutOfMemory(Callback):
    """Turn a step that could not allocate its memory into a TrainingError naming the settings that
    size it (``sizes``: config key -> value, e.g. ``objective.num_particles``)."""

    def __init__(self, sizes: dict[str, Any], device: torch.device | str) -> None:
        self.sizes, self.device = sizes, device

    def on_step_error(self, state: TrainingState, error: RuntimeError) -> None:
        message = str(error)
        if isinstance(error, torch.OutOfMemoryError) or any(text in message for text in OUT_OF_MEMORY):
            settings = ", ".join(f"{key}={value}" for key, value in self.sizes.items())
            raise TrainingError(
                f"step {state.step + 1} ran out of memory on {self.device} ({message.splitlines()[0][:200]}). The "
                f"memory of a step grows with {settings}: lower the largest of them. Training stopped; the last "
                "checkpoint is kept intact."
            ) from None


class EpochEvaluation(Callback):
    """Every ``every`` epochs (and at the last), add ``test_<name>`` for each number ``evaluate()``
    returns to the epoch's record."""

    def __init__(self, evaluate: Callable[[], dict[str, float]], every: int, epochs: int) -> None:
        self.evaluate, self.every, self.epochs = evaluate, every, epochs

    def on_epoch_end(self, state: TrainingState) -> None:
        if _due(state.epoch, self.every, self.epochs):
            state.history[-1].update({f"test_{name}": value for name, value in self.evaluate().items()})


class Checkpointing(Callback):
    """Every ``every`` epochs (and at the last), ``save(state)``."""

    def __init__(self, save: Callable[[TrainingState], Path], every: int, epochs: int) -> None:
        self.save, self.every, self.epochs = save, every, epochs

    def on_epoch_end(self, state: TrainingState) -> None:
        if _due(state.epoch, self.every, self.epochs):
            self.save(state)


class InterruptHandler(Callback):
    """The first Ctrl-C (SIGINT) only asks training to stop: after the step in progress the state is
    saved with ``save`` (if given) and :class:`~ppl_vae.errors.TrainingInterrupted` is raised. A second
    Ctrl-C interrupts at once. Outside the main thread (where Python cannot handle signals) Ctrl-C keeps
    its usual effect."""

    def __init__(self, save: Callable[[TrainingState], Path] | None, resume_hint: str = "") -> None:
        self.save, self.resume_hint = save, resume_hint
        self.requested = False
        self.previous: Any = None

    def on_train_start(self, state: TrainingState) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nppl-vae: Ctrl-C: saving a checkpoint after this step (press Ctrl-C again to stop at once)",
              file=sys.stderr)

    def on_step(self, state: TrainingState, loss: torch.Tensor) -> None:
        self._stop_if_requested(state)

    def on_epoch_end(self, state: TrainingState) -> None:
        self._stop_if_requested(state)

    def _stop_if_requested(self, state: TrainingState) -> None:
        if not self.requested:
            return
        where = f"at step {state.step} (epoch {state.epoch + 1}, after {state.epoch_step} batches of it)"
        if self.save is None:
            raise TrainingInterrupted(f"training stopped {where}; no run directory, so nothing was saved.", None)
        path = self.save(state)
        raise TrainingInterrupted(f"training stopped {where}; checkpoint saved to {path}. {self.resume_hint}",
                                  str(path))

    def close(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
