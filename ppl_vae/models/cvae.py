"""Conditional VAE for image completion (Sohn et al. 2015; Doersch 2016, sections 5 and 7; Pyro's
CVAE example): given the observed pixels x of an image, model the hidden pixels y with

    p(y | x) = ∫ p(y | z, x) p(z | x) dz,    guide q(z | x, y).

A deterministic baseline network predicts y from x (its mean prediction blurs the possible
completions together); the CVAE's prior network starts from the baseline's prediction, as in
Pyro's example, and each draw of z gives one sharp completion. Pixels are binary (Bernoulli).

log p(y | x) is importance-sampled by the generic evaluation, with the guide as proposal:
``ppl_vae.evaluation.log_likelihood(cvae.model, cvae.guide, x, y, num_samples=K)``, that is
log (1/K) Σ_k p(y | z_k, x) p(z_k | x) / q(z_k | x, y), z_k ~ q(z | x, y): a lower bound in expectation
that tightens as K grows; K = 1 is the ELBO.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from tqdm.auto import tqdm

from ppl_vae.data import Dataset, batches
from ppl_vae.errors import ConfigError
from ppl_vae.parts.nets import mlp

TASKS = ("right_half", "quadrant")


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

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x) per datapoint under independent Bernoullis at the predicted probabilities."""
        return dist.Bernoulli(logits=self(x)).to_event(1).log_prob(y)


class CVAE(nn.Module):
    """p(z | x) p(y | z, x) with guide q(z | x, y); diagonal Normals for z, Bernoullis for y.

    The baseline is used frozen, as an input of the prior network (not registered with Pyro)."""

    def __init__(self, baseline: Baseline, num_observed: int, num_hidden: int, latent_dim: int = 20,
                 hidden_sizes: list[int] = (500, 500)) -> None:
        super().__init__()
        self.baseline = baseline.requires_grad_(False)
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
        y_hat = torch.sigmoid(self.baseline(x))
        return self._normal(self.prior_net(torch.cat([x, y_hat], dim=-1)))

    def recognition(self, x: torch.Tensor, y: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x, y)."""
        return self._normal(self.recognition_net(torch.cat([x, y], dim=-1)))

    def likelihood(self, z: torch.Tensor, x: torch.Tensor) -> dist.TorchDistribution:
        """p(y | z, x); ``z`` may carry leading sample dimensions."""
        x = x.expand(*z.shape[:-1], x.shape[-1])
        return dist.Bernoulli(logits=self.generation_net(torch.cat([z, x], dim=-1))).to_event(1)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("prior_net", self.prior_net)
        pyro.module("generation_net", self.generation_net)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("y", self.likelihood(z, x), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("recognition_net", self.recognition_net)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.recognition(x, y) if y is not None else self.prior(x))

    @torch.no_grad()
    def complete(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """E[y | z, x] for ``num_samples`` draws z ~ p(z | x): shape (num_samples, batch, num_hidden)."""
        z = self.prior(x).sample((num_samples,))
        return self.likelihood(z, x).mean


def split_pixels(images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(observed pixels x, hidden pixels y) of flattened images."""
    return images[:, mask], images[:, ~mask]


def train_baseline(dataset: Dataset, mask: torch.Tensor, epochs: int, hidden_sizes: list[int] = (500, 500),
                   lr: float = 1e-3, batch_size: int = 128, seed: int = 0, progress: bool = True) -> Baseline:
    """Fit the baseline by minimizing the Bernoulli cross-entropy of the hidden pixels."""
    torch.manual_seed(seed)
    mask = mask.to(dataset.train.device)
    baseline = Baseline(int(mask.sum()), int((~mask).sum()), list(hidden_sizes)).to(dataset.train.device)
    optimizer = torch.optim.Adam(baseline.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="baseline", unit="epoch", disable=not progress):
        for images in batches(dataset.train, batch_size, generator, binarize=dataset.dynamic_binarization):
            x, y = split_pixels(images, mask)
            loss = F.binary_cross_entropy_with_logits(baseline(x), y, reduction="sum") / x.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return baseline


def train_cvae(dataset: Dataset, mask: torch.Tensor, baseline: Baseline, epochs: int, latent_dim: int = 20,
               hidden_sizes: list[int] = (500, 500), lr: float = 1e-3, batch_size: int = 128, seed: int = 0,
               progress: bool = True) -> CVAE:
    """Fit the CVAE with SVI (Trace_ELBO), the baseline frozen."""
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    mask = mask.to(dataset.train.device)
    cvae = CVAE(baseline, int(mask.sum()), int((~mask).sum()), latent_dim, list(hidden_sizes)).to(dataset.train.device)
    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="CVAE", unit="epoch", disable=not progress):
        for images in batches(dataset.train, batch_size, generator, binarize=dataset.dynamic_binarization):
            svi.step(*split_pixels(images, mask))
    return cvae
