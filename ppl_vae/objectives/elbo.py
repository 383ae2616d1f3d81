"""The evidence lower bound through Pyro's own estimators (Kingma & Welling 2013, eq. 3 and 10).

``elbo`` is ``Trace_ELBO``: the KL is estimated from the sample, log q(z|x) - log p(z).
``meanfield`` is ``TraceMeanField_ELBO``: the KL is closed-form where torch knows it (diagonal
Gaussian posterior and prior), the Monte Carlo estimate elsewhere.

Both estimate E_q[log p(x|z)] - β·KL(q(z|x) || p(z)): β comes from the model and guide, which scale
the latent site by it in both (``ppl_vae.models.vae.kl_weight_scale``), so that the loss changes by
exactly (β - 1)·KL under either estimator (DESIGN's pitfalls).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from ppl_vae.errors import ConfigError
from ppl_vae.objectives.base import OBJECTIVES, Objective
from ppl_vae.objectives.traces import elbo_terms


def check_num_particles(num_particles: int) -> None:
    if num_particles < 1:
        raise ConfigError(f"num_particles: must be >= 1, got {num_particles}.")


def elbo_term_sums(model_trace: Any, guide_trace: Any, analytic_kl: bool) -> dict[str, torch.Tensor]:
    """The batch sums of the ELBO, its reconstruction and its KL (unweighted by β), detached."""
    reconstruction, kl = elbo_terms(model_trace, guide_trace, analytic_kl)
    reconstruction, kl = reconstruction.sum().detach(), kl.sum().detach()
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}


@OBJECTIVES.register("elbo")
class TraceELBO(Objective):
    """The ELBO with Pyro's ``Trace_ELBO``: ``num_particles`` samples per datapoint, vectorized.

    Terms: ``elbo``, ``reconstruction`` (E_q log p(x|z)) and ``kl`` (KL(q(z|x) || p(z)), estimated as
    the loss estimates it), per datapoint, averaged over particles.
    """

    estimator: type[ELBO] = Trace_ELBO
    analytic_kl = False

    def __init__(self, *, num_particles: int = 1) -> None:
        super().__init__()
        check_num_particles(num_particles)
        self.num_particles = num_particles
        self.elbo = self.estimator(num_particles=num_particles, vectorize_particles=num_particles > 1)

    def __call__(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        model, guide = poutine.trace(model), poutine.trace(guide)  # to read the terms off this step's traces
        loss = self.elbo.differentiable_loss(model, guide, *args, **kwargs)
        self._terms = elbo_term_sums(model.trace, guide.trace, self.analytic_kl)
        return loss


@OBJECTIVES.register("meanfield")
class MeanFieldELBO(TraceELBO):
    """The ELBO with Pyro's ``TraceMeanField_ELBO``: the KL in closed form where torch knows it."""

    estimator = TraceMeanField_ELBO
    analytic_kl = True
