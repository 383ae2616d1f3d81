"""The autoencoder baseline: β = 0 against β = 1 of the same config (``configs/autoencoder.yaml``).

Without the KL term nothing ties the codes to the prior, so decoding prior draws gives poor images,
while the VAE's samples look like digits; both reconstruct well::

    ppl-vae reproduce autoencoder-vs-vae --set epochs=3
"""

from __future__ import annotations

from typing import Any

import torch
from matplotlib.figure import Figure

from ppl_vae.experiments.common import shipped_config
from ppl_vae.experiments.runner import EXPERIMENTS, Output, Reference, full, quick
from ppl_vae.plots import image_axes, image_grid
from ppl_vae.runs import Run

KL_WEIGHTS = {"autoencoder (β = 0)": 0.0, "VAE (β = 1)": 1.0}  # β of each model, by its label


@EXPERIMENTS.register("autoencoder-vs-vae")
@quick(dataset="digits", epochs=1)
@full(seconds=56, references=[
    Reference("VAE (β = 1).elbo", -115.0, -107.0, published=-105.0,
              source="about -104 to -106 after 10 epochs: pytorch/examples' VAE, same 784-400-20 net (DESIGN)"),
    Reference("VAE (β = 1).kl", 20.0, 29.0),
    Reference("autoencoder (β = 0).kl", 250.0, 450.0),
    Reference("autoencoder (β = 0).reconstruction", -78.0, -67.0),
])
def autoencoder_vs_vae(output: Output, *, dataset: str = "mnist", epochs: int = 3) -> dict[str, Any]:
    """Without the ELBO's KL term (Kingma & Welling 2013, eq. 10) prior draws decode to no digits: β = 0 vs β = 1.

    Trains the shipped ``autoencoder`` config on ``dataset`` for ``epochs`` with β = 0 and with
    β = 1, draws ``autoencoder_vs_vae.png`` (:func:`plot_comparison`) and returns each model's test
    reconstruction E_q[log p(x|z)] and KL(q(z|x) || p(z)) in nats per datapoint: the autoencoder's
    KL is far larger, since nothing ties its codes to the prior.
    """
    runs = {
        label: output.fit(shipped_config("autoencoder", output, [
            f"data.name={dataset}", f"train.epochs={epochs}", f"train.eval_every={epochs}",
            f"objective.beta.value={kl_weight}",
        ]), f"beta={kl_weight}")
        for label, kl_weight in KL_WEIGHTS.items()
    }
    output.save_figure(plot_comparison(runs), "autoencoder_vs_vae.png")
    return {
        "units": "nats per datapoint, test set: reconstruction = E_q[log p(x|z)], kl = KL(q(z|x) || p(z)), "
                 "elbo = reconstruction - kl (the β = 1 bound, for both models)",
        **{label: {"reconstruction": run.metrics["test_reconstruction"], "kl": run.metrics["test_kl"],
                   "elbo": run.metrics["test_reconstruction"] - run.metrics["test_kl"]}
           for label, run in runs.items()},
    }


@torch.no_grad()
def plot_comparison(runs: dict[str, Run], count: int = 10, seed: int = 0) -> Figure:
    """One row per model: test images, their reconstructions, and decoded prior draws (the same
    draws of N(0, I) for every model, so the rows differ only by the decoder)."""
    first = next(iter(runs.values()))
    shape = first.dataset.image_shape
    x = first.dataset.test[:count]
    z = torch.randn(2 * count, first.vae.latent_dim, generator=torch.Generator().manual_seed(seed)).to(x.device)
    fig = Figure(figsize=(2 * count * 0.7, 1.6 * len(runs) * 1.2), layout="constrained")
    axes = fig.subplots(len(runs), 2, squeeze=False)
    for row, (label, run) in zip(axes, runs.items()):
        reconstructions = image_grid(torch.cat([x, run.vae.reconstruct(x)]), shape, columns=count)
        image_axes(row[0], reconstructions, f"{label}: test data (top) and reconstructions (bottom)")
        samples = image_grid(run.vae.decoded_mean(z), shape, columns=count)
        image_axes(row[1], samples, f"{label}: samples E[x|z], z ~ N(0, I)")
    return fig
