"""Priors p(z), registered by name. A prior is a module whose ``forward()`` returns a distribution
with event shape ``(latent_dim,)``; the data plate broadcasts it over the batch.

A prior that is defined through the guide (the VampPrior) subclasses :class:`EncoderPrior`; the
VAE gives it its encoder when it is built."""

from __future__ import annotations

from typing import Annotated, Callable, Literal

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from ppl_vae.errors import ConfigError
from ppl_vae.registry import Registry
from ppl_vae.validation import MAX_SCALE, Bounds, Flows, HiddenSizes, Size

Spread = Annotated[float, Bounds(0, MAX_SCALE)]
"""The spread (standard deviation) of initial values, in latent or data units."""

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


@PRIORS.register("mixture")
class GaussianMixture(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)), every weight, mean and scale learned.

    The means start spread as draws from N(0, ``init_spread``^2 I), so the components differ."""

    def __init__(self, latent_dim: int, *, num_components: Size = 10, init_spread: Spread = 1.0) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(init_spread * torch.randn(num_components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(num_components, latent_dim))

    def forward(self) -> dist.TorchDistribution:
        components = dist.Normal(self.locs, self.log_scales.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class EncoderPrior(nn.Module):
    """A prior defined through the VAE's own guide: the VAE hands it its ``encode`` (x -> q(z|x))
    and the data size when it is built, by calling :meth:`use_encoder`."""

    def use_encoder(self, encode: Callable[[torch.Tensor], dist.TorchDistribution], data_dim: int) -> None:
        raise NotImplementedError


@PRIORS.register("vamp")
class VampPrior(EncoderPrior):
    """The VampPrior (Tomczak & Welling 2018): p(z) = 1/K sum_k q(z | u_k), the posterior at K
    learned pseudo-inputs u_k, which start as draws from N(``init_mean``, ``init_std``^2)."""

    def __init__(
        self,
        latent_dim: int,
        *,
        num_pseudo: Size = 500,
        init_mean: Annotated[float, Bounds(-MAX_SCALE, MAX_SCALE)] = 0.05,
        init_std: Spread = 0.01,
    ) -> None:
        super().__init__()
        self.num_pseudo, self.init_mean, self.init_std = num_pseudo, init_mean, init_std
        self.pseudo_inputs: nn.Parameter | None = None
        self._encode: Callable[[torch.Tensor], dist.TorchDistribution] | None = None

    def use_encoder(self, encode: Callable[[torch.Tensor], dist.TorchDistribution], data_dim: int) -> None:
        # a plain reference, not a submodule: the encoder's weights stay registered once, by the guide
        self._encode = encode
        self.pseudo_inputs = nn.Parameter(self.init_mean + self.init_std * torch.randn(self.num_pseudo, data_dim))

    def forward(self) -> dist.TorchDistribution:
        if self._encode is None:
            raise RuntimeError("VampPrior needs the VAE's encoder: build it inside a VAE (or call use_encoder).")
        components = self._encode(self.pseudo_inputs)  # batch shape (K,), event shape (latent_dim,)
        mixing = dist.Categorical(logits=torch.zeros(self.num_pseudo, device=self.pseudo_inputs.device))
        return dist.MixtureSameFamily(mixing, components)


@PRIORS.register("flow")
class FlowPrior(nn.Module):
    """p(z): N(0, I) pushed through ``num_flows`` learned coupling layers (RealNVP-style
    ``affine_coupling`` or neural-spline ``spline_coupling``), the halves swapped between layers.
    Coupling layers invert in closed form, so log p(z) of the guide's samples is exact."""

    def __init__(
        self,
        latent_dim: int,
        *,
        num_flows: Flows = 4,
        transform: Literal["affine_coupling", "spline_coupling"] = "affine_coupling",
        hidden_sizes: HiddenSizes = (64, 64),
    ) -> None:
        super().__init__()
        if latent_dim < 2:
            raise ConfigError(f"the flow prior couples halves of z: needs model.latent_dim >= 2, got {latent_dim}.")
        make = getattr(T, transform)
        self.couplings = nn.ModuleList(make(latent_dim, hidden_dims=list(hidden_sizes)) for _ in range(num_flows))
        self.register_buffer("reversed_order", torch.arange(latent_dim - 1, -1, -1))
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        swap = T.Permute(self.reversed_order)
        transforms = []
        for coupling in self.couplings:
            transforms += [coupling, swap]
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, transforms[:-1])
