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
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from ppl_vae.registry import Registry
from ppl_vae.validation import Scale

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
    family = dist.Normal

    def __init__(
        self,
        data_dim: int,
        *,
        sigma: Scale = 0.1,
        learn_sigma: bool = False,
        squash: Literal["sigmoid", "none"] = "sigmoid",
    ) -> None:
        super().__init__()
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
        return self.family(self.mean(params), self.log_sigma.exp()).to_event(1)


@LIKELIHOODS.register("laplace")
class Laplace(Gaussian):
    """p(x|z) = prod_i Laplace(x_i; mu_i(z), b): ``sigma`` is the scale b, fixed or learned (one for
    all pixels); the reconstruction term is an L1 error, as the Gaussian's is an L2 error."""

    family = dist.Laplace


@LIKELIHOODS.register("gaussian_per_pixel")
class GaussianPerPixel(nn.Module):
    """p(x|z) = prod_i N(x_i; mu_i(z), sigma_i(z)^2): the decoder gives a mean and a log sigma per pixel.

    A pixel that is constant in the data (MNIST's borders are always 0) lets sigma shrink without
    bound and the density grow to infinity; ``min_sigma`` floors sigma to keep the likelihood finite."""

    support = constraints.real

    def __init__(
        self, data_dim: int, *, min_sigma: Scale = 1e-2, squash: Literal["sigmoid", "none"] = "sigmoid"
    ) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.num_params = 2 * data_dim
        self.min_sigma = min_sigma
        self.squash = squash

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        loc = params[..., : self.data_dim]
        return torch.sigmoid(loc) if self.squash == "sigmoid" else loc

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        sigma = self.min_sigma + F.softplus(params[..., self.data_dim :])
        return dist.Normal(self.mean(params), sigma).to_event(1)


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulli(nn.Module):
    """p(x|z) = prod_i ContinuousBernoulli(x_i; sigmoid(logits_i)) (Loaiza-Ganem & Cunningham 2019):
    the Bernoulli cross-entropy with its normalizing constant, a true density on [0, 1]."""

    support = constraints.unit_interval

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.num_params = data_dim

    def forward(self, logits: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=logits).to_event(1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return dist.ContinuousBernoulli(logits=logits).mean


class _OpenUnitInterval(constraints.Constraint):
    """The open interval (0, 1): torch's ``unit_interval`` includes the ends, where a Beta density
    is 0 or infinite."""

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return (value > 0) & (value < 1)

    def __repr__(self) -> str:
        return "the open interval (0, 1)"


@LIKELIHOODS.register("beta")
class Beta(nn.Module):
    """p(x|z) = prod_i Beta(x_i; a_i(z), b_i(z)), the decoder giving both concentrations (softplus).

    Its support is the open interval (0, 1): data with exact 0s or 1s (MNIST) are rejected."""

    support = _OpenUnitInterval()

    def __init__(self, data_dim: int, *, min_concentration: Scale = 1e-3) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.num_params = 2 * data_dim
        self.min_concentration = min_concentration

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        concentration = self.min_concentration + F.softplus(params)
        return dist.Beta(concentration[..., : self.data_dim], concentration[..., self.data_dim :]).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self(params).mean


class _Quantized(constraints.Constraint):
    """Values on the grid {0, 1/(levels-1), ..., 1}, up to float rounding."""

    is_discrete = True

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels

    def check(self, value: torch.Tensor) -> torch.Tensor:
        steps = value * (self.levels - 1)
        return (value >= 0) & (value <= 1) & ((steps - steps.round()).abs() < 1e-3)

    def __repr__(self) -> str:
        return f"multiples of 1/{self.levels - 1} in [0, 1]"


class DiscretizedLogistic(dist.TorchDistribution):
    """A logistic density integrated over the bins of ``levels`` evenly spaced values in [0, 1]
    (Kingma et al. 2016; Salimans et al. 2017): a probability mass for 8-bit images, the two end
    bins taking the tails."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, levels: int = 256, validate_args=None) -> None:
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.levels = levels
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return _Quantized(self.levels)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return DiscretizedLogistic(self.loc.expand(shape), self.scale.expand(shape), self.levels)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        half_bin = 0.5 / (self.levels - 1)
        centered = (value - self.loc) / self.scale
        upper, lower = centered + half_bin / self.scale, centered - half_bin / self.scale
        log_cdf_upper = F.logsigmoid(upper)  # the lowest bin takes the left tail
        log_survival_lower = -F.softplus(lower)  # the highest bin takes the right tail
        # log(sigmoid(upper) - sigmoid(lower)), stable: sigmoid(u) - sigmoid(l) = sigmoid(u) sigmoid(-l) (1 - e^(l-u))
        log_bin = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log1p(-torch.exp(lower - upper).clamp(max=1 - 1e-7))
        return torch.where(value < half_bin, log_cdf_upper, torch.where(value > 1 - half_bin, log_survival_lower, log_bin))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        uniform = torch.rand(shape, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
        logistic = self.loc + self.scale * (uniform.log() - (-uniform).log1p())
        return (logistic.clamp(0, 1) * (self.levels - 1)).round() / (self.levels - 1)

    @property
    def mean(self) -> torch.Tensor:
        values = torch.linspace(0, 1, self.levels, device=self.loc.device)
        probs = self.log_prob(values.reshape(-1, *[1] * self.loc.dim())).exp()
        return (values.reshape(-1, *[1] * self.loc.dim()) * probs).sum(0)


@LIKELIHOODS.register("discretized_logistic")
class DiscretizedLogisticLikelihood(nn.Module):
    """p(x|z) = prod_i DiscretizedLogistic(x_i; mu_i(z), s_i(z)) over 256 levels, for 8-bit grayscale
    images scaled to [0, 1] (``mnist``, ``frey``): a probability mass, so log p(x) is comparable
    with that of any other discrete model of the same 8-bit data."""

    support = _Quantized(256)

    def __init__(self, data_dim: int, *, min_scale: Scale = 1e-3) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.num_params = 2 * data_dim
        self.min_scale = min_scale

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc = torch.sigmoid(params[..., : self.data_dim])
        scale = self.min_scale + F.softplus(params[..., self.data_dim :])
        return DiscretizedLogistic(loc, scale).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params[..., : self.data_dim])
