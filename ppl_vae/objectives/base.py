"""What every training objective is: a Pyro loss that reports its own terms and keeps its own state.

An objective is registered by name in :data:`OBJECTIVES` (config ``objective: {name: ..., <options>}``,
the options being its constructor's keyword-only arguments) and plugs into ``pyro.infer.SVI``::

    objective = OBJECTIVES.get("meanfield")(num_particles=1)
    svi = SVI(vae.model, vae.guide, optimizer, loss=objective, loss_and_grads=objective.loss_and_grads)

After each call it reports the terms of that batch (:meth:`Objective.terms`, for the history and the
progress bar) and, where it has any, state worth logging (:meth:`Objective.status`) and saving
(:meth:`Objective.state_dict`), and what a reader of the finished run must know about how training
went (:meth:`Objective.warnings`: ``metrics.json`` lists them and ``ppl-vae train`` prints them).
The training loop, the run directory, checkpoints and figures only use these methods, so none of
them names a particular objective.

Units and signs (DESIGN's conventions): terms are log-probabilities or KLs in nats, summed over the
batch's datapoints (the loop divides by the number of datapoints); the loss is the negative of the
bound, summed over the batch, as Pyro's ELBO losses are.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ppl_vae.registry import Registry


class Objective:
    """Base class of the training objectives. Subclasses implement :meth:`__call__`.

    Class attributes:
        bound: the name of the term this objective maximizes (the progress bar leads with it).
        supports_beta: False for objectives that weight the KL themselves (GECO), which then refuse a
            β schedule other than the constant 1.
        term_labels: axis labels, with units, of the terms it reports beyond ``elbo``,
            ``reconstruction`` and ``kl`` (which every objective reports).
        status_panels: for each key of :meth:`status`, the axis label and scale ("linear" or "log")
            of its panel in the training-curve figure.
    """

    bound: str = "elbo"
    supports_beta: bool = True
    term_labels: dict[str, str] = {}
    status_panels: dict[str, tuple[str, str]] = {}

    def __init__(self) -> None:
        self._terms: dict[str, torch.Tensor] = {}

    def __call__(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The differentiable loss of one batch (summed over it); records the batch's terms."""
        raise NotImplementedError

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The loss, with its gradients accumulated into the parameters (``SVI``'s ``loss_and_grads``)."""
        loss = self(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss

    def compile(self) -> bool:
        """Use a compiled loss from the next call on, where this objective has one (config
        ``train.compile``); returns whether it has. The default has none and stays eager."""
        return False

    def needs_parameter_sites(self) -> bool:
        """Whether the loss finds the parameters it differentiates among the ``param`` sites of its
        traces, as a compiled loss does (Pyro's jit takes them as the graph's inputs). If not, the
        training loop keeps those sites out of the traces, which saves Pyro recording and walking a
        dozen of them per step (:class:`ppl_vae.training.loop.ParameterCapture`). False by default."""
        return False

    def terms(self) -> dict[str, torch.Tensor]:
        """The last batch's terms (nats, log-probability sign for bounds), each summed over the batch's
        datapoints, detached, on the batch's device."""
        return self._terms

    def status(self) -> dict[str, float]:
        """Values of the objective's own state to log once per epoch (none by default)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The objective's state for a checkpoint (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`; a TypeError, ValueError or KeyError if
        ``state`` is not one (a damaged checkpoint)."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint holds {sorted(state)}")

    def warnings(self) -> list[str]:
        """Problems with the training so far that the numbers alone do not show (none by default),
        each a sentence saying what happened and what to change."""
        return []


OBJECTIVES: Registry[Objective] = Registry("objective")
