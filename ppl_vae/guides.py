"""Posterior families q(z|x) for the amortized guide, registered by name.

A posterior module is told the latent size, declares how many numbers per datapoint it needs from
the encoder (``num_params``) and turns the encoder's output into a distribution over z with batch
shape ``(batch,)`` and event shape ``(latent_dim,)``.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.registry import Registry

POSTERIORS: Registry[nn.Module] = Registry("posterior")


@POSTERIORS.register("diagonal_normal")
class DiagonalNormal(nn.Module):
    """q(z|x) = N(mu(x), diag(sigma(x)^2)), the encoder giving mu and log sigma^2 (AEVB, appendix C)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_params = 2 * latent_dim

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc, log_var = params.split(self.latent_dim, dim=-1)
        return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)
