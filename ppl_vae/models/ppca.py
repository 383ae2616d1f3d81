"""Probabilistic PCA as a linear-Gaussian VAE: a model whose log p(x) and posterior are exact.

z ~ N(0, I_d), x | z ~ N(W z + b, σ² I_D). Integrating z out gives

    p(x) = N(x; b, W Wᵀ + σ² I),
    p(z | x) = N(M⁻¹ Wᵀ (x - b), σ² M⁻¹),  M = WᵀW + σ² I

(Tipping & Bishop 1999). The model and the guide are the ones of :class:`ppl_vae.models.vae.VAE`
built from the project's parts (a linear decoder, a Gaussian likelihood with a fixed σ and no
squashing, the standard-normal prior, a linear encoder into a diagonal Normal), so they keep its
data-plate conventions and work with every evaluation function and objective. W has orthogonal
columns, W = Q diag(s) with QᵀQ = I: then M is diagonal, the exact posterior is a diagonal Normal
and the linear encoder holds it exactly (its mean A (x - b) with A = diag(s / (s² + σ²)) Qᵀ, its
variance σ² / (s² + σ²)). A guide displaced from it (``guide_shift``, ``guide_variance_factor``)
is the ground truth for an imperfect proposal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch.distributions import MultivariateNormal

from ppl_vae.models.vae import VAE
from ppl_vae.parts.likelihoods import Gaussian
from ppl_vae.parts.nets import mlp
from ppl_vae.parts.posteriors import DiagonalNormal
from ppl_vae.parts.priors import StandardNormal

__all__ = ["PPCA"]


class PPCA:
    """A probabilistic PCA model with orthogonal columns ``weight`` (D x d), ``bias`` (D,) and noise
    scale ``sigma``, as a Pyro ``model`` and ``guide`` (those of ``self.vae``, in float64).

    The guide is the exact posterior p(z|x) unless ``guide_shift`` (added to its mean, in latent
    units) or ``guide_variance_factor`` (multiplying its variance) displace it.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        sigma: float,
        *,
        guide_shift: float = 0.0,
        guide_variance_factor: float = 1.0,
    ) -> None:
        weight = torch.as_tensor(weight, dtype=torch.float64)
        bias = torch.as_tensor(bias, dtype=torch.float64)
        if weight.ndim != 2 or bias.shape != weight.shape[:1]:
            raise ValueError(f"weight must be (D, d) and bias (D,), got {tuple(weight.shape)} and {tuple(bias.shape)}")
        if not sigma > 0 or not guide_variance_factor > 0:
            raise ValueError(f"sigma and guide_variance_factor must be positive, got {sigma} and {guide_variance_factor}")
        gram = weight.T @ weight
        off_diagonal = gram - torch.diag(torch.diagonal(gram))
        if off_diagonal.abs().max() > 1e-8 * max(1.0, float(gram.abs().max())):
            raise ValueError("weight must have orthogonal columns (WᵀW diagonal), so that the exact posterior is diagonal")
        self.weight, self.bias, self.sigma = weight, bias, float(sigma)
        self.data_dim, self.latent_dim = weight.shape
        squared_scales = torch.diagonal(gram)  # s²
        self.posterior_variance = self.sigma**2 / (squared_scales + self.sigma**2)  # diagonal of σ² M⁻¹
        self.posterior_gain = weight.T / (squared_scales + self.sigma**2).unsqueeze(1)  # M⁻¹ Wᵀ

        encoder = mlp(self.data_dim, 2 * self.latent_dim, hidden_sizes=[])
        decoder = mlp(self.latent_dim, self.data_dim, hidden_sizes=[])
        likelihood = Gaussian(self.data_dim, sigma=self.sigma, squash="none")
        self.vae = VAE(encoder, decoder, StandardNormal(self.latent_dim), DiagonalNormal(self.latent_dim), likelihood)
        self.vae = self.vae.double()
        with torch.no_grad():
            likelihood.log_sigma.fill_(math.log(self.sigma))  # in float64, not the float32 it was built in
            decoder[0].weight.copy_(weight)
            decoder[0].bias.copy_(bias)
            encoder[0].weight.zero_()
            encoder[0].weight[: self.latent_dim] = self.posterior_gain
            encoder[0].bias[: self.latent_dim] = -self.posterior_gain @ bias + guide_shift
            encoder[0].bias[self.latent_dim :] = torch.log(self.posterior_variance * guide_variance_factor)

    @classmethod
    def random(
        cls,
        data_dim: int,
        scales: Sequence[float],
        sigma: float,
        *,
        seed: int = 0,
        guide_shift: float = 0.0,
        guide_variance_factor: float = 1.0,
    ) -> PPCA:
        """W = Q diag(scales) with a random orthonormal Q (D x d) and a random bias, drawn with ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        scales = torch.as_tensor(scales, dtype=torch.float64)
        q, _ = torch.linalg.qr(torch.randn(data_dim, len(scales), generator=generator, dtype=torch.float64))
        bias = torch.randn(data_dim, generator=generator, dtype=torch.float64)
        return cls(q * scales, bias, sigma, guide_shift=guide_shift, guide_variance_factor=guide_variance_factor)

    @property
    def model(self):
        """The Pyro model ``model(x)``: z ~ N(0, I), x | z ~ N(Wz + b, σ²I) in the data plate."""
        return self.vae.model

    @property
    def guide(self):
        """The Pyro guide ``guide(x)``: the exact posterior, or its displaced version."""
        return self.vae.guide

    def sample(self, num: int, seed: int = 0) -> torch.Tensor:
        """``num`` datapoints (num, D) drawn from the model with ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(num, self.latent_dim, generator=generator, dtype=torch.float64)
        noise = torch.randn(num, self.data_dim, generator=generator, dtype=torch.float64)
        return z @ self.weight.T + self.bias + self.sigma * noise

    def marginal(self) -> MultivariateNormal:
        """p(x) = N(b, W Wᵀ + σ² I)."""
        covariance = self.weight @ self.weight.T + self.sigma**2 * torch.eye(self.data_dim, dtype=torch.float64)
        return MultivariateNormal(self.bias, covariance)

    def exact_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = log N(x; b, W Wᵀ + σ² I) per datapoint (nats), shape x.shape[:-1]."""
        return self.marginal().log_prob(torch.as_tensor(x, dtype=torch.float64))

    def exact_posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """p(z | x) = N(M⁻¹ Wᵀ (x - b), σ² M⁻¹), diagonal, one per datapoint (event dimension 1)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        loc = (x - self.bias) @ self.posterior_gain.T
        return dist.Normal(loc, self.posterior_variance.sqrt().expand_as(loc)).to_event(1)
