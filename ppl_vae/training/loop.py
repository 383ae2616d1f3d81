"""The training loop: SVI steps over a :class:`~ppl_vae.training.state.TrainingState`, with callbacks
for everything else.

The loop knows nothing of files, progress bars or particular objectives: it draws the epoch's
batches, takes one SVI step per batch with the β of the schedule, adds the objective's terms to the
epoch's sums, and tells its callbacks (:mod:`ppl_vae.training.callbacks`) after every step and
every epoch. A run resumed mid-epoch redraws the epoch's batches from the data generator's state
at the epoch's start and skips those already done, so it ends where an uninterrupted run would.

The hot loop stays on the device: a step's loss and terms are kept as tensors (the epoch's sums
are read once per epoch, or when a callback asks), and Pyro's and torch's argument validation runs
on the first step of a session only, where it catches a model or guide that does not fit the data;
later steps run the same model and guide with it off (``validate=True`` keeps it on throughout).

Numbers are nats per datapoint, as log-probabilities for bounds (DESIGN's conventions).
"""

from __future__ import annotations

import itertools
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Iterable, Sequence

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI

from ppl_vae.objectives import Objective, Schedule
from ppl_vae.training.callbacks import Callback
from ppl_vae.training.state import TrainingState

Batches = Callable[[torch.Generator], Iterable[tuple[torch.Tensor, ...]]]


def svi_step(svi: SVI, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``svi.step(*args, **kwargs)`` without reading the loss off the device: the same gradient step
    (:func:`loss_and_grads`, then :func:`update`), returning the loss as a detached 0-dim tensor."""
    loss, params = loss_and_grads(svi, *args, **kwargs)
    update(svi, params)
    return loss


def loss_and_grads(svi: SVI, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, set[torch.Tensor]]:
    """The first half of an SVI step: ``svi.loss_and_grads`` on the arguments, returning the loss (a
    detached 0-dim tensor, not read off the device) and the parameters the model and guide used."""
    with poutine.trace(param_only=True) as param_capture:
        loss = svi.loss_and_grads(svi.model, svi.guide, *args, **kwargs)
    params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
    return (loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(loss)), params  # Pyro's ELBOs give floats


def update(svi: SVI, params: set[torch.Tensor]) -> None:
    """The second half: the optimizer updates ``params``, whose gradients are then set to None, not to
    zero tensors: the next backward pass writes them instead of adding to zeros (ppl_vae's
    :class:`~ppl_vae.training.optimizers.SharedOptim` treats None as Pyro's zero)."""
    svi.optim(params)
    for param in params:
        param.grad = None


def validation(keep: bool) -> AbstractContextManager:
    """Leave Pyro's and torch's argument validation as the user set it (``keep``), or turn it off: the
    training loop keeps it for a session's first step, evaluations for their first batch."""
    return nullcontext() if keep else pyro.validation_enabled(False)


def train(
    svi: SVI, objective: Objective, schedule: Schedule, batches: Batches, epochs: int, state: TrainingState,
    callbacks: Sequence[Callback] = (), validate: bool = False,
) -> TrainingState:
    """Train until ``state.epoch == epochs``: each batch (a tuple of the model's data arguments) is one
    ``svi.step(*batch, kl_weight=β)``, β from ``schedule``; callbacks are told before every update (with
    the step's loss), after every step and epoch, and of a step that raised a RuntimeError.
    Validation is on for the session's first step only, unless ``validate``."""
    first_step = state.step
    try:
        for callback in callbacks:
            callback.on_train_start(state)
        while state.epoch < epochs:
            state.begin_epoch()
            for batch in itertools.islice(batches(state.generator), state.epoch_step, None):
                state.beta = schedule(state.step, state.epoch)
                try:
                    with validation(validate or state.step == first_step):
                        loss, params = loss_and_grads(svi, *batch, kl_weight=state.beta)
                    for callback in callbacks:
                        callback.on_before_update(state, loss)
                    update(svi, params)
                except RuntimeError as error:  # e.g. out of memory: a callback may raise a clearer error
                    for callback in callbacks:
                        callback.on_step_error(state, error)
                    raise
                state.add_step(batch[0].shape[0], objective.terms())
                for callback in callbacks:
                    callback.on_step(state, loss)
            state.end_epoch(objective.status())
            for callback in callbacks:
                callback.on_epoch_end(state)
    finally:
        for callback in callbacks:
            callback.close()
    return state
