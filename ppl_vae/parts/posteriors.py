"""Posterior families q(z|x) for the amortized guide, registered by name.

A posterior module is told the latent size, declares how many numbers per datapoint it needs from
the encoder (``num_params``) and turns the encoder's output into a distribution over z with batch
shape ``(batch,)`` and event shape ``(latent_dim,)``. Its ``mean`` is the point used for
reconstructions and latent plots.

Only the diagonal Normal has an analytic KL to the standard-normal prior; with the others
``TraceMeanField_ELBO`` (``objective.elbo: meanfield``) falls back to the Monte Carlo estimate.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import AutoRegressiveNN
from torch import nn
from torch.distributions import transform_to
from torch.distributions.utils import vec_to_tril_matrix

from ppl_vae.errors import ConfigError
from ppl_vae.registry import Registry
from ppl_vae.validation import Flows, HiddenSizes, Size

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


@POSTERIORS.register("full_normal")
class FullNormal(nn.Module):
    """q(z|x) = N(mu(x), L(x) L(x)^T) with a full covariance: the encoder gives mu and the
    D(D+1)/2 entries of the Cholesky factor L (its diagonal through exp, as Pyro's AutoMultivariateNormal)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_params = latent_dim + latent_dim * (latent_dim + 1) // 2

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc, tril_entries = params[..., : self.latent_dim], params[..., self.latent_dim :]
        scale_tril = transform_to(dist.constraints.lower_cholesky)(vec_to_tril_matrix(tril_entries))
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)


@POSTERIORS.register("lowrank_normal")
class LowRankNormal(nn.Module):
    """q(z|x) = N(mu(x), W(x) W(x)^T + diag(d(x))): a rank-``rank`` covariance plus a diagonal,
    for latent spaces too large for a full covariance."""

    def __init__(self, latent_dim: int, *, rank: Size = 2) -> None:
        super().__init__()
        if not 1 <= rank <= latent_dim:
            raise ConfigError(f"rank: must be in [1, latent_dim={latent_dim}], got {rank}.")
        self.latent_dim, self.rank = latent_dim, rank
        self.num_params = latent_dim * (2 + rank)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc, factor, log_diag = params.split([self.latent_dim, self.latent_dim * self.rank, self.latent_dim], dim=-1)
        cov_factor = factor.reshape(*factor.shape[:-1], self.latent_dim, self.rank)
        return dist.LowRankMultivariateNormal(loc, cov_factor, log_diag.exp())


class FlowDistribution(dist.TransformedDistribution):
    """A transformed distribution whose ``mean`` is the image of the base distribution's mean: a
    cheap central point of q(z|x) (not its exact mean, which has no closed form)."""

    @property
    def mean(self) -> torch.Tensor:
        z = self.base_dist.mean
        for transform in self.transforms:
            z = transform(z)
        return z


@POSTERIORS.register("iaf")
class InverseAutoregressiveFlow(nn.Module):
    """q(z|x): the diagonal Normal of the encoder pushed through ``num_flows`` inverse autoregressive
    flows (Kingma et al. 2016; Pyro's ``affine_autoregressive``), shared by all x, the variable
    order reversed between them. Sampling and log q of the sample are one pass each (Pyro caches
    the inverse); the flow models correlations a diagonal Normal cannot."""

    def __init__(
        self, latent_dim: int, *, num_flows: Flows = 2, hidden_sizes: HiddenSizes | None = None
    ) -> None:
        super().__init__()
        if latent_dim < 2:
            raise ConfigError(f"an autoregressive flow needs model.latent_dim >= 2, got {latent_dim}.")
        hidden = [4 * latent_dim] if hidden_sizes is None else list(hidden_sizes)
        if min(hidden) < latent_dim:
            raise ConfigError(f"hidden_sizes: each must be >= latent_dim={latent_dim}, got {hidden}.")
        order = torch.arange(latent_dim)
        self.base = DiagonalNormal(latent_dim)
        self.num_params = self.base.num_params
        self.flows = nn.ModuleList(
            T.AffineAutoregressive(AutoRegressiveNN(latent_dim, hidden, permutation=order if i % 2 == 0 else order.flip(0)))
            for i in range(num_flows)
        )

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return FlowDistribution(self.base(params), list(self.flows))
