"""Posterior collapse and KL annealing, after the write-up "Variational Autoencoder"
(``vae-kl-annealing-posterior-collapse.txt``) and Bowman et al. (2016, §3.1)::

    ppl-vae reproduce collapse-and-annealing --out figures

Four models of grayscale MNIST with the write-up's squared-error loss, here a Gaussian decoder of
fixed σ (−log p(x|z) = ||x − g(z)||² / (2σ²) + const, so σ sets how much reconstruction weighs
against the KL): the autoencoder (β = 0), the VAE (β = 1), the VAE with β annealed from 0 to 1 on
Bowman et al.'s logistic curve, and a VAE whose decoder has low capacity (one layer: the mean is
sigmoid(W z + b)). All four share the same convolutional encoder; the first three also share its
convolutional decoder. Each is trained in stages and measured after each stage.

Writes ``collapse_kl.png`` (KL per epoch, β, active units, KL per latent dimension),
``collapse_latent_spread.png`` (the range of the posterior means and standard deviations per digit
over training) and ``collapse_images.png`` (reconstructions and samples over training). KLs and
ELBO terms are nats per datapoint (the ELBO a log-probability: higher is better); posterior means
and standard deviations are in latent units; squared errors are in squared pixel units ([0, 1]
pixels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullFormatter
from torch.distributions import Normal

from ppl_vae.config import Config, from_dict
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation import ACTIVE_UNIT_THRESHOLD
from ppl_vae.experiments.common import squared_error
from ppl_vae.experiments.runner import EXPERIMENTS, Output, Reference, full, quick
from ppl_vae.plots import LABEL_CMAP, MARKER_SIZE, image_axes, image_grid, new_figure
from ppl_vae.runs import Run

CONV = {"channels": [16, 32], "hidden": 128}  # the convolutional nets' sizes (small, for a CPU budget)
BATCH_SIZE = 64  # the write-up's batch size
LEARNING_RATE = 1e-3
SHOWN_PER_ROW = 10  # test digits shown per image cell (one of each label where there are ten)
MODEL_LABELS = {
    "autoencoder": "autoencoder (β = 0)",
    "vae": "VAE (β = 1)",
    "annealed": "KL-annealed VAE (β: 0 → 1)",
    "low_capacity": "low-capacity decoder (β = 1)",
}
PRIOR_LINE = {"color": "black", "linewidth": 0.8, "linestyle": "--"}  # the prior's mean and standard deviation
MODEL_STYLES = {  # lines of each model; the VAE's and the low-capacity decoder's β lines lie on each other
    "autoencoder": {"color": "tab:gray", "marker": "o"},
    "vae": {"color": "tab:red", "marker": "s"},
    "annealed": {"color": "tab:blue", "marker": "^"},
    "low_capacity": {"color": "tab:green", "marker": "D", "linestyle": "--"},
}
UNITS = ("kl, reconstruction, elbo: nats per datapoint (elbo = reconstruction - kl, a log-probability: higher is "
         "better); collapsed_elbo: the test ELBO of a VAE that ignores z (KL 0, decoder mean = the mean training "
         "image), nats per datapoint; history_kl: the mean over each epoch's training batches; stages: test-set numbers after that "
         "many epochs; mean_range, std_range: the lowest and highest posterior mean E_q[z_u|x] and standard "
         "deviation of q(z_u|x) over the evaluated test digits of each label and over every latent dimension u "
         "(latent units); active_units: dimensions with Cov_x(E_q[z_u|x]) > 0.01 on the whole test set "
         "(Burda et al.); mse: E_q ||x - E[x|z]||² / D on the evaluated test digits (squared pixel units, pixels "
         "in [0, 1]); decoder_sigma: pixel units")


@EXPERIMENTS.register("collapse-and-annealing")
@quick(dataset="digits", train_size=500, stages=(1, 2), anneal_epochs=2, eval_size=200)
@full(seconds=392, references=[
    Reference("models.vae.stages.1.kl", low=0.0, high=0.5, published=0.0,
              source="write-up, 'Problem with the learned representations': the VAE's KL loss becomes 0"),
    Reference("models.vae.stages.1.active_units", low=0, high=2),
    Reference("models.vae.stages.1.elbo", low=-1050.6, high=-1049.9),
    Reference("models.annealed.stages.1.kl", low=7.0, high=30.0),
    Reference("models.annealed.stages.1.active_units", low=8, high=10),
    Reference("models.low_capacity.stages.1.kl", low=2.5, high=10.0),
    Reference("models.vae.final.kl", low=0.7, high=2.5),
    Reference("models.annealed.final.kl", low=1.3, high=3.0),
    Reference("models.annealed.final.elbo", low=-1050.3, high=-1048.5),
    Reference("models.low_capacity.final.elbo", low=-1054.0, high=-1050.5),
    Reference("models.autoencoder.final.mse", low=0.010, high=0.026, published=0.004,
              source="write-up, 'AE vs VAE': the autoencoder's loss, 0.004 (MSE)"),
])
def collapse_and_annealing(
    output: Output, *, dataset: str = "mnist", train_size: int = 10000, stages: tuple[int, ...] = (1, 2, 4, 8, 15),
    anneal_epochs: int = 10, decoder_sigma: float = 1.5, latent_dim: int = 10, eval_size: int = 1000,
) -> dict[str, Any]:
    """A VAE whose KL term outweighs its reconstruction collapses; KL annealing (Bowman et al. 2016) avoids it.

    Trains the autoencoder, the VAE, the KL-annealed VAE (β on a logistic curve from 0 to 1 over
    ``anneal_epochs``, centred at half of them) and the low-capacity decoder on the first
    ``train_size`` training images of ``dataset`` (a labelled one: ``mnist`` or ``digits``), with a
    Gaussian decoder of standard deviation ``decoder_sigma`` (pixel units), ``latent_dim`` latent
    dimensions, Adam (1e-3) and batches of 64, stopping after each number of epochs in ``stages``
    (increasing) to measure the test set: the ELBO terms, active units, KL per dimension, and on
    the first ``eval_size`` test images the range of the posterior means and standard deviations
    per digit, reconstructions and decoded prior draws. Returns those numbers, each model's KL per
    epoch (its training history) and the budget.
    """
    check_stages(stages)
    runs: dict[str, Run] = {}
    results: dict[str, Any] = {}
    pictures: dict[str, list[dict[str, torch.Tensor]]] = {}
    for key, (decoder, beta) in model_recipes(anneal_epochs).items():
        measured, pictures[key] = {}, []
        config = collapse_config(output, dataset, train_size, latent_dim, decoder_sigma, decoder, beta)
        for epochs, run in zip(stages, output.fit_in_stages(config, f"collapse-{key}", stages)):
            measured[str(epochs)], images = measure_stage(run, eval_size)
            pictures[key].append(images)
        runs[key] = run
        results[key] = {
            "history_kl": [record["train_kl"] for record in run.history],
            "beta": [record["beta"] for record in run.history],
            "stages": measured,
            "final": {**measured[str(stages[-1])], "kl_per_dim": run.metrics["test_kl_per_dim"]},
        }
    data = runs["vae"].dataset
    shown = shown_images(*evaluated_test_set(runs["vae"], eval_size))
    output.save_figure(plot_kl(results, stages), "collapse_kl.png")
    output.save_figure(plot_latent_spread(results, stages), "collapse_latent_spread.png")
    output.save_figure(plot_images(shown, pictures, stages, data.image_shape), "collapse_images.png")
    train_images = data.train.shape[0]
    return {
        "units": UNITS,
        "collapsed_elbo": collapsed_elbo(data.train, data.test, decoder_sigma),
        "budget": {"dataset": dataset, "train_images": train_images, "epochs": stages[-1], "batch_size": BATCH_SIZE,
                   "steps": runs["vae"].metrics["steps"], "images_seen": train_images * stages[-1],
                   "anneal_epochs": anneal_epochs, "decoder_sigma": decoder_sigma, "latent_dim": latent_dim,
                   "evaluated_test_images": min(eval_size, data.test.shape[0])},
        "models": results,
    }


def check_stages(stages: tuple[int, ...]) -> None:
    """Refuse stages that are not positive, strictly increasing epoch counts."""
    if not stages or any(epochs < 1 for epochs in stages) or list(stages) != sorted(set(stages)):
        raise ConfigError(f"stages: expected strictly increasing epoch counts of at least 1, got {list(stages)}; "
                          "write e.g. --set 'stages=[1, 2, 4, 8, 15]'.")


def model_recipes(anneal_epochs: int) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """The decoder and the β schedule of each model, by its key in :data:`MODEL_LABELS`."""
    conv_decoder = {"name": "conv_decoder", **CONV}
    annealing = {"name": "sigmoid", "start": 0.0, "end": 1.0, "duration": anneal_epochs, "by": "epoch"}
    return {
        "autoencoder": (conv_decoder, {"name": "constant", "value": 0.0}),
        "vae": (conv_decoder, {"name": "constant", "value": 1.0}),
        "annealed": (conv_decoder, annealing),
        "low_capacity": ({"name": "mlp", "hidden_sizes": []}, {"name": "constant", "value": 1.0}),
    }


def collapse_config(
    output: Output, dataset: str, train_size: int, latent_dim: int, decoder_sigma: float, decoder: dict[str, Any],
    beta: dict[str, Any],
) -> Config:
    """The convolutional encoder with ``decoder``, a Gaussian likelihood of fixed ``decoder_sigma``
    and the β schedule ``beta``, trained with the mean-field ELBO on the first ``train_size`` images
    of ``dataset``, on ``output``'s device (the epochs are set by each stage)."""
    return from_dict({
        "seed": 0,
        "device": str(output.device),
        "data": {"name": dataset, "batch_size": BATCH_SIZE, "train_size": train_size},
        "model": {"latent_dim": latent_dim, "encoder": {"name": "conv_encoder", **CONV}, "decoder": decoder,
                  "likelihood": {"name": "gaussian", "sigma": decoder_sigma}},
        "objective": {"name": "meanfield", "beta": beta},
        "optim": {"name": "adam", "lr": LEARNING_RATE},
        "train": {"epochs": 1, "progress": output.progress},
    })


def collapsed_elbo(train: torch.Tensor, test: torch.Tensor, sigma: float) -> float:
    """The test ELBO of a collapsed VAE with a Gaussian decoder of fixed ``sigma``: q(z|x) = p(z),
    so KL = 0, and the decoder's best output that ignores z is the mean training image m, giving
    (1/N) Σ_n log N(x_n; m, σ² I) over the ``test`` rows (nats per datapoint). A VAE whose ELBO is
    above it gains more from its code than the code costs in KL."""
    return Normal(train.mean(0), sigma).log_prob(test).sum(1).mean().item()


def label_ranges(values: torch.Tensor, labels: torch.Tensor) -> dict[str, list]:
    """The lowest and highest of ``values`` (datapoints, dimensions) over the datapoints of each
    label and over all dimensions, for each label present in ``labels`` (datapoints,), in increasing
    order: ``{"labels": [...], "low": [...], "high": [...]}``."""
    present = torch.unique(labels)
    rows = [values[labels == label] for label in present]
    return {"labels": present.tolist(), "low": [row.min().item() for row in rows],
            "high": [row.max().item() for row in rows]}


def evaluated_test_set(run: Run, eval_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``eval_size`` test images and their labels; a ConfigError for an unlabelled dataset."""
    x, labels = run.dataset.split("test")
    if labels is None:
        raise ConfigError(f"dataset: {run.dataset.name!r} has no labels, and this experiment shows the latent "
                          "codes per label; choose a labelled dataset (mnist or digits).")
    return x[:eval_size], labels[:eval_size]


def shown_images(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The images drawn in every image cell: the first of each label, in label order, then the next
    images in their order until there are :data:`SHOWN_PER_ROW` (or all of them)."""
    firsts = [int(torch.nonzero(labels == label)[0]) for label in torch.unique(labels)]
    rest = [index for index in range(x.shape[0]) if index not in firsts]
    return x[(firsts + rest)[:SHOWN_PER_ROW]]


@torch.no_grad()
def measure_stage(run: Run, eval_size: int, seed: int = 0) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The numbers of a run at the end of a stage (see :data:`UNITS`), and its reconstructions of
    :func:`shown_images` and decoded draws of N(0, I) (the same draws for every run)."""
    x, labels = evaluated_test_set(run, eval_size)
    vae = run.vae
    posterior = vae.encode(x)
    z = torch.randn(SHOWN_PER_ROW, vae.latent_dim, generator=torch.Generator().manual_seed(seed)).to(x.device)
    numbers = {
        "epoch": run.history[-1]["epoch"],
        "kl": run.metrics["test_kl"],
        "reconstruction": run.metrics["test_reconstruction"],
        "elbo": run.metrics["test_elbo"],
        "active_units": run.metrics["test_active_units"],
        "mse": squared_error(vae, x),
        "mean_range": label_ranges(posterior.mean, labels),
        "std_range": label_ranges(posterior.stddev, labels),
    }
    images = {"reconstructions": vae.reconstruct(shown_images(x, labels)).cpu(),
              "samples": vae.decoded_mean(z).cpu()}
    return numbers, images


def plot_kl(results: dict[str, Any], stages: tuple[int, ...]) -> Figure:
    """Four panels, one line or bar group per model: the KL per epoch (training batches), β per
    epoch, active units after each stage, and the final KL per latent dimension (sorted)."""
    fig = new_figure(11, 7.5)
    kl_ax, beta_ax, units_ax, dims_ax = fig.subplots(2, 2).flat
    for key, result in results.items():
        style = {**MODEL_STYLES[key], "markersize": MARKER_SIZE, "label": MODEL_LABELS[key]}
        epochs = np.arange(1, len(result["history_kl"]) + 1)
        kl_ax.plot(epochs, result["history_kl"], **style)
        beta_ax.plot(epochs, result["beta"], clip_on=False, **style)
        units_ax.plot(stages, [result["stages"][str(epochs)]["active_units"] for epochs in stages], **style)
    kl_ax.set(yscale="log", xlabel="epoch", ylabel="KL(q(z|x) || p(z)) (nats per datapoint)",
              title="KL during training (mean over each epoch's batches)")
    beta_ax.set(ylim=(0, 1.05), xlabel="epoch", ylabel="β (KL weight)", title="β in each epoch")
    latent_dim = len(next(iter(results.values()))["final"]["kl_per_dim"])
    units_ax.set(ylim=(-0.3, latent_dim + 0.3), xlabel="epoch", ylabel=f"active units (of {latent_dim})",
                 title=f"active units: Cov_x(E_q[z_u|x]) > {ACTIVE_UNIT_THRESHOLD} (test set)")
    plot_kl_per_dim(dims_ax, results)
    for ax in (kl_ax, beta_ax, units_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    return fig


def plot_kl_per_dim(ax: Axes, results: dict[str, Any]) -> None:
    """Grouped bars: each model's final test KL per latent dimension, sorted from the largest, on a
    log axis (a collapsed dimension's KL is near 0)."""
    width = 0.8 / len(results)
    floor = 1e-3
    for index, (key, result) in enumerate(results.items()):
        kl = np.sort(np.asarray(result["final"]["kl_per_dim"]))[::-1]
        positions = np.arange(len(kl)) + (index - (len(results) - 1) / 2) * width
        ax.bar(positions, np.maximum(kl, floor), width=width, color=MODEL_STYLES[key]["color"],
               label=MODEL_LABELS[key])
    ax.set(yscale="log", ylim=(floor, None), xlabel="latent dimension, sorted by its KL",
           ylabel="KL(q(z_u|x) || p(z_u)) (nats per datapoint)", title="KL per latent dimension after training (test)")
    ax.legend(fontsize=8)


def plot_latent_spread(results: dict[str, Any], stages: tuple[int, ...]) -> Figure:
    """One row per model: the range (lowest to highest) of the posterior means (left) and standard
    deviations (right, log axis) over the evaluated test digits of each label, one bar per label
    at each stage. The VAEs' rows share their axes; the autoencoder's codes lie far outside them."""
    fig = new_figure(12, 2.6 * len(results) + 0.6)
    axes = fig.subplots(len(results), 2, squeeze=False)
    vae_rows = [row for row, key in zip(axes, results) if key != "autoencoder"]
    for row in vae_rows[1:]:
        for ax, shared in zip(row, vae_rows[0]):
            ax.sharey(shared)
    colors = {}
    for row, (key, result) in zip(axes, results.items()):
        for ax, quantity, title in ((row[0], "mean_range", "posterior means E_q[z_u|x]"),
                                    (row[1], "std_range", "posterior standard deviations of q(z_u|x)")):
            colors.update(draw_ranges(ax, [result["stages"][str(epochs)][quantity] for epochs in stages], stages))
            ax.set(xlabel="epoch", title=f"{MODEL_LABELS[key]}: {title}")
        row[0].axhline(0.0, **PRIOR_LINE)
        row[0].set_ylabel("lowest to highest (latent units)")
        row[1].axhline(1.0, **PRIOR_LINE)
        row[1].set(yscale="log", ylabel="lowest to highest (latent units)")
        row[1].yaxis.set_minor_formatter(NullFormatter())  # labels on the powers of ten only
    handles = [Line2D([], [], color=color, linewidth=3, label=f"digit {label}") for label, color in colors.items()]
    handles.append(Line2D([], [], **PRIOR_LINE, label="prior: mean 0, std 1"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    return fig


def draw_ranges(ax: Axes, ranges: list[dict[str, list]], stages: tuple[int, ...]) -> dict[int, Any]:
    """Vertical bars from low to high of :func:`label_ranges` results, one group per stage at
    positions 0, 1, ... labelled with the stage's epoch, one bar per label side by side; returns the
    colour of each label."""
    cmap = colormaps[LABEL_CMAP]
    colors = {}
    for position, stage_range in enumerate(ranges):
        labels = stage_range["labels"]
        offsets = (np.arange(len(labels)) - (len(labels) - 1) / 2) * 0.7 / max(1, len(labels))
        for label, offset, low, high in zip(labels, offsets, stage_range["low"], stage_range["high"]):
            colors[label] = cmap(label % cmap.N)
            ax.vlines(position + offset, low, high, color=colors[label], linewidth=3)
    ax.set_xticks(np.arange(len(stages)), [str(epochs) for epochs in stages])
    ax.set_xlim(-0.5, len(stages) - 0.5)
    return colors


def plot_images(
    shown: torch.Tensor, pictures: dict[str, list[dict[str, torch.Tensor]]], stages: tuple[int, ...],
    image_shape: tuple[int, int],
) -> Figure:
    """The shown test digits on top; below, one row per model and one column per stage, each cell
    the reconstructions of those digits above decoded draws of N(0, I) (the same draws everywhere)."""
    height, width = image_shape
    cell_width = 3.0
    cell_height = cell_width * (2 * height + 1) / (SHOWN_PER_ROW * (width + 1)) + 0.5  # images and a title
    fig = new_figure(cell_width * len(stages), cell_height * (len(pictures) + 0.5) + 0.6)
    top, *rows = fig.subfigures(len(pictures) + 1, 1, height_ratios=[0.5] + [1.0] * len(pictures))
    first = top.subplots(1, len(stages), squeeze=False)[0]
    image_axes(first[0], image_grid(shown, image_shape, columns=SHOWN_PER_ROW), "test digits")
    for ax in first[1:]:
        ax.set_axis_off()
    fig.suptitle("each cell: reconstructions E[x|z = E_q z] of the test digits (top row) and samples E[x|z], "
                 "z ~ N(0, I)\n(bottom row, the same z in every cell)", fontsize=9)
    for row, (key, stage_pictures) in zip(rows, pictures.items()):
        row.suptitle(MODEL_LABELS[key], fontsize=10, fontweight="bold")
        for ax, epochs, images in zip(row.subplots(1, len(stages), squeeze=False)[0], stages, stage_pictures):
            both = torch.cat([images["reconstructions"], images["samples"]])
            image_axes(ax, image_grid(both, image_shape, columns=SHOWN_PER_ROW), f"epoch {epochs}")
    return fig
