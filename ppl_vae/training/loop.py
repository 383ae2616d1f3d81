"""The training loop: SVI steps over a :class:`~ppl_vae.training.state.TrainingState`, with callbacks
for everything else.

The loop knows nothing of files, progress bars or particular objectives: it draws the epoch's
batches, takes one SVI step per batch with the β of the schedule, adds the objective's terms to the
epoch's sums, and tells its callbacks (:mod:`ppl_vae.training.callbacks`) after every step and
every epoch. A run resumed mid-epoch redraws the epoch's batches from the data generator's state
at the epoch's start and skips those already done, so it ends where an uninterrupted run would.

Numbers are nats per datapoint, as log-probabilities for bounds (DESIGN's conventions).
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable, Sequence

import torch
from pyro.infer import SVI

from ppl_vae.objectives import Objective, Schedule
from ppl_vae.training.callbacks import Callback
from ppl_vae.training.state import TrainingState

Batches = Callable[[torch.Generator], Iterable[tuple[torch.Tensor, ...]]]


def train(
    svi: SVI, objective: Objective, schedule: Schedule, batches: Batches, epochs: int, state: TrainingState,
    callbacks: Sequence[Callback] = (),
) -> TrainingState:
    """Train until ``state.epoch == epochs``: each batch (a tuple of the model's data arguments) is one
    ``svi.step(*batch, kl_weight=β)``, β from ``schedule``; callbacks are told after every step and epoch,
    and of a step that raised a RuntimeError."""
    try:
        for callback in callbacks:
            callback.on_train_start(state)
        while state.epoch < epochs:
            state.begin_epoch()
            for batch in itertools.islice(batches(state.generator), state.epoch_step, None):
                state.beta = schedule(state.step, state.epoch)
                try:
                    loss = svi.step(*batch, kl_weight=state.beta)
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
