"""The plain-PyTorch VAE that the benchmarks compare ppl_vae against: no Pyro, no callbacks.

It is written the way a careful PyTorch user would write it (pytorch/examples' VAE, Burda et al.'s
setting), with everything that decides the amount of work matched to ppl_vae's path:

- the same networks and initialization: ``nn.Sequential`` of ``nn.Linear`` and ``nn.Tanh`` (torch's
  default Linear init), encoder 784-200-200-2·50 (mean and log variance), decoder 50-200-200-784;
- the same likelihood, posterior and prior: Bernoulli(logits) summed over pixels, a diagonal Normal
  q(z|x) = N(μ, exp(log σ²)), p(z) = N(0, I), all through ``torch.distributions``;
- the same data pipeline: the rows in a ``randperm`` order, each batch binarized dynamically with
  uniforms from the same generator, the data already in memory on the device;
- the same optimizer: Adam with ppl_vae's defaults (lr 1e-3);
- the loss of each objective as its estimator defines it: ``elbo`` the sampled KL log q(z|x) - log p(z)
  (``Trace_ELBO``'s), ``meanfield`` the closed-form KL (``TraceMeanField_ELBO``'s), ``iwae`` the
  k-sample bound logsumexp_j(log w_j) - log k per datapoint (Burda et al. 2015, eq. 8).

Losses are the negative bound summed over the batch, as Pyro's are; bounds are nats per datapoint.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import nn
from torch.distributions import Bernoulli, Normal, kl_divergence

Loss = Callable[["PlainVAE", torch.Tensor], torch.Tensor]


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with tanh between them and a linear output, as ppl_vae's ``mlp`` network."""
    layers: list[nn.Module] = []
    for size_in, size_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(size_in, size_out), nn.Tanh()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


class PlainVAE(nn.Module):
    """Encoder and decoder MLPs with a diagonal-Normal posterior and a Bernoulli likelihood."""

    def __init__(self, data_dim: int = 784, hidden_sizes: tuple[int, ...] = (200, 200), latent_dim: int = 50) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = mlp([data_dim, *hidden_sizes, 2 * latent_dim])
        self.decoder = mlp([latent_dim, *hidden_sizes, data_dim])

    def posterior(self, x: torch.Tensor) -> Normal:
        """q(z|x), one Normal per latent dimension."""
        loc, log_var = self.encoder(x).split(self.latent_dim, dim=-1)
        return Normal(loc, torch.exp(0.5 * log_var), validate_args=False)

    def prior(self, like: torch.Tensor) -> Normal:
        """p(z) = N(0, I), shaped like ``like``."""
        return Normal(torch.zeros_like(like), torch.ones_like(like), validate_args=False)

    def log_likelihood(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels."""
        return Bernoulli(logits=self.decoder(z), validate_args=False).log_prob(x).sum(-1)


def elbo_loss(vae: PlainVAE, x: torch.Tensor) -> torch.Tensor:
    """-Σ_n [log p(x_n|z_n) - (log q(z_n|x_n) - log p(z_n))], one reparameterized z_n per datapoint."""
    posterior = vae.posterior(x)
    z = posterior.rsample()
    kl = (posterior.log_prob(z) - vae.prior(z).log_prob(z)).sum(-1)
    return -(vae.log_likelihood(z, x) - kl).sum()


def meanfield_loss(vae: PlainVAE, x: torch.Tensor) -> torch.Tensor:
    """-Σ_n [log p(x_n|z_n) - KL(q(z|x_n) || p(z))], the KL in closed form."""
    posterior = vae.posterior(x)
    z = posterior.rsample()
    kl = kl_divergence(posterior, vae.prior(z)).sum(-1)
    return -(vae.log_likelihood(z, x) - kl).sum()


def log_weights(vae: PlainVAE, x: torch.Tensor, num_particles: int, posterior: Normal | None = None) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for ``num_particles`` draws per datapoint: (num_particles, datapoints)."""
    posterior = posterior or vae.posterior(x)
    z = posterior.rsample((num_particles,))
    return vae.log_likelihood(z, x) + (vae.prior(z).log_prob(z) - posterior.log_prob(z)).sum(-1)


def iwae_loss(vae: PlainVAE, x: torch.Tensor, num_particles: int = 5) -> torch.Tensor:
    """-Σ_n [logsumexp_j log w_nj - log k], k = ``num_particles`` draws per datapoint."""
    bound = log_weights(vae, x, num_particles).logsumexp(0) - math.log(num_particles)
    return -bound.sum()


LOSSES: dict[str, Loss] = {"elbo": elbo_loss, "meanfield": meanfield_loss, "iwae": iwae_loss}


def train_step(vae: PlainVAE, optimizer: torch.optim.Optimizer, loss: Loss, x: torch.Tensor) -> torch.Tensor:
    """One Adam step on batch ``x``; returns the detached loss (no host sync)."""
    value = loss(vae, x)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()
    return value.detach()


def epoch_steps(vae: PlainVAE, optimizer: torch.optim.Optimizer, loss: Loss, x: torch.Tensor, batch_size: int,
                generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch over the rows of grayscale ``x``, shuffled and dynamically binarized batch by batch,
    one batch per ``next``: yields the sum of the losses so far (on the device) after each step. A
    plain loop reads the last sum once (the epoch's mean bound is -sum / rows, nats per datapoint)."""
    order = torch.randperm(x.shape[0], generator=generator, device=generator.device).to(x.device)
    total = torch.zeros((), device=x.device)
    for start in range(0, x.shape[0], batch_size):
        batch = x[order[start:start + batch_size]]
        uniforms = torch.rand(batch.shape, generator=generator, device=generator.device).to(x.device)
        total += train_step(vae, optimizer, loss, (uniforms < batch).to(batch.dtype))
        yield total


@torch.no_grad()
def importance_log_likelihood(vae: PlainVAE, x: torch.Tensor, num_samples: int = 1000, batch_size: int = 100,
                              particle_batch_size: int = 100) -> torch.Tensor:
    """log p(x) ≈ logsumexp_k log w_k - log K per datapoint (nats), the guide as proposal; the encoder
    runs once per chunk of ``batch_size`` datapoints, the decoder on ``particle_batch_size`` draws at a time."""
    estimates = []
    for chunk in x.split(batch_size):
        posterior = vae.posterior(chunk)
        weights = torch.cat([log_weights(vae, chunk, min(particle_batch_size, num_samples - first), posterior)
                             for first in range(0, num_samples, particle_batch_size)])
        estimates.append(weights.logsumexp(0) - math.log(num_samples))
    return torch.cat(estimates)
