"""Taming VAEs (Rezende & Viola 2018), Fig. 2: the phase transitions of a β-VAE on a 2-D mixture of
four Gaussians in two pairs (``mixture2d``)::

    ppl-vae reproduce beta-phase-transitions --out figures

Reconstruction errors are E_q ||x - E[x|z]||² per datapoint, in squared data units.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ppl_vae.errors import ConfigError
from ppl_vae.experiments.common import one_hidden_layer_config, squared_error
from ppl_vae.experiments.runner import EXPERIMENTS, Output, Reference, full, quick

GAUSSIAN_LIKELIHOOD = {"name": "gaussian", "sigma": 0.1, "squash": "none"}
PEAK_FRACTION = 0.2  # a critical β is a local maximum of the curvature above this fraction of its largest value


@EXPERIMENTS.register("beta-phase-transitions")
@quick(num_betas=3, epochs=1)
@full(seconds=77, references=[Reference("critical_betas.0", 0.3, 0.9), Reference("critical_betas.1", 3.0, 7.0)])
def beta_phase_transitions(
    output: Output, *, smallest_beta: float = 0.1, largest_beta: float = 30.0, num_betas: int = 22, epochs: int = 50,
) -> dict[str, Any]:
    """A β-VAE's reconstruction error rises in steps, at critical βs where clusters merge (Taming VAEs, Fig. 2).

    Trains a β-VAE (2 latents, 32 tanh units, Gaussian likelihood with σ = 0.1) on ``mixture2d``
    for ``epochs`` at each of ``num_betas`` values of β spaced geometrically from ``smallest_beta``
    to ``largest_beta``; the critical βs are the peaks of the error's second derivative in log β.
    Draws ``beta_phase_transitions.png`` (:func:`plot_phase_transitions`) and returns the βs, the
    test errors and the critical βs.
    """
    if num_betas < 3:
        raise ConfigError(f"num_betas: a second derivative needs at least 3 values of β, got {num_betas}.")
    betas = np.geomspace(smallest_beta, largest_beta, num_betas)
    errors = []
    for beta in betas:
        objective = {"name": "meanfield", "beta": {"name": "constant", "value": float(beta)}}
        config = one_hidden_layer_config(output, "mixture2d", epochs, objective, latent_dim=2, hidden=32,
                                         likelihood=GAUSSIAN_LIKELIHOOD, lr=1e-2)
        run = output.fit(config, f"beta={beta:.4g}")
        errors.append(squared_error(run.vae, run.dataset.test) * run.dataset.data_dim)
    log_beta = np.log(betas)
    curvature = np.gradient(np.gradient(errors, log_beta), log_beta)
    critical = [float(betas[i]) for i in range(1, num_betas - 1)
                if curvature[i] > max(curvature[i - 1], curvature[i + 1])
                and curvature[i] > PEAK_FRACTION * curvature.max()]
    output.save_figure(plot_phase_transitions(betas, np.array(errors), curvature, critical),
                       "beta_phase_transitions.png")
    return {"units": "errors: E_q ||x - g(z)||² per test point (squared data units); betas: KL weights",
            "betas": betas.tolist(), "errors": errors, "critical_betas": critical}


def plot_phase_transitions(betas: np.ndarray, errors: np.ndarray, curvature: np.ndarray,
                           critical: list[float]) -> Figure:
    """Top: the error against β; bottom: its second derivative in log β; the critical βs marked in both."""
    fig = Figure(figsize=(6.5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.semilogx(betas, errors, "o-")
    top.set(ylabel="E ||x - g(z)||² (squared data units)",
            title="β-VAE on a 2-D mixture of 4 Gaussians (Taming VAEs Fig. 2)")
    bottom.semilogx(betas, curvature, "o-", color="tab:orange")
    bottom.axhline(0, color="gray", linewidth=0.8)
    bottom.set(xlabel="β (KL weight)", ylabel="d² error / d(log β)²")
    for beta in critical:
        for ax in (top, bottom):
            ax.axvline(beta, color="red", linestyle="--", linewidth=1)
        top.annotate(f"β* ≈ {beta:.2g}", (beta, errors.max()), xytext=(3, -12), textcoords="offset points",
                     color="red", fontsize=8)
    return fig
