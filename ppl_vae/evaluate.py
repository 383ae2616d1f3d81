"""Evaluation of a trained VAE. Units: nats per datapoint; ELBO and log p(x) are log-probabilities
(higher is better); "reconstruction" is E_q[log p(x|z)] and "kl" is KL(q(z|x) || p(z)) >= 0, so
elbo = reconstruction - kl."""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.poutine import Trace
from torch.distributions import kl_divergence

from ppl_vae.model import VAE


def elbo_terms(model_trace: Trace, guide_trace: Trace, analytic_kl: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint reconstruction log p(x|z) and KL(q(z|x) || p(z)) from one pair of traces.

    The terms are unweighted by β (read off the sites' distributions, not their scaled log-probs).
    With ``analytic_kl`` the KL is closed-form where torch knows it (TraceMeanField_ELBO's
    estimator), else the single-sample estimate log q(z|x) - log p(z) (Trace_ELBO's). Vectorized
    particles (a leading particle dimension) are averaged.
    """
    x_site, z_model, z_guide = model_trace.nodes["x"], model_trace.nodes["z"], guide_trace.nodes["z"]
    reconstruction = x_site["fn"].log_prob(x_site["value"])
    posterior, prior, z = z_guide["fn"], z_model["fn"], z_guide["value"]
    kl = None
    if analytic_kl:
        try:
            kl = kl_divergence(posterior, prior)
        except NotImplementedError:
            pass
    if kl is None:
        kl = posterior.log_prob(z) - prior.log_prob(z)
    batch_size = x_site["value"].shape[0]
    kl = kl.expand(reconstruction.shape)
    return reconstruction.reshape(-1, batch_size).mean(0), kl.reshape(-1, batch_size).mean(0)


def trace_pair(vae: VAE, x: torch.Tensor, kl_weight: float = 1.0) -> tuple[Trace, Trace]:
    """Run the guide on ``x`` and the model replayed on the guide's z: (model_trace, guide_trace)."""
    guide_trace = poutine.trace(vae.guide).get_trace(x, kl_weight)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, kl_weight)
    return model_trace, guide_trace


@torch.no_grad()
def evaluate_elbo(vae: VAE, x: torch.Tensor, batch_size: int = 1000, num_particles: int = 1) -> dict[str, float]:
    """Mean ELBO, reconstruction and (analytic where possible) KL over ``x``, in nats per datapoint."""
    totals = torch.zeros(2, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        for _ in range(num_particles):
            reconstruction, kl = elbo_terms(*trace_pair(vae, batch))
            totals += torch.stack([reconstruction.sum(), kl.sum()])
    reconstruction, kl = (totals / (x.shape[0] * num_particles)).tolist()
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}
