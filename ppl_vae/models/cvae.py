"""Conditional VAE for image completion (Sohn et al. 2015; Doersch 2016, sections 5 and 7; Pyro's
CVAE example): given the observed pixels x of an image, model the hidden pixels y with

    p(y | x) = ∫ p(y | z, x) p(z | x) dz,    guide q(z | x, y).

A deterministic baseline network predicts y from x (its mean prediction blurs the possible
completions together); the CVAE's prior network starts from the baseline's prediction, as in
Pyro's example, and each draw of z gives one sharp completion. Pixels are binary (Bernoulli).

Both are Pyro model/guide pairs over the data arguments ``(x, y)``, trained like the VAE (by
:func:`ppl_vae.training.loop.train`, with ``kl_weight`` β on the latent site in model and guide).
The baseline has no latent: its guide is empty, so its ELBO is exactly log p(y | x) and SVI on it is
maximum likelihood.

log p(y | x) is importance-sampled by the generic evaluation, with the guide as proposal:
``ppl_vae.evaluation.log_likelihood(cvae.model, cvae.guide, x, y, num_samples=K)``, that is
log (1/K) Σ_k p(y | z_k, x) p(z_k | x) / q(z_k | x, y), z_k ~ q(z | x, y): a lower bound in expectation
that tightens as K grows; K = 1 is the ELBO. For the baseline, any K gives the exact log p(y | x).
"""

from __future__ import annotations

from typing import Literal, get_args

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.errors import ConfigError
from ppl_vae.models.vae import kl_weight_scale
from ppl_vae.parts.nets import mlp

Task = Literal["right_half", "quadrant"]  # which pixels are observed: see observed_mask
TASKS: tuple[str, ...] = get_args(Task)


def observed_mask(task: str, image_shape: tuple[int, int]) -> torch.Tensor:
    """Which pixels of a flattened image are observed: ``right_half`` (complete the left half from
    the right one) or ``quadrant`` (Pyro's one-quadrant task: complete the image from its
    bottom-left quadrant)."""
    height, width = image_shape
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    if task == "right_half":
        mask = columns >= width // 2
    elif task == "quadrant":
        mask = (rows >= height // 2) & (columns < width // 2)
    else:
        raise ConfigError(f"task: unknown completion task {task!r}; choose one of: {', '.join(TASKS)}.")
    return mask.flatten()


class Baseline(nn.Module):
    """The deterministic network of Pyro's CVAE example: observed pixels -> logits of the hidden ones."""

    def __init__(self, num_observed: int, num_hidden: int, hidden_sizes: list[int]) -> None:
        super().__init__()
        self.net = mlp(num_observed, num_hidden, hidden_sizes=hidden_sizes, activation="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, kl_weight: float = 1.0) -> None:
        """p(y | x): independent Bernoullis at the predicted probabilities. ``kl_weight`` is accepted
        like every model's (the training loop passes it) and has nothing to weigh: there is no latent."""
        pyro.module("baseline", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Bernoulli(logits=self(x)).to_event(1), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, kl_weight: float = 1.0) -> None:
        """No latent variable, nothing to infer: the ELBO is log p(y | x) itself."""


class CVAE(nn.Module):
    """p(z | x) p(y | z, x) with guide q(z | x, y); diagonal Normals for z, Bernoullis for y.

    The baseline is used frozen, as an input of the prior network: no gradient flows into it, and the
    CVAE's model does not register it with Pyro, so training the CVAE leaves it as it is."""

    def __init__(self, baseline: Baseline, num_observed: int, num_hidden: int, latent_dim: int = 20,
                 hidden_sizes: list[int] = (500, 500)) -> None:
        super().__init__()
        self.baseline = baseline
        self.latent_dim = latent_dim
        inputs = num_observed + num_hidden
        self.prior_net = mlp(inputs, 2 * latent_dim, hidden_sizes=hidden_sizes, activation="relu")
        self.recognition_net = mlp(inputs, 2 * latent_dim, hidden_sizes=hidden_sizes, activation="relu")
        self.generation_net = mlp(latent_dim + num_observed, num_hidden, hidden_sizes=hidden_sizes, activation="relu")

    def _normal(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc, log_scale = params.split(self.latent_dim, dim=-1)
        return dist.Normal(loc, log_scale.exp()).to_event(1)

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """p(z | x), from the observed pixels and the baseline's prediction of the hidden ones."""
        with torch.no_grad():
            y_hat = torch.sigmoid(self.baseline(x))
        return self._normal(self.prior_net(torch.cat([x, y_hat], dim=-1)))

    def recognition(self, x: torch.Tensor, y: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x, y)."""
        return self._normal(self.recognition_net(torch.cat([x, y], dim=-1)))

    def likelihood(self, z: torch.Tensor, x: torch.Tensor) -> dist.TorchDistribution:
        """p(y | z, x); ``z`` may carry leading sample dimensions."""
        x = x.expand(*z.shape[:-1], x.shape[-1])
        return dist.Bernoulli(logits=self.generation_net(torch.cat([z, x], dim=-1))).to_event(1)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, kl_weight: float = 1.0) -> None:
        """p(z | x) p(y | z, x), with the latent site weighted by β = ``kl_weight``."""
        pyro.module("prior_net", self.prior_net)
        pyro.module("generation_net", self.generation_net)
        with pyro.plate("data", x.shape[0]):
            with kl_weight_scale(kl_weight):
                z = pyro.sample("z", self.prior(x))
            pyro.sample("y", self.likelihood(z, x), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, kl_weight: float = 1.0) -> None:
        """q(z | x, y) (the prior p(z | x) when y is not given); the same β weight as in the model."""
        pyro.module("recognition_net", self.recognition_net)
        with pyro.plate("data", x.shape[0]):
            with kl_weight_scale(kl_weight):
                pyro.sample("z", self.recognition(x, y) if y is not None else self.prior(x))

    @torch.no_grad()
    def complete(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """E[y | z, x] for ``num_samples`` draws z ~ p(z | x): shape (num_samples, batch, num_hidden)."""
        z = self.prior(x).sample((num_samples,))
        return self.likelihood(z, x).mean


def split_pixels(images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(observed pixels x, hidden pixels y) of flattened images."""
    return images[:, mask], images[:, ~mask]

