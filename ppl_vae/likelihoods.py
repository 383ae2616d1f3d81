"""Likelihoods p(x|z), registered by name.

A likelihood module is told the data size, declares how many numbers per datapoint it needs from
the decoder (``num_params``), turns the decoder's output into a distribution with event shape
``(data_dim,)`` and gives the mean of that distribution (for reconstructions and samples).
``support`` is the set the data must lie in.
"""

from __future__ import annotations

import math
from typing import Literal

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from ppl_vae.errors import ConfigError
from ppl_vae.registry import Registry

LIKELIHOODS: Registry[nn.Module] = Registry("likelihood")


@LIKELIHOODS.register("bernoulli")
class Bernoulli(nn.Module):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logits_i)).

    For binary data this is a true likelihood. On grayscale data in [0, 1] it is the usual
    cross-entropy "teaching shortcut" (not a normalized density; prefer a continuous likelihood
    for reporting log p(x) on grayscale data)."""

    support = constraints.unit_interval

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.num_params = data_dim

    def forward(self, logits: torch.Tensor) -> dist.TorchDistribution:
        # validate_args=False lets grayscale targets through (the cross-entropy shortcut above)
        return dist.Bernoulli(logits=logits, validate_args=False).to_event(1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


@LIKELIHOODS.register("gaussian")
class Gaussian(nn.Module):
    """p(x|z) = N(x; mu(z), sigma^2 I) with a fixed sigma, or one global sigma learned with the nets.

    ``squash="sigmoid"`` maps the decoder mean into (0, 1), as AEVB's Frey Face model does."""

    support = constraints.real

    def __init__(
        self,
        data_dim: int,
        *,
        sigma: float = 0.1,
        learn_sigma: bool = False,
        squash: Literal["sigmoid", "none"] = "sigmoid",
    ) -> None:
        super().__init__()
        if sigma <= 0:
            raise ConfigError(f"sigma: must be > 0, got {sigma}.")
        self.num_params = data_dim
        self.squash = squash
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params) if self.squash == "sigmoid" else params

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(self.mean(params), self.log_sigma.exp()).to_event(1)
