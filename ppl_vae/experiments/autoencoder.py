"""The autoencoder baseline: β = 0 against β = 1 of the same config (``configs/autoencoder.yaml``).

Without the KL term nothing ties the codes to the prior, so decoding prior draws gives poor images,
while the VAE's samples look like digits; both reconstruct well. Writes
``figures/autoencoder_vs_vae.png`` and prints the test reconstruction and KL of both (nats per
datapoint)::

    python -m ppl_vae.experiments.autoencoder --epochs 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ppl_vae.config import load_config  # noqa: E402
from ppl_vae.plots import image_grid  # noqa: E402
from ppl_vae.train import Run, fit  # noqa: E402

CONFIG = "autoencoder"


def train_pair(epochs: int, overrides: list[str] | None = None) -> dict[str, Run]:
    """The autoencoder (β = 0, as configured) and the VAE (β = 1), trained alike for ``epochs``."""
    common = [f"train.epochs={epochs}", f"train.eval_every={epochs}", *(overrides or [])]
    return {
        "autoencoder (β = 0)": fit(load_config(CONFIG, common)),
        "VAE (β = 1)": fit(load_config(CONFIG, [*common, "objective.beta.value=1.0"])),
    }


@torch.no_grad()
def plot_comparison(runs: dict[str, Run], path: Path, count: int = 10, seed: int = 0) -> Path:
    """One row per model: test images, their reconstructions, and decoded prior draws (the same
    draws of N(0, I) for every model, so the rows differ only by the decoder)."""
    first = next(iter(runs.values()))
    shape = first.dataset.image_shape
    x = first.dataset.test[:count]
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(2 * count, first.vae.latent_dim, generator=generator).to(x.device)
    fig, axes = plt.subplots(len(runs), 2, figsize=(2 * count * 0.7, 1.6 * len(runs) * 1.2),
                             gridspec_kw={"width_ratios": [1, 1]}, squeeze=False)
    for row, (name, run) in zip(axes, runs.items()):
        reconstructions = torch.cat([x, run.vae.reconstruct(x)])
        row[0].imshow(image_grid(reconstructions, shape, columns=count), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"{name}: test data (top) and reconstructions (bottom)", fontsize=9)
        row[1].imshow(image_grid(run.vae.decoded_mean(z), shape, columns=count), cmap="gray", vmin=0, vmax=1)
        row[1].set_title(f"{name}: samples E[x|z], z ~ N(0, I)", fontsize=9)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("figures"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)
    runs = train_pair(args.epochs, args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {plot_comparison(runs, args.out / 'autoencoder_vs_vae.png')}")
    print("test set, nats per datapoint: E_q[log p(x|z)] (reconstruction), KL(q(z|x) || p(z))")
    for name, run in runs.items():
        metrics = run.metrics
        print(f"  {name:22s} reconstruction {metrics['test_reconstruction']:9.2f}  KL {metrics['test_kl']:9.2f}")


if __name__ == "__main__":
    main()
