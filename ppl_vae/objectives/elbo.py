"""The evidence lower bound through Pyro's own estimators (Kingma & Welling 2013, eq. 3 and 10).

``elbo`` is ``Trace_ELBO``: the KL is estimated from the sample, log q(z|x) - log p(z).
``meanfield`` is ``TraceMeanField_ELBO``: the KL is closed-form where torch knows it (diagonal
Gaussian posterior and prior), the Monte Carlo estimate elsewhere. Both run as the on-device
versions of :mod:`ppl_vae.objectives.estimators` (the same loss and gradients, no host reads).

Both estimate E_q[log p(x|z)] - β·KL(q(z|x) || p(z)): β comes from the model and guide, which scale
the latent site by it in both (``ppl_vae.models.vae.kl_weight_scale``), so that the loss changes by
exactly (β - 1)·KL under either estimator (DESIGN's pitfalls).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro.infer import ELBO

from ppl_vae.errors import ConfigError
from ppl_vae.objectives.base import OBJECTIVES
from ppl_vae.objectives.compiled import CompilableObjective
from ppl_vae.objectives.estimators import DeviceTraceELBO, DeviceTraceMeanFieldELBO
from ppl_vae.objectives.traces import elbo_terms

MAX_NUM_PARTICLES = 10_000
"""The most particles per datapoint a training objective accepts. Every particle of every datapoint
of a batch is held in memory at once (batch_size x num_particles x data size floats, and the
activations of every layer): 10000 particles of a 100-image MNIST batch already need 3 GB per
784-pixel tensor, while published objectives train with a few to a few dozen (IWAE: k <= 50; k = 5000
only to evaluate). A test log p(x) with more importance samples is estimated in chunks
(``train.log_likelihood_samples``, ``ppl-vae eval``)."""


def check_num_particles(num_particles: int) -> None:
    """Refuse a particle count below 1 or above :data:`MAX_NUM_PARTICLES`, naming the option."""
    if not 1 <= num_particles <= MAX_NUM_PARTICLES:
        raise ConfigError(
            f"num_particles: must be in [1, {MAX_NUM_PARTICLES}] (all particles of a batch are held in memory "
            f"at once), got {num_particles}; for a test log p(x) with more samples use "
            "train.log_likelihood_samples or ppl-vae eval, which take them in chunks."
        )


def elbo_term_sums(model_trace: Any, guide_trace: Any, analytic_kl: bool) -> dict[str, torch.Tensor]:
    """The batch sums of the ELBO, its reconstruction and its KL (unweighted by β), detached."""
    reconstruction, kl = elbo_terms(model_trace, guide_trace, analytic_kl)
    reconstruction, kl = reconstruction.sum().detach(), kl.sum().detach()
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}


@OBJECTIVES.register("elbo")
class TraceELBO(CompilableObjective):
    """The ELBO with Pyro's ``Trace_ELBO``: ``num_particles`` samples per datapoint, vectorized.

    Terms: ``elbo``, ``reconstruction`` (E_q log p(x|z)) and ``kl`` (KL(q(z|x) || p(z)), estimated as
    the loss estimates it), per datapoint, averaged over particles.
    """

    estimator: type[ELBO] = DeviceTraceELBO
    analytic_kl = False

    def __init__(self, *, num_particles: int = 1) -> None:
        super().__init__()
        check_num_particles(num_particles)
        self.num_particles = num_particles
        self.elbo = self.estimator(num_particles=num_particles, vectorize_particles=num_particles > 1)

    def loss_and_terms(self, model: Callable, guide: Callable, *args: Any,
                       **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = self.elbo.differentiable_loss(model, guide, *args, **kwargs)
        return loss, elbo_term_sums(*self.elbo.last_traces, self.analytic_kl)


@OBJECTIVES.register("meanfield")
class MeanFieldELBO(TraceELBO):
    """The ELBO with Pyro's ``TraceMeanField_ELBO``: the KL in closed form where torch knows it."""

    estimator = DeviceTraceMeanFieldELBO
    analytic_kl = True
