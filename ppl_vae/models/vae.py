"""The VAE as a Pyro model and guide over registered parts (built from a config by :mod:`ppl_vae.build`)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn


def kl_weight_scale(kl_weight: float) -> AbstractContextManager:
    """Weight the latent site's log-probabilities by β (the KL weight, DESIGN's β semantics).

    Used on the latent site in both the model and the guide, so that every ELBO estimator gives
    loss = -E_q[log p(x|z)] + β·KL. Pyro's ``scale`` needs β > 0; β = 0 (the plain autoencoder)
    masks the site instead, which drops its log-probabilities but keeps the reparameterized sample.
    β = 1 (the ELBO itself) needs no handler: a scale of 1 leaves every log-probability as it is.
    """
    if kl_weight < 0:
        raise ValueError(f"the KL weight β must be >= 0, got {kl_weight}.")
    if kl_weight == 1:
        return nullcontext()
    return poutine.scale(scale=kl_weight) if kl_weight > 0 else poutine.mask(mask=False)


class VAE(nn.Module):
    """A variational autoencoder: generative model p(z) p(x|z) and amortized guide q(z|x).

    Args:
        encoder: network mapping x (batch, data_dim) to ``posterior.num_params`` numbers per row.
        decoder: network mapping z (batch, latent_dim) to ``likelihood.num_params`` numbers per row.
        prior: module whose ``forward()`` gives p(z).
        posterior: module mapping encoder output to q(z|x).
        likelihood: module mapping decoder output to p(x|z).
    """

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, prior: nn.Module, posterior: nn.Module, likelihood: nn.Module
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.posterior = posterior
        self.likelihood = likelihood

    def model(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """p(x, z) = p(z) p(x|z), with the latent site weighted by β = ``kl_weight``."""
        pyro.module("decoder", self.decoder)
        pyro.module("prior", self.prior)
        pyro.module("likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            with kl_weight_scale(kl_weight):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor, kl_weight: float = 1.0) -> None:
        """q(z|x), amortized by the encoder; the same β weight as in the model."""
        pyro.module("encoder", self.encoder)
        pyro.module("posterior", self.posterior)
        with pyro.plate("data", x.shape[0]):
            with kl_weight_scale(kl_weight):
                pyro.sample("z", self.encode(x))

    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) for a batch of inputs."""
        return self.posterior(self.encoder(x))

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z) for a batch of latent codes."""
        return self.likelihood(self.decoder(z))

    def decoded_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z], for pictures of reconstructions, samples and manifolds."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x|z] at the posterior mean of z."""
        return self.decoded_mean(self.encode(x).mean)

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """E[x|z] for z drawn from the prior."""
        return self.decoded_mean(self.prior().sample((num_samples,)))

    @property
    def latent_dim(self) -> int:
        return self.prior().event_shape[0]
