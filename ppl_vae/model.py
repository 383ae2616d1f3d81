"""The VAE as a Pyro model and guide, built from registered parts."""

from __future__ import annotations

from contextlib import AbstractContextManager

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ppl_vae.config import ModelConfig, PartSpec
from ppl_vae.guides import POSTERIORS
from ppl_vae.likelihoods import LIKELIHOODS
from ppl_vae.nets import NETS
from ppl_vae.priors import PRIORS, EncoderPrior


def kl_weight_scale(kl_weight: float) -> AbstractContextManager:
    """Weight the latent site's log-probabilities by β (the KL weight, DESIGN's β semantics).

    Used on the latent site in both the model and the guide, so that every ELBO estimator gives
    loss = -E_q[log p(x|z)] + β·KL. Pyro's ``scale`` needs β > 0; β = 0 (the plain autoencoder)
    masks the site instead, which drops its log-probabilities but keeps the reparameterized sample.
    """
    if kl_weight < 0:
        raise ValueError(f"the KL weight β must be >= 0, got {kl_weight}.")
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


def build_vae(config: ModelConfig, data_dim: int, image_shape: tuple[int, int] | None = None) -> VAE:
    """Build a VAE from its config section for data of ``data_dim`` numbers per datapoint.

    Networks that take an ``image_shape`` option get the dataset's ``image_shape`` unless the config
    sets one; a prior defined through the encoder (VampPrior) is handed the VAE's encoder."""
    prior = PRIORS.build(config.prior, "model.prior", config.latent_dim)
    posterior = POSTERIORS.build(config.posterior, "model.posterior", config.latent_dim)
    likelihood = LIKELIHOODS.build(config.likelihood, "model.likelihood", data_dim)
    encoder = _build_net(config.encoder, "model.encoder", image_shape, data_dim, posterior.num_params)
    decoder = _build_net(config.decoder, "model.decoder", image_shape, config.latent_dim, likelihood.num_params)
    vae = VAE(encoder, decoder, prior, posterior, likelihood)
    if isinstance(prior, EncoderPrior):
        prior.use_encoder(vae.encode, data_dim)
    return vae


def _build_net(spec: PartSpec, key: str, image_shape: tuple[int, int] | None, *sizes: int) -> nn.Module:
    """Build a network, filling its ``image_shape`` option from the data if it has one and it is unset."""
    if image_shape is not None and "image_shape" in NETS.options(spec.name) and "image_shape" not in spec.options:
        spec = PartSpec(spec.name, {**spec.options, "image_shape": list(image_shape)})
    return NETS.build(spec, key, *sizes)
