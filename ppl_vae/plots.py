"""Figures of a run: reconstructions, prior samples, training curves and, for a 2-D latent space,
the latent scatter and the decoded manifold. Every function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from torch.distributions import Normal  # noqa: E402

from ppl_vae.model import VAE  # noqa: E402

if TYPE_CHECKING:
    from ppl_vae.train import Run


def image_grid(images: torch.Tensor, image_shape: tuple[int, int], columns: int, gap: int = 1) -> np.ndarray:
    """Tile flattened images (n, h*w) row by row into one array, with ``gap`` white pixels between
    tiles (digits that fill their frame would otherwise run into each other)."""
    height, width = image_shape
    rows = -(-images.shape[0] // columns)
    tiles = torch.ones(rows * columns, height + gap, width + gap)
    tiles[: images.shape[0], :height, :width] = images.detach().cpu().reshape(-1, height, width)
    grid = tiles.reshape(rows, columns, height + gap, width + gap).permute(0, 2, 1, 3)
    return grid.reshape(rows * (height + gap), columns * (width + gap))[:-gap or None, :-gap or None].numpy()


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _show_grid(ax: plt.Axes, grid: np.ndarray, title: str) -> None:
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")


def plot_reconstructions(vae: VAE, x: torch.Tensor, image_shape: tuple[int, int], path: Path, count: int = 10) -> Path:
    """Inputs (top row) above their reconstructions E[x|z = posterior mean] (bottom row)."""
    x = x[:count]
    grid = image_grid(torch.cat([x, vae.reconstruct(x)]), image_shape, columns=x.shape[0])
    fig, ax = plt.subplots(figsize=(x.shape[0], 2.4))
    _show_grid(ax, grid, "data (top) and reconstructions (bottom)")
    return _save(fig, path)


def plot_samples(vae: VAE, image_shape: tuple[int, int], path: Path, count: int = 64) -> Path:
    """Decoder means E[x|z] for z drawn from the prior."""
    columns = int(np.sqrt(count))
    fig, ax = plt.subplots(figsize=(6, 6))
    _show_grid(ax, image_grid(vae.sample(count), image_shape, columns), "samples: E[x|z], z ~ p(z)")
    return _save(fig, path)


def plot_training_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """ELBO (train and test), reconstruction, KL and β per epoch; with GECO, λ and C_ma instead of β."""
    epochs = [record["epoch"] for record in history]
    geco = bool(history) and "geco_lambda" in history[0]
    fig, axes = plt.subplots(1, 5 if geco else 4, figsize=(20 if geco else 16, 3.5))
    panels = [("elbo", "ELBO (nats/datapoint)"), ("reconstruction", "E_q log p(x|z) (nats)"), ("kl", "KL(q||p) (nats)")]
    for ax, (name, label) in zip(axes, panels):
        ax.plot(epochs, [record[f"train_{name}"] for record in history], label="train")
        tested = [record for record in history if f"test_{name}" in record]
        ax.plot([r["epoch"] for r in tested], [r[f"test_{name}"] for r in tested], "o-", markersize=3, label="test")
        ax.set(xlabel="epoch", ylabel=label)
        ax.legend()
    if geco:
        axes[3].semilogy(epochs, [record["geco_lambda"] for record in history])
        axes[3].set(xlabel="epoch", ylabel="GECO λ (constraint weight)")
        axes[4].plot(epochs, [record["geco_c_ma"] for record in history])
        axes[4].axhline(0.0, color="gray", linestyle="--", linewidth=1)
        axes[4].set(xlabel="epoch", ylabel="GECO C_ma (constraint; <= 0 is met)")
    else:
        axes[3].plot(epochs, [record["beta"] for record in history])
        axes[3].set(xlabel="epoch", ylabel="β (KL weight)", ylim=(0, 1.05 * max(1.0, *(r["beta"] for r in history))))
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def plot_latent_scatter(vae: VAE, x: torch.Tensor, labels: torch.Tensor | None, path: Path) -> Path:
    """Posterior means of a 2-D latent space, coloured by label where the data have labels."""
    means = vae.encode(x).mean.cpu().numpy()
    fig, ax = plt.subplots(figsize=(6, 5))
    colours = None if labels is None else labels.cpu().numpy()
    points = ax.scatter(means[:, 0], means[:, 1], c=colours, cmap="tab10", s=4, alpha=0.7)
    if labels is not None:
        fig.colorbar(points, ax=ax, label="label")
    ax.set(xlabel="z[0]", ylabel="z[1]", title="posterior means E_q[z|x] (test set)")
    return _save(fig, path)


@torch.no_grad()
def plot_manifold(vae: VAE, image_shape: tuple[int, int], path: Path, steps: int = 20) -> Path:
    """The decoded 2-D manifold: E[x|z] on a grid of z through the inverse normal CDF (AEVB Fig. 4)."""
    quantiles = torch.linspace(0.05, 0.95, steps)
    values = Normal(0.0, 1.0).icdf(quantiles)
    device = next(vae.parameters()).device
    z1, z0 = torch.meshgrid(values.flip(0), values, indexing="ij")  # rows: z[1] from high to low
    z = torch.stack([z0.reshape(-1), z1.reshape(-1)], dim=1).to(device)
    fig, ax = plt.subplots(figsize=(7, 7 * image_shape[0] / image_shape[1]))
    _show_grid(ax, image_grid(vae.decoded_mean(z), image_shape, steps), "learned manifold E[x|z]")
    return _save(fig, path)


def plot_kl_per_dim(kl_per_dim: list[float], active: list[bool], path: Path) -> Path:
    """KL(q(z_u|x) || p(z_u)) per latent dimension u as bars, active units (Burda et al.) coloured,
    sorted from the largest KL down."""
    order = np.argsort(kl_per_dim)[::-1]
    values = np.asarray(kl_per_dim)[order]
    is_active = np.asarray(active)[order]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.18 * len(values) + 2), 3.5))
    positions = np.arange(len(values))
    ax.bar(positions, values, color=np.where(is_active, "tab:blue", "tab:gray"))
    ax.legend(handles=[Patch(color="tab:blue", label=f"active ({is_active.sum()})"),
                       Patch(color="tab:gray", label=f"inactive ({(~is_active).sum()})")])
    step = max(1, len(values) // 25)
    ax.set_xticks(positions[::step], [str(u) for u in order[::step]])
    ax.set(xlabel="latent dimension (sorted by KL)", ylabel="KL(q(z_u|x) || p(z_u)) (nats)",
           title="KL per latent dimension, averaged over the data")
    return _save(fig, path)


def run_figures(run: Run) -> list[Path]:
    """Write the figures of a finished run into its directory."""
    out, data, vae = run.out_dir, run.dataset, run.vae
    vae.eval()
    test_x, test_labels = data.split("test")
    paths = [
        plot_reconstructions(vae, test_x, data.image_shape, out / "reconstructions.png"),
        plot_samples(vae, data.image_shape, out / "samples.png"),
        plot_training_curves(run.history, out / "training_curves.png"),
    ]
    if vae.latent_dim == 2:
        paths.append(plot_latent_scatter(vae, test_x, test_labels, out / "latent_scatter.png"))
        paths.append(plot_manifold(vae, data.image_shape, out / "manifold.png"))
    vae.train()
    return paths

