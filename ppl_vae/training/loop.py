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
from pyro.infer import SVI
from pyro.poutine.messenger import Messenger

from ppl_vae.objectives import Objective, Schedule
from ppl_vae.training.callbacks import Callback
from ppl_vae.training.state import TrainingState

Batches = Callable[[torch.Generator], Iterable[tuple[torch.Tensor, ...]]]


class ParameterCapture(Messenger):
    """Collects the parameters that the ``pyro.param`` and ``pyro.module`` calls under it return, in
    ``params``, and stops their messages where it sits.

    :class:`SVIStep` puts it around the model and the guide, inside the ELBO's traces, which then
    hold only the sample sites the loss is made of. Recorded there, each of a VAE's dozen
    ``pyro.module`` parameters would be a site in the guide's trace and in the replayed model's,
    walked, pruned and copied by the ELBO at every step: 0.1 to 0.15 ms a step on a CPU, 1 to 2 %
    of a batch-128 step. The parameters are read from Pyro's param store as before (and
    registered there on first use), so the loss and its gradients are the same.
    """

    def __init__(self) -> None:
        super().__init__()
        self.params: set[torch.Tensor] = set()

    def _pyro_param(self, msg: dict[str, Any]) -> None:
        msg["stop"] = True

    def _pyro_post_param(self, msg: dict[str, Any]) -> None:
        self.params.add(msg["value"].unconstrained())


class SVIStep:
    """``svi.step(*args, **kwargs)`` as the training loop takes it: the same gradient step, with the
    loss kept on the device (a detached 0-dim tensor, not a float) and in two halves,
    :meth:`loss_and_grads` and :meth:`update`, so that the loop can look at the loss in between.

    The parameters to update are collected by a :class:`ParameterCapture`: around the model and the
    guide where the loss is one of ppl_vae's objectives that allows it
    (:meth:`~ppl_vae.objectives.Objective.needs_parameter_sites`), else around the whole loss, where
    ``SVI.step`` collects them. The model and guide it wraps are made once, here, since objectives
    may keep what they learn of a model and guide by their identity (IWAE's plate layout).
    """

    def __init__(self, svi: SVI) -> None:
        self.svi = svi
        self.capture = ParameterCapture()
        self.captured_model, self.captured_guide = self.capture(svi.model), self.capture(svi.guide)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """One whole step; returns the loss."""
        loss, params = self.loss_and_grads(*args, **kwargs)
        self.update(params)
        return loss

    def loss_and_grads(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, set[torch.Tensor]]:
        """The first half: ``svi.loss_and_grads`` on the arguments, returning the loss and the
        parameters the model and guide used."""
        svi, self.capture.params = self.svi, set()
        if isinstance(svi.loss, Objective) and not svi.loss.needs_parameter_sites():
            loss = svi.loss_and_grads(self.captured_model, self.captured_guide, *args, **kwargs)
        else:
            with self.capture:
                loss = svi.loss_and_grads(svi.model, svi.guide, *args, **kwargs)
        loss = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(loss)  # Pyro's ELBOs give floats
        return loss, self.capture.params

    def update(self, params: set[torch.Tensor]) -> None:
        """The second half: the optimizer updates ``params``, whose gradients are then set to None, not
        to zero tensors: the next backward pass writes them instead of adding to zeros (ppl_vae's
        :class:`~ppl_vae.training.optimizers.SharedOptim` treats None as Pyro's zero)."""
        self.svi.optim(params)
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
    first_step, step = state.step, SVIStep(svi)
    try:
        for callback in callbacks:
            callback.on_train_start(state)
        while state.epoch < epochs:
            state.begin_epoch()
            for batch in itertools.islice(batches(state.generator), state.epoch_step, None):
                state.beta = schedule(state.step, state.epoch)
                try:
                    with validation(validate or state.step == first_step):
                        loss, params = step.loss_and_grads(*batch, kl_weight=state.beta)
                    for callback in callbacks:
                        callback.on_before_update(state, loss)
                    step.update(params)
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
