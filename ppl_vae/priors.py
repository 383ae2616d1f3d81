"""Priors p(z), registered by name. A prior is a module whose ``forward()`` returns a distribution
with event shape ``(latent_dim,)``; the data plate broadcasts it over the batch."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.registry import Registry

PRIORS: Registry[nn.Module] = Registry("prior")


@PRIORS.register("normal")
class StandardNormal(nn.Module):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
