"""Image completion with the conditional VAE (Doersch 2016, section 7; Pyro's CVAE example): complete
the left half of a digit from its right half, and the whole digit from its bottom-left quadrant.

For each task the baseline network and the CVAE (:mod:`ppl_vae.models.cvae`) are trained with the
shared loop (:func:`train_conditional`), then compared by their test log p(y | x) (nats per image,
summed over the hidden pixels; the CVAE's by importance sampling) and a figure of several sampled
completions per input, ``cvae_<task>.png``::

    ppl-vae reproduce cvae-completions --set epochs=3
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterator, Sequence

import pyro
import torch
from matplotlib.figure import Figure
from pyro.infer import SVI

from ppl_vae.build import build_optimizer
from ppl_vae.config import OptimConfig
from ppl_vae.data import Dataset, batches, load_dataset, sample_binary
from ppl_vae.evaluation import log_likelihood
from ppl_vae.experiments.runner import EXPERIMENTS, Output, Reference, full, quick
from ppl_vae.models.cvae import CVAE, TASKS, Baseline, Task, observed_mask, split_pixels
from ppl_vae.objectives import OBJECTIVES
from ppl_vae.objectives.schedules import Constant
from ppl_vae.plots import image_axes, image_grid
from ppl_vae.training.callbacks import NonFiniteGuard, ProgressBar
from ppl_vae.training.loop import TrainingState, train

UNOBSERVED_GRAY = 0.35  # the hidden pixels in the input column
TEST_BINARIZATION_SEED = 0  # binarizes a grayscale test set once, as "mnist-binarized" does
COMPLETED_DIGITS = 8  # test digits in each figure
COMPLETIONS_PER_DIGIT = 6


@EXPERIMENTS.register("cvae-completions")
@quick(dataset="digits", epochs=1, importance_samples=10)
@full(seconds=205, references=[
    Reference("right_half.cvae_log_likelihood", -46.5, -41.0), Reference("right_half.baseline_log_likelihood", -60.0, -54.0),
    Reference("quadrant.cvae_log_likelihood", -77.5, -70.5), Reference("quadrant.baseline_log_likelihood", -112.0, -105.0),
])
def cvae_completions(
    output: Output, *, dataset: str = "mnist-binarized", epochs: int = 3, importance_samples: int = 100,
    tasks: tuple[Task, ...] = TASKS,
) -> dict[str, Any]:
    """A CVAE's sampled completions beat a deterministic network's mean guess in log p(y|x) (Doersch 2016, §7).

    For each task of ``tasks`` (``right_half``, ``quadrant``), trains the baseline and then the CVAE
    for ``epochs`` each on binary pixels of ``dataset`` (a grayscale dataset such as ``digits`` is
    binarized like ``mnist-binarized``: :func:`binary_pixels`), draws ``cvae_<task>.png``
    (:func:`plot_completions`) and returns the test log p(y|x) of the baseline (exact: it has no
    latent), the CVAE's ELBO and its log p(y|x) with ``importance_samples`` samples.
    """
    data = binary_pixels(load_dataset(dataset, device=output.device))
    results: dict[str, Any] = {"units": "nats per image, summed over the hidden pixels (log-probabilities)",
                               "importance_samples": importance_samples}
    for task in tasks:
        mask = observed_mask(task, data.image_shape).to(output.device)
        baseline = train_baseline(data, mask, epochs, progress=output.progress)
        cvae = train_cvae(data, mask, baseline, epochs, progress=output.progress)
        x, y = split_pixels(data.test, mask)
        pyro.set_rng_seed(0)
        results[task] = {
            "hidden_pixels": int((~mask).sum()),
            "baseline_log_likelihood": mean_log_likelihood(baseline, x, y, num_samples=1),  # exact: no latent
            "cvae_elbo": mean_log_likelihood(cvae, x, y, num_samples=1),
            "cvae_log_likelihood": mean_log_likelihood(cvae, x, y, num_samples=importance_samples),
        }
        figure = plot_completions(cvae, baseline, data.test[:COMPLETED_DIGITS], mask, data.image_shape, task)
        output.save_figure(figure, f"cvae_{task}.png")
    return results


def mean_log_likelihood(module: Baseline | CVAE, x: torch.Tensor, y: torch.Tensor, num_samples: int) -> float:
    """log p(y | x) in nats per image, averaged over the images, importance-sampled with ``num_samples``
    draws from the guide (:func:`ppl_vae.evaluation.log_likelihood`; one draw is the ELBO)."""
    return log_likelihood(module.model, module.guide, x, y, num_samples=num_samples).mean().item()


def binary_pixels(dataset: Dataset) -> Dataset:
    """``dataset`` with binary pixels for the Bernoulli likelihoods: unchanged if it already has them;
    else binarized as ``mnist-binarized`` is, the training set resampled on every batch (dynamic
    binarization) and the test set drawn once with a fixed seed."""
    if dataset.binary:
        return dataset
    test = sample_binary(dataset.test, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    return replace(dataset, test=test, binary=True, dynamic_binarization=True)


def train_conditional(
    module: Baseline | CVAE, dataset: Dataset, mask: torch.Tensor, epochs: int, *, lr: float = 1e-3,
    batch_size: int = 128, seed: int = 0, progress: bool = True,
) -> TrainingState:
    """Maximize the ELBO of ``module.model`` and ``module.guide`` (Pyro's ``Trace_ELBO``, Adam) on
    batches of ``dataset.train`` split by ``mask`` into (observed x, hidden y), for ``epochs``, with
    the shared training loop (β = 1), after clearing Pyro's param store (the module's networks are
    registered afresh). Returns the loop's final state (``history``)."""
    pyro.clear_param_store()
    objective = OBJECTIVES.get("elbo")(num_particles=1)
    svi = SVI(module.model, module.guide, build_optimizer(OptimConfig(lr=lr)), loss=objective,
              loss_and_grads=objective.loss_and_grads)

    def pixel_pairs(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (split_pixels(images, mask)
                for images in batches(dataset.train, batch_size, generator, binarize=dataset.dynamic_binarization))

    steps_per_epoch = math.ceil(dataset.train.shape[0] / batch_size)
    callbacks = [NonFiniteGuard(module),
                 ProgressBar(epochs * steps_per_epoch, objective.bound, objective.status, progress, steps_per_epoch)]
    state = TrainingState(generator=torch.Generator().manual_seed(seed))
    return train(svi, objective, Constant(value=1.0), pixel_pairs, epochs, state, callbacks)


def train_baseline(dataset: Dataset, mask: torch.Tensor, epochs: int, *, hidden_sizes: Sequence[int] = (500, 500),
                   seed: int = 0, **training: Any) -> Baseline:
    """The baseline network (ReLU MLP with ``hidden_sizes``) fitted by maximum likelihood of the hidden
    pixels; ``training``: :func:`train_conditional`'s options."""
    pyro.set_rng_seed(seed)
    baseline = Baseline(int(mask.sum()), int((~mask).sum()), list(hidden_sizes)).to(dataset.train.device)
    train_conditional(baseline, dataset, mask, epochs, seed=seed, **training)
    return baseline


def train_cvae(dataset: Dataset, mask: torch.Tensor, baseline: Baseline, epochs: int, *, latent_dim: int = 20,
               hidden_sizes: Sequence[int] = (500, 500), seed: int = 0, **training: Any) -> CVAE:
    """The CVAE (ReLU MLPs with ``hidden_sizes``, ``latent_dim`` latents) on top of the frozen
    ``baseline``, fitted by maximizing its ELBO; ``training``: :func:`train_conditional`'s options."""
    pyro.set_rng_seed(seed)
    cvae = CVAE(baseline, int(mask.sum()), int((~mask).sum()), latent_dim, list(hidden_sizes)).to(dataset.train.device)
    train_conditional(cvae, dataset, mask, epochs, seed=seed, **training)
    return cvae


def assemble(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Full images from observed pixels ``x`` and hidden pixels ``y`` (leading dimensions kept)."""
    images = torch.empty(*y.shape[:-1], mask.numel(), device=y.device)
    images[..., mask] = x.expand(*y.shape[:-1], x.shape[-1])
    images[..., ~mask] = y
    return images


@torch.no_grad()
def plot_completions(cvae: CVAE, baseline: Baseline, images: torch.Tensor, mask: torch.Tensor,
                     image_shape: tuple[int, int], task: str, num_samples: int = COMPLETIONS_PER_DIGIT) -> Figure:
    """One row per test digit: the truth, the input (hidden pixels gray), the baseline's prediction
    and ``num_samples`` CVAE completions E[y | z, x], z ~ p(z | x)."""
    x, y = split_pixels(images, mask)
    columns = [images, assemble(x, torch.full_like(y, UNOBSERVED_GRAY), mask),
               assemble(x, torch.sigmoid(baseline(x)), mask), *assemble(x, cvae.complete(x, num_samples), mask)]
    tiles = torch.stack(columns, dim=1).reshape(-1, mask.numel())
    fig = Figure(figsize=(0.8 * len(columns), 0.8 * images.shape[0]), layout="constrained")
    image_axes(fig.subplots(), image_grid(tiles, image_shape, columns=len(columns)),
               f"{task}: truth | input | baseline | {num_samples} CVAE completions")
    return fig
