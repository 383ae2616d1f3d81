"""Taming VAEs (Rezende & Viola 2018), Fig. 3: GECO's path through the information plane, the
reconstruction error against the KL over training, one panel per dataset::

    ppl-vae reproduce geco-information-plane --out figures

Reconstruction errors are mean squared errors per dimension, ||x - E[x|z]||² / D, in squared data
units; KLs are in nats per datapoint.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ppl_vae.errors import ConfigError
from ppl_vae.experiments.common import one_hidden_layer_config, squared_error
from ppl_vae.experiments.runner import EXPERIMENTS, Output, Reference, full, quick
from ppl_vae.runs import Run

PANEL_TITLES = {"mnist": "MNIST (grayscale, N_z=10)", "frey": "Frey Face (N_z=10)"}  # others: "<dataset> (N_z=10)"


@EXPERIMENTS.register("geco-information-plane")
@quick(datasets=("digits",), epochs=(1,), tolerances=(0.15,), rates=(1e-3,))
@full(seconds=38, references=[Reference("mnist.test_mse", 0.018, 0.0235), Reference("frey.test_mse", 0.0065, 0.0095),
                              Reference("mnist.test_kl", 22.0, 33.0), Reference("frey.test_kl", 2.5, 6.0)])
def geco_information_plane(
    output: Output, *, datasets: tuple[str, ...] = ("mnist", "frey"), epochs: tuple[int, ...] = (3, 100),
    tolerances: tuple[float, ...] = (0.15, 0.08), rates: tuple[float, ...] = (1e-4, 1e-3),
) -> dict[str, Any]:
    """GECO brings the reconstruction error down to its tolerance κ², then lowers the KL (Taming VAEs, Fig. 3).

    One GECO run (wrapping the mean-field ELBO, a one-hidden-layer VAE with N_z = 10) per dataset of
    ``datasets``, with that position's ``epochs``, tolerance κ (``tolerances``, RMS error per
    dimension in data units) and λ learning rate ν (``rates``). Draws
    ``geco_information_plane.png`` (:func:`plot_information_plane`) and returns, per dataset, the
    final λ and the test error and KL it reached.
    """
    if not len(datasets) == len(epochs) == len(tolerances) == len(rates):
        raise ConfigError(
            "datasets, epochs, tolerances, rates: one value per panel in each, got "
            f"{len(datasets)}, {len(epochs)}, {len(tolerances)} and {len(rates)} values."
        )
    runs = {}
    for dataset, dataset_epochs, tolerance, rate in zip(datasets, epochs, tolerances, rates):
        geco = {"name": "geco", "wraps": "meanfield", "tolerance": tolerance, "rate": rate}
        runs[dataset] = (output.fit(one_hidden_layer_config(output, dataset, dataset_epochs, geco), f"geco-{dataset}"),
                          tolerance)
    output.save_figure(plot_information_plane(runs), "geco_information_plane.png")
    return {
        "units": "test_mse: ||x - g(z)||² / D (squared data units); test_kl: nats per datapoint",
        **{dataset: {"tolerance_squared": tolerance**2, "test_mse": squared_error(run.vae, run.dataset.test),
                     "test_kl": run.metrics["test_kl"], "final_lambda": run.objective.lam,
                     "steps": run.metrics["steps"]}
           for dataset, (run, tolerance) in runs.items()},
    }


def plot_information_plane(runs: dict[str, tuple[Run, float]]) -> Figure:
    """Per-step reconstruction error (MSE per dimension) against KL of GECO runs, coloured by step,
    with the tolerance κ² as a dashed line; one panel per ``dataset: (run, κ)``."""
    fig = Figure(figsize=(5.5 * len(runs), 4.2), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False)
    for ax, (dataset, (run, tolerance)) in zip(axes[0], runs.items()):
        history, dims = run.objective.history, run.dataset.data_dim
        error = np.array(history["constraint"]) / dims + tolerance**2  # C = ||x - g(z)||² - D·κ²
        points = ax.scatter(history["kl"], error, c=np.arange(len(error)), cmap="viridis", s=4)
        ax.axhline(tolerance**2, color="red", linestyle="--", label=f"tolerance κ² = {tolerance}²")
        ax.set(xlabel="KL(q(z|x) || p(z)) (nats)", ylabel="||x - g(z)||² / D (squared data units)",
               yscale="log", title=PANEL_TITLES.get(dataset, f"{dataset} (N_z=10)"))
        ax.legend()
        fig.colorbar(points, ax=ax, label="step")
    fig.suptitle("GECO in the information plane (Taming VAEs Fig. 3); batch values")
    return fig
