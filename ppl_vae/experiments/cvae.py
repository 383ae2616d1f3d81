"""Image completion with the conditional VAE on binarized MNIST (Doersch 2016, section 7; Pyro's
CVAE example): complete the left half of a digit from its right half, and the whole digit from its
bottom-left quadrant. For each task: the baseline network's and the CVAE's test log p(y | x) (nats
per image, over the hidden pixels; the CVAE's by importance sampling) and a figure of several
sampled completions per input, ``figures/cvae_<task>.png``::

    python -m ppl_vae.experiments.cvae --epochs 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ppl_vae.models.cvae import (TASKS, CVAE, Baseline, observed_mask, split_pixels,  # noqa: E402
                                 train_baseline, train_cvae)
from ppl_vae.data import load_dataset  # noqa: E402
from ppl_vae.evaluation import log_likelihood  # noqa: E402
from ppl_vae.plots import image_grid  # noqa: E402
from ppl_vae.train import resolve_device  # noqa: E402

UNOBSERVED_GRAY = 0.35  # the hidden pixels in the input column


def assemble(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Full images from observed pixels ``x`` and hidden pixels ``y`` (leading dimensions kept)."""
    images = torch.empty(*y.shape[:-1], mask.numel(), device=y.device)
    images[..., mask] = x.expand(*y.shape[:-1], x.shape[-1])
    images[..., ~mask] = y
    return images


@torch.no_grad()
def plot_completions(cvae: CVAE, baseline: Baseline, images: torch.Tensor, mask: torch.Tensor,
                     image_shape: tuple[int, int], path: Path, task: str, num_samples: int = 6) -> Path:
    """One row per test digit: the truth, the input (hidden pixels gray), the baseline's prediction
    and ``num_samples`` CVAE completions E[y | z, x], z ~ p(z | x)."""
    x, y = split_pixels(images, mask)
    columns = [images, assemble(x, torch.full_like(y, UNOBSERVED_GRAY), mask),
               assemble(x, torch.sigmoid(baseline(x)), mask), *assemble(x, cvae.complete(x, num_samples), mask)]
    tiles = torch.stack(columns, dim=1).reshape(-1, mask.numel())
    fig, ax = plt.subplots(figsize=(0.8 * len(columns), 0.8 * images.shape[0]))
    ax.imshow(image_grid(tiles, image_shape, columns=len(columns)), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{task}: truth | input | baseline | {num_samples} CVAE completions", fontsize=9)
    ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def run_task(task: str, epochs: int, out: Path, num_samples: int, device: torch.device) -> dict[str, float]:
    dataset = load_dataset("mnist-binarized", device=device)
    mask = observed_mask(task, dataset.image_shape).to(device)
    baseline = train_baseline(dataset, mask, epochs)
    cvae = train_cvae(dataset, mask, baseline, epochs)
    x, y = split_pixels(dataset.test, mask)
    torch.manual_seed(0)
    results = {
        "baseline_log_likelihood": baseline.log_likelihood(x, y).mean().item(),
        "cvae_elbo": log_likelihood(cvae.model, cvae.guide, x, y, num_samples=1).mean().item(),
        "cvae_log_likelihood": log_likelihood(cvae.model, cvae.guide, x, y, num_samples=num_samples).mean().item(),
        "hidden_pixels": int((~mask).sum()),
    }
    plot_completions(cvae, baseline, dataset.test[:8], mask, dataset.image_shape, out / f"cvae_{task}.png", task)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs for the baseline and for the CVAE")
    parser.add_argument("--samples", type=int, default=100, help="importance samples K for log p(y|x)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--out", type=Path, default=Path("figures"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {task: run_task(task, args.epochs, args.out, args.samples, resolve_device(args.device))
               for task in args.tasks}
    print(f"test log p(y | x), nats per image over the hidden pixels (higher is better); CVAE with K={args.samples}")
    for task, numbers in results.items():
        print(f"  {task:11s} ({numbers['hidden_pixels']} hidden pixels): baseline {numbers['baseline_log_likelihood']:8.2f}"
              f"   CVAE {numbers['cvae_log_likelihood']:8.2f}   (CVAE ELBO {numbers['cvae_elbo']:8.2f})")
    (args.out / "cvae.json").write_text(json.dumps({"units": "nats per image", "epochs": args.epochs, **results}, indent=1))


if __name__ == "__main__":
    main()
