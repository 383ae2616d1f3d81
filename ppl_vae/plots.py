"""Figures of a run: reconstructions, prior samples, training curves, KL per latent dimension and,
for a 2-D latent space, the latent scatter and the decoded manifold.

Every function builds a :class:`matplotlib.figure.Figure` with matplotlib's object-oriented API,
saves it as a PNG when given a ``path`` and returns it. Nothing here imports ``pyplot`` or picks a
backend, so importing this module leaves the process's matplotlib state alone (a script keeps its
backend, a notebook its inline figures), and a figure is freed like any other object once unused.

In Jupyter, run ``%matplotlib inline`` once, at the top of the notebook; then a figure returned as
the last expression of a cell (or passed to ``display``) is drawn inline::

    %matplotlib inline
    ...
    plot_samples(run.vae, run.dataset.image_shape)

The magic is what registers IPython's PNG formatter for ``Figure``: a ``Figure`` has no
``_repr_png_`` of its own, and the kernel's inline backend registers the formatter only once
``pyplot`` is imported, which this module never does. Without it a cell shows only the text
``<Figure size ... with N Axes>``.

The shared style (:data:`DPI`, :data:`IMAGE_CMAP`, the sizes) and the helpers :func:`new_figure`,
:func:`save_figure` and :func:`image_axes` are for experiment figures too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from torch.distributions import Normal

from ppl_vae.models.vae import VAE


DPI = 100  # of saved PNGs
IMAGE_CMAP = "gray"  # images in [0, 1]: 0 black, 1 white
LABEL_CMAP = "tab10"  # class labels
PANEL_SIZE = (4.0, 3.2)  # inches per panel of curves (width, height)
PANELS_PER_ROW = 4  # training-curve panels wrap after this many
IMAGE_GRID_WIDTH = 6.0  # inches across a square grid of images (samples)
MANIFOLD_WIDTH = 7.0  # inches across the decoded manifold
MANIFOLD_QUANTILES = (0.05, 0.95)  # the manifold's grid spans these quantiles of the prior or of the codes
IMAGE_COLUMN_WIDTH = 1.0  # inches per column of a two-row image strip (reconstructions)
MARKER_SIZE = 4  # points; every curve has markers, so a one-epoch run still shows

UNITS = "nats/datapoint"
TERM_LABELS = {  # axis labels of the terms every objective reports; objectives label their others
    "elbo": f"ELBO ({UNITS})",
    "reconstruction": f"E_q log p(x|z) ({UNITS})",
    "kl": f"KL(q||p) ({UNITS})",
}
BETA_LABEL = "β (KL weight)"


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches with constrained layout (labels and colorbars
    fit without a ``tight_layout`` call)."""
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at the shared resolution, cropped to what is drawn; returns the path."""
    path = Path(path)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def image_axes(ax: Axes, grid: np.ndarray, title: str) -> None:
    """Draw a grid of images with values in [0, 1] (see :func:`image_grid`) in gray, pixel for pixel,
    with a title and no ticks or frame."""
    ax.imshow(grid, cmap=IMAGE_CMAP, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[:].set_visible(False)


def image_grid(images: torch.Tensor, image_shape: tuple[int, int], columns: int, gap: int = 1) -> np.ndarray:
    """Tile flattened images (n, h*w) row by row into one array, with ``gap`` white pixels between
    tiles (digits that fill their frame would otherwise run into each other)."""
    height, width = image_shape
    rows = -(-images.shape[0] // columns)
    tiles = torch.ones(rows * columns, height + gap, width + gap)
    tiles[: images.shape[0], :height, :width] = images.detach().cpu().reshape(-1, height, width)
    grid = tiles.reshape(rows, columns, height + gap, width + gap).permute(0, 2, 1, 3)
    return grid.reshape(rows * (height + gap), columns * (width + gap))[:-gap or None, :-gap or None].numpy()


def _saved(fig: Figure, path: str | Path | None) -> Figure:
    """``fig``, written to ``path`` first when one is given."""
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_reconstructions(
    vae: VAE, x: torch.Tensor, image_shape: tuple[int, int], path: str | Path | None = None, count: int = 10
) -> Figure:
    """Inputs (top row) above their reconstructions E[x|z = posterior mean] (bottom row)."""
    x = x[:count]
    grid = image_grid(torch.cat([x, vae.reconstruct(x)]), image_shape, columns=x.shape[0])
    fig = new_figure(IMAGE_COLUMN_WIDTH * x.shape[0], 2.4 * IMAGE_COLUMN_WIDTH)
    image_axes(fig.add_subplot(), grid, "data (top) and reconstructions (bottom)")
    return _saved(fig, path)


def plot_samples(vae: VAE, image_shape: tuple[int, int], path: str | Path | None = None, count: int = 64) -> Figure:
    """Decoder means E[x|z] for z drawn from the prior, on a square grid."""
    columns = math.isqrt(count)
    fig = new_figure(IMAGE_GRID_WIDTH, IMAGE_GRID_WIDTH)
    image_axes(fig.add_subplot(), image_grid(vae.sample(count), image_shape, columns), "samples: E[x|z], z ~ p(z)")
    return _saved(fig, path)


def plot_training_curves(
    history: list[dict[str, Any]],
    path: str | Path | None = None,
    status_panels: dict[str, tuple[str, Literal["linear", "log"]]] | None = None,
    term_labels: dict[str, str] | None = None,
) -> Figure:
    """The per-epoch history of a run, one panel each, in this order:

    - every term the objective reported (``train_<term>``; ELBO, reconstruction and KL first), with
      the test curve where the history has ``test_<term>``, labelled from ``term_labels`` (the
      objective's ``term_labels``) for terms beyond those three;
    - β, the KL weight, from 0 up, when it changed between epochs; a β that did not is written in
      the figure's title instead (a flat line says less), except β = 1 with status panels (an
      objective that weighs the KL itself, such as GECO);
    - one panel per key of ``status_panels`` (the objective's ``status_panels``: key → (axis label,
      "linear" or "log" y scale)) that the history holds.
    """
    status_panels = status_panels or {}
    labels = {**TERM_LABELS, **(term_labels or {})}
    reported = dict.fromkeys(key.removeprefix("train_") for record in history for key in record
                             if key.startswith("train_"))
    term_names = [name for name in TERM_LABELS if name in reported]
    term_names += [name for name in reported if name not in TERM_LABELS]
    betas = [record["beta"] for record in history if "beta" in record]
    show_beta = len(set(betas)) > 1
    beta_title = bool(betas) and not show_beta and not (status_panels and betas[0] == 1)
    status_keys = [key for key in status_panels if any(key in record for record in history)]

    count = max(1, len(term_names) + show_beta + len(status_keys))
    columns = min(count, PANELS_PER_ROW)
    rows = math.ceil(count / columns)
    fig = new_figure(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows)
    panels = iter([fig.add_subplot(rows, columns, number) for number in range(1, count + 1)])
    if not history:
        next(panels).text(0.5, 0.5, "no epochs recorded", ha="center", va="center")
        return _saved(fig, path)

    for name in term_names:
        ax = next(panels)
        for split, marker in (("train", "o"), ("test", "s")):
            _plot_key(ax, history, f"{split}_{name}", marker=marker, label=split)
        ax.set_ylabel(labels.get(name, name))
        ax.legend()
    if show_beta:
        ax = next(panels)
        _plot_key(ax, history, "beta", clip_on=False)  # β = 0 (an autoencoder) sits on the x axis, unclipped
        ax.set_ylim(0, 1.05 * max(1.0, *betas))
        ax.set_ylabel(BETA_LABEL)
    if beta_title:
        fig.suptitle(f"{BETA_LABEL} = {betas[0]:g} at the end of every epoch")
    for key in status_keys:
        ax = next(panels)
        label, scale = status_panels[key]
        _plot_key(ax, history, key)
        ax.set_yscale(scale)
        ax.set_ylabel(label)
    _span_epochs(fig, history[0]["epoch"], history[-1]["epoch"])
    return _saved(fig, path)


def _span_epochs(fig: Figure, first: int, last: int) -> None:
    """Give every panel the same epoch axis, from ``first`` to ``last`` with a margin."""
    margin = max(0.5, 0.05 * (last - first))  # at least half an epoch: one epoch gets a readable axis too
    for ax in fig.axes:
        ax.set_xlim(first - margin, last + margin)


def _plot_key(ax: Axes, history: list[dict[str, Any]], key: str, **line_style: Any) -> None:
    """One value of the history against the epoch, over the records that hold it, with markers
    (``line_style`` goes to ``Axes.plot``)."""
    records = [record for record in history if key in record]
    if not records:
        return
    line_style = {"marker": "o", "markersize": MARKER_SIZE, **line_style}
    ax.plot([record["epoch"] for record in records], [record[key] for record in records], **line_style)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


@torch.no_grad()
def posterior_means(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """The posterior means E_q[z|x] of the rows of ``x``, (datapoints, latent_dim): the codes that
    :func:`plot_latent_scatter` draws and that set :func:`plot_manifold`'s grid."""
    return vae.encode(x).mean


def plot_latent_scatter(
    vae: VAE, x: torch.Tensor, labels: torch.Tensor | None, path: str | Path | None = None
) -> Figure:
    """Posterior means of a 2-D latent space, coloured by label where the data have labels."""
    means = posterior_means(vae, x).cpu().numpy()
    fig = new_figure(6.0, 5.0)
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(means[:, 0], means[:, 1], s=4, alpha=0.7)
    else:
        points = ax.scatter(means[:, 0], means[:, 1], c=labels.cpu().numpy(), cmap=LABEL_CMAP, s=4, alpha=0.7)
        fig.colorbar(points, ax=ax, label="label")
    ax.set(xlabel="z[0]", ylabel="z[1]", title="posterior means E_q[z|x] (test set)")
    return _saved(fig, path)


def manifold_grid(steps: int, codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The z[0] and z[1] values of :func:`plot_manifold`'s grid, ``steps`` each, increasing.

    Without ``codes``: the prior's quantiles (the inverse normal CDF, as in AEVB Fig. 4) at
    probabilities evenly spaced between the two :data:`MANIFOLD_QUANTILES`. With ``codes``
    (datapoints, 2), such as :func:`posterior_means` of the test set: along each axis, evenly spaced
    from the codes' lower to their upper :data:`MANIFOLD_QUANTILES` quantile, where the data lie
    (after a short run, or for an autoencoder, often far from the prior's); an axis along which those
    quantiles coincide (every code the same there) keeps the prior's grid."""
    prior_values = Normal(0.0, 1.0).icdf(torch.linspace(*MANIFOLD_QUANTILES, steps))
    if codes is None:
        return prior_values, prior_values
    if codes.dim() != 2 or codes.shape[0] == 0 or codes.shape[1] != 2:
        raise ValueError(f"the manifold needs codes of shape (datapoints, 2), got shape {tuple(codes.shape)}.")
    low, high = torch.quantile(codes.detach().cpu().float(), torch.tensor(MANIFOLD_QUANTILES), dim=0).tolist()
    x_values, y_values = (
        torch.linspace(low[axis], high[axis], steps) if high[axis] > low[axis] else prior_values for axis in (0, 1)
    )
    return x_values, y_values


def _tick_labels(values: torch.Tensor) -> list[str]:
    """``values`` (increasing) as tick labels with two decimals, or as many more as tell neighbours apart."""
    step = (values[1:] - values[:-1]).min().item() if len(values) > 1 else 1.0
    decimals = max(2, -math.floor(math.log10(step))) if step > 0 else 2  # rounding keeps neighbours apart
    return [f"{value:.{decimals}f}" for value in values.tolist()]


@torch.no_grad()
def plot_manifold(
    vae: VAE,
    image_shape: tuple[int, int],
    path: str | Path | None = None,
    steps: int = 20,
    codes: torch.Tensor | None = None,
) -> Figure:
    """The decoded 2-D manifold: E[x|z] on a ``steps`` x ``steps`` grid of z (see :func:`manifold_grid`:
    where the ``codes`` lie when given, e.g. ``posterior_means(vae, test_x)``, else through the
    inverse normal CDF as in AEVB Fig. 4), z[0] along the columns and z[1] up the rows, with the z
    values as tick labels."""
    height, width = image_shape
    fig = new_figure(MANIFOLD_WIDTH, MANIFOLD_WIDTH * height / width)
    low, high = (f"{100 * q:g}%" for q in MANIFOLD_QUANTILES)
    source = "the codes'" if codes is not None else "the prior's"
    draw_manifold(fig.add_subplot(), vae, image_shape, *manifold_grid(steps, codes),
                  f"learned manifold E[x|z], z from {source} {low} to {high} quantiles")
    return _saved(fig, path)


@torch.no_grad()
def draw_manifold(ax: Axes, vae: VAE, image_shape: tuple[int, int], x_values: torch.Tensor, y_values: torch.Tensor,
                  title: str) -> None:
    """Draw E[x|z] on ``ax`` for z on the grid ``x_values`` x ``y_values`` (each increasing): z[0]
    along the columns, z[1] up the rows, the z value of every tile as its tick label."""
    z1, z0 = torch.meshgrid(y_values.flip(0), x_values, indexing="ij")  # rows: z[1] from high to low
    z = torch.stack([z0.reshape(-1), z1.reshape(-1)], dim=1).to(next(vae.parameters()).device)
    height, width = image_shape
    gap = 1
    image_axes(ax, image_grid(vae.decoded_mean(z), image_shape, len(x_values), gap), title)
    ax.set_xticks(np.arange(len(x_values)) * (width + gap) + (width - 1) / 2, _tick_labels(x_values), rotation=90,
                  fontsize="small")
    ax.set_yticks(np.arange(len(y_values)) * (height + gap) + (height - 1) / 2, _tick_labels(y_values)[::-1],
                  fontsize="small")
    ax.set(xlabel="z[0] (latent units)", ylabel="z[1] (latent units)")


def plot_kl_per_dim(kl_per_dim: list[float], active: list[bool], path: str | Path | None = None) -> Figure:
    """KL(q(z_u|x) || p(z_u)) per latent dimension u as bars, active units (Burda et al.) coloured,
    sorted from the largest KL down."""
    order = np.argsort(kl_per_dim)[::-1]
    values = np.asarray(kl_per_dim)[order]
    is_active = np.asarray(active)[order]
    fig = new_figure(max(4.0, 0.18 * len(values) + 2), 3.5)
    ax = fig.add_subplot()
    positions = np.arange(len(values))
    ax.bar(positions, values, color=np.where(is_active, "tab:blue", "tab:gray"))
    ax.legend(handles=[Patch(color="tab:blue", label=f"active ({is_active.sum()})"),
                       Patch(color="tab:gray", label=f"inactive ({(~is_active).sum()})")])
    step = max(1, len(values) // 25)
    ax.set_xticks(positions[::step], [str(u) for u in order[::step]])
    ax.set(xlabel="latent dimension (sorted by KL)", ylabel="KL(q(z_u|x) || p(z_u)) (nats)",
           title="KL per latent dimension, averaged over the data")
    return _saved(fig, path)
