"""The latent space of AEVB's VAEs (Kingma & Welling 2013, Figs. 4 and 5; Suarez's "A Musing Upon
Variational Autoencoders"; the KTH reproduction's Figs. 3, 5 and 6)::

    ppl-vae reproduce latent-space --out figures

Trains VAEs with N_z ∈ {2, 5, 10, 20} on grayscale MNIST (AEVB's 500 tanh hidden units, Bernoulli
decoder, Adam 1e-3 as in the KTH reproduction) and on Frey Face (the shipped ``frey`` config: 200
tanh hidden units, Gaussian decoder with a learned σ). For N_z = 2 it draws the decoded manifold
E[x|z] on two grids of z:

- AEVB's grid: evenly spaced probabilities pushed through the inverse normal CDF, so that every cell
  holds the same prior mass (:func:`ppl_vae.plots.manifold_grid`);
- Suarez's grid: evenly spaced z on [-5, 5]. Equal steps in z show the space as the decoder sees it,
  out to where the prior has almost no mass, so the regions the model leaves unused (his distorted
  lower half) show as well; the inverse-CDF grid crowds its cells near the origin and never reaches
  past the prior's 5 % and 95 % quantiles (|z| <= 1.64).

Writes ``latent_manifold_mnist.png``, ``latent_manifold_frey.png``, ``latent_scatter_mnist.png`` (test
posterior means by digit, the two grids' extents drawn over them) and ``latent_reconstructions.png``
(the same test images reconstructed by every N_z).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ppl_vae.config import Config
from ppl_vae.errors import ConfigError
from ppl_vae.experiments.common import shipped_config
from ppl_vae.experiments.runner import EXPERIMENTS, Output, Reference, full, quick
from ppl_vae.plots import (MANIFOLD_QUANTILES, MANIFOLD_WIDTH, draw_manifold, image_axes, image_grid, manifold_grid,
                           new_figure, plot_latent_scatter, posterior_means)
from ppl_vae.runs import Run

LINEAR_LIMIT = 5.0  # Suarez's linear grid spans [-5, 5] along each latent axis
RECONSTRUCTED_IMAGES = 10  # test images in each block of the reconstruction figure
UNITS = ("elbo, reconstruction, kl: nats per datapoint, log-probability sign (higher is better; elbo = "
         "reconstruction - kl, kl >= 0; Frey's Gaussian likelihood is a density, so its ELBO is positive); "
         "grid values and codes: latent units (prior standard deviations); shares: fractions of the test set")


@EXPERIMENTS.register("latent-space")
@quick(mnist_dataset="digits", mnist_epochs=1, frey_epochs=1, steps=8)
@full(seconds=729, references=[  # measured with the 2 cores shared (load average 6 to 8)
    Reference("mnist.nz2.test_elbo", low=-163.0, high=-152.0, source="AEVB Fig. 2 shows curves, no table"),
    Reference("mnist.nz20.test_elbo", low=-114.0, high=-105.0, source="AEVB Fig. 2 shows curves, no table"),
    Reference("frey.nz2.test_elbo", low=400.0, high=600.0, source="AEVB Fig. 2 shows curves, no table"),
    Reference("mnist.codes.share_inside_inverse_cdf_grid", low=0.4, high=0.8),
    Reference("mnist.codes.share_inside_linear_grid", low=0.97, high=1.0),
])
def latent_space(
    output: Output, *, mnist_dataset: str = "mnist", mnist_epochs: int = 6, frey_epochs: int = 50,
    latent_dims: tuple[int, ...] = (2, 5, 10, 20), steps: int = 20,
) -> dict[str, Any]:
    """A 2-D VAE's manifold on AEVB's inverse-CDF grid and on Suarez's linear [-5, 5] grid (AEVB Fig. 4, Suarez Fig. 3).

    Trains one VAE per N_z in ``latent_dims`` (2 must be among them) on ``mnist_dataset`` for
    ``mnist_epochs`` and on Frey Face for ``frey_epochs``; draws the N_z = 2 manifolds on both
    ``steps`` x ``steps`` grids, the MNIST test codes by digit, and the reconstructions of the same
    test images by every N_z. Returns each model's train and test ELBO and its terms, the grids, and
    the share of N_z = 2 test codes (posterior means) that falls inside each grid's square.
    """
    if 2 not in latent_dims:
        raise ConfigError(f"latent-space.latent_dims: must include 2 (the manifolds and the scatter need a 2-D "
                          f"latent space), got {list(latent_dims)}; add 2.")
    grids = {"inverse_cdf": manifold_grid(steps)[0], "linear": linear_grid(steps)}
    budgets = {"mnist": mnist_epochs, "frey": frey_epochs}
    configs = {"mnist": lambda n: mnist_config(output, mnist_dataset, n, mnist_epochs),
               "frey": lambda n: frey_config(output, n, frey_epochs)}
    runs = {name: {n: output.fit(config(n), f"{name}-nz{n}") for n in latent_dims} for name, config in configs.items()}
    results: dict[str, Any] = {
        "units": UNITS,
        "budget": {name: {"epochs": epochs, "examples_seen": epochs * runs[name][2].dataset.train.shape[0]}
                   for name, epochs in budgets.items()},
        "grids": {name: values.tolist() for name, values in grids.items()},
    }
    for name, by_dim in runs.items():
        codes = posterior_means(by_dim[2].vae, by_dim[2].dataset.test).cpu()
        results[name] = {f"nz{n}": summary(run) for n, run in by_dim.items()}
        results[name]["codes"] = code_summary(codes, grids)
        output.save_figure(plot_manifolds(by_dim[2], grids), f"latent_manifold_{name}.png")
    output.save_figure(plot_scatter(runs["mnist"][2], grids), "latent_scatter_mnist.png")
    output.save_figure(plot_reconstructions(runs), "latent_reconstructions.png")
    return results


def mnist_config(output: Output, dataset: str, latent_dim: int, epochs: int) -> Config:
    """The shipped ``mnist-aevb`` config (500 tanh hidden units, Bernoulli decoder) with Adam 1e-3 and
    the analytic KL, as the KTH reproduction trains it, on ``dataset`` with ``latent_dim`` latents."""
    return shipped_config("mnist-aevb", output, [
        f"data.name={dataset}", f"model.latent_dim={latent_dim}", "optim.name=adam", "optim.lr=0.001",
        "objective.name=meanfield", *train_overrides(epochs),
    ])


def frey_config(output: Output, latent_dim: int, epochs: int) -> Config:
    """The shipped ``frey`` config (AEVB's Frey Face VAE) with ``latent_dim`` latents."""
    return shipped_config("frey", output, [f"model.latent_dim={latent_dim}", *train_overrides(epochs)])


def train_overrides(epochs: int) -> list[str]:
    """Train for ``epochs``, evaluating at the end and checkpointing every epoch (a rerun resumes)."""
    return [f"train.epochs={epochs}", f"train.eval_every={epochs}", "train.checkpoint_every=1"]


def linear_grid(steps: int, limit: float = LINEAR_LIMIT) -> torch.Tensor:
    """``steps`` evenly spaced values from -``limit`` to ``limit`` (Suarez's manifold grid)."""
    return torch.linspace(-limit, limit, steps)


def share_inside(codes: torch.Tensor, values: torch.Tensor) -> float:
    """The fraction of ``codes`` (n, 2) inside the square [min(values), max(values)]² that a grid spans."""
    inside = (codes >= values.min()) & (codes <= values.max())
    return inside.all(dim=1).float().mean().item()


def summary(run: Run) -> dict[str, float]:
    """A run's train and test ELBO, test terms and active units, in nats per datapoint."""
    metrics = run.metrics
    return {"train_elbo": metrics["train_elbo"], "test_elbo": metrics["test_elbo"],
            "test_reconstruction": metrics["test_reconstruction"], "test_kl": metrics["test_kl"],
            "test_active_units": metrics["test_active_units"]}


def code_summary(codes: torch.Tensor, grids: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Where the 2-D test codes lie: their quantiles per axis and the share inside each grid's square."""
    low, high = torch.quantile(codes, torch.tensor(MANIFOLD_QUANTILES), dim=0).tolist()
    return {"quantile_low": low, "quantile_high": high, "quantile_levels": list(MANIFOLD_QUANTILES),
            **{f"share_inside_{name}_grid": share_inside(codes, values) for name, values in grids.items()}}


GRID_TITLES = {
    "inverse_cdf": "AEVB grid: z = Φ⁻¹(p), p evenly spaced in [{:.2f}, {:.2f}]".format(*MANIFOLD_QUANTILES),
    "linear": f"Suarez grid: z evenly spaced in [-{LINEAR_LIMIT:g}, {LINEAR_LIMIT:g}]",
}


def plot_manifolds(run: Run, grids: dict[str, torch.Tensor]) -> Figure:
    """The 2-D VAE's decoded manifold on each grid, side by side."""
    height, width = run.dataset.image_shape
    fig = new_figure(len(grids) * MANIFOLD_WIDTH, MANIFOLD_WIDTH * height / width + 0.8)
    for ax, (name, values) in zip(fig.subplots(1, len(grids)), grids.items()):
        draw_manifold(ax, run.vae, run.dataset.image_shape, values, values, GRID_TITLES[name])
    fig.suptitle(f"{run.dataset.name}: decoded manifold E[x|z] of the N_z = 2 VAE")
    return fig


def plot_scatter(run: Run, grids: dict[str, torch.Tensor]) -> Figure:
    """The test posterior means by label (:func:`ppl_vae.plots.plot_latent_scatter`) with the square
    each manifold grid spans drawn over them."""
    test_x, test_labels = run.dataset.split("test")
    fig = plot_latent_scatter(run.vae, test_x, test_labels)
    ax = fig.axes[0]
    for (name, values), color in zip(grids.items(), ("black", "tab:red")):
        low, high = values.min().item(), values.max().item()
        ax.add_patch(Rectangle((low, low), high - low, high - low, fill=False, edgecolor=color, linestyle="--",
                               label=GRID_TITLES[name].split(":")[0] + f" ({low:.2f} to {high:.2f})"))
    ax.autoscale_view()
    ax.set(xlabel="z[0] (latent units)", ylabel="z[1] (latent units)")
    ax.legend(loc="lower left", fontsize="small")
    return fig


@torch.no_grad()
def plot_reconstructions(runs: dict[str, dict[int, Run]]) -> Figure:
    """For each dataset: test images evenly spaced through its test set (top row) and their
    reconstructions E[x|z = posterior mean] by the VAE of every N_z, one row each."""
    fig = new_figure(RECONSTRUCTED_IMAGES * 0.75, 1.0 + sum(len(by_dim) + 1 for by_dim in runs.values()) * 0.85)
    for ax, by_dim in zip(fig.subplots(len(runs), 1), runs.values()):
        first = next(iter(by_dim.values()))
        test_x = first.dataset.test
        x = test_x[torch.linspace(0, test_x.shape[0] - 1, RECONSTRUCTED_IMAGES).long()]
        rows = [x, *(run.vae.reconstruct(x) for run in by_dim.values())]
        image_axes(ax, image_grid(torch.cat(rows), first.dataset.image_shape, RECONSTRUCTED_IMAGES),
                   f"{first.dataset.name}: test images (evenly spaced through the test set) and reconstructions")
        height = first.dataset.image_shape[0]
        ax.set_yticks(np.arange(len(rows)) * (height + 1) + (height - 1) / 2,
                      ["data", *(f"N_z = {n}" for n in by_dim)])
    return fig
