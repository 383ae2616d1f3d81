"""Importance weighted autoencoders (Burda, Grosse & Salakhutdinov 2015), Table 1, one stochastic
layer on MNIST: the VAE (k = 1) and the IWAE trained with k = 5 and k = 50 particles, the same
784-200-200-50 tanh net (the shipped ``mnist`` config) on dynamically binarized MNIST, every row
trained for the same epochs (3 by default, against the paper's 3280)::

    ppl-vae reproduce iwae-table --out figures

Each model is scored on one fixed subset of test images by its ELBO, the k-sample bounds L_5 and
L_50, and log p(x) importance-sampled with K = 5000 draws from its encoder, as the paper does. Nats
per datapoint, log-probabilities (higher is better); the standard errors are those of the mean over
the test images. Writes ``iwae_table.png`` (:func:`plot_table`).

The ``priors-table`` experiment scores its rows with the same helpers (:func:`score_rows`,
:func:`training_budget`, :func:`gain_bars`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pyro
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ppl_vae.data import evaluation_split
from ppl_vae.evaluation import importance_sample
from ppl_vae.experiments.common import shipped_config
from ppl_vae.experiments.runner import EXPERIMENTS, Output, Reference, full, quick
from ppl_vae.models.vae import VAE
from ppl_vae.plots import UNITS, new_figure
from ppl_vae.runs import Run

OBJECTIVES = {  # each row's objective section; the VAE is the plain ELBO with sampled KL, as the paper's
    "VAE": "{name: elbo, num_particles: 1}",
    "IWAE k=5": "{name: iwae, num_particles: 5}",
    "IWAE k=50": "{name: iwae, num_particles: 50}",
}
PUBLISHED_LOG_PX = {"VAE": -86.76, "IWAE k=5": -85.54, "IWAE k=50": -84.78}  # Burda et al., Table 1 (-NLL)
PUBLISHED_DATASET = "mnist-binarized"  # the published numbers are drawn only beside this dataset's
BOUND_PARTICLES = (5, 50)  # the k of the bounds L_k every row is scored by, besides the ELBO (k = 1)
SCORE_UNITS = (  # of the numbers score_rows gives
    "nats per datapoint, log-probabilities (higher is better), each a mean and its standard_error over the test_size "
    "test images: log_px is log p(x) importance-sampled with importance_samples draws, elbo the mean log-weight of "
    "those draws, bound_Lk one draw of the k-sample IWAE bound, log_px_gain_over_baseline log p(x) minus the baseline "
    "row's on the same images; log_px_ess: effective sample size of the draws (a count); train_seconds: s; "
    "active_units: latent dimensions with Cov_x(E_q[z|x]) > 0.01 on the whole test set (a count)"
)
TABLE_SOURCE = "Burda et al. 2015, Table 1 (MNIST, one stochastic layer, test NLL with k = 5000)"


@EXPERIMENTS.register("iwae-table")
@quick(dataset="digits", epochs=1, importance_samples=100, test_size=50)
@full(seconds=1375, references=[  # measured on 2 CPU cores shared with other jobs (about 11 min idle)
    Reference("rows.VAE.log_px.mean", low=-123.5, high=-118.5, published=PUBLISHED_LOG_PX["VAE"], source=TABLE_SOURCE),
    Reference("rows.IWAE k=5.log_px.mean", low=-119.5, high=-114.5, published=PUBLISHED_LOG_PX["IWAE k=5"],
              source=TABLE_SOURCE),
    Reference("rows.IWAE k=50.log_px.mean", low=-116.0, high=-110.5, published=PUBLISHED_LOG_PX["IWAE k=50"],
              source=TABLE_SOURCE),
    Reference("rows.IWAE k=5.log_px_gain_over_baseline.mean", low=2.0, high=6.0,
              published=round(PUBLISHED_LOG_PX["IWAE k=5"] - PUBLISHED_LOG_PX["VAE"], 2), source=TABLE_SOURCE),
    Reference("rows.IWAE k=50.log_px_gain_over_baseline.mean", low=5.0, high=10.5,
              published=round(PUBLISHED_LOG_PX["IWAE k=50"] - PUBLISHED_LOG_PX["VAE"], 2), source=TABLE_SOURCE),
])
def iwae_table(
    output: Output, *, dataset: str = "mnist-binarized", epochs: int = 3, importance_samples: int = 5000,
    test_size: int = 500, seed: int = 0,
) -> dict[str, Any]:
    """Training with the IWAE bound raises test log p(x) over the VAE, more with k = 50 than k = 5 (Burda et al. 2015, Table 1).

    Trains the shipped ``mnist`` config (784-200-200-50 tanh MLPs, batch 100, Adam at lr 1e-3) on
    ``dataset`` for ``epochs`` once per row of :data:`OBJECTIVES`, then scores each model on the
    first ``test_size`` test images: the bounds L_k for k in :data:`BOUND_PARTICLES` and log p(x)
    with ``importance_samples`` draws, each as a mean with its standard error, and the paired gain
    of log p(x) over the VAE's on the same images. Draws ``iwae_table.png`` (:func:`plot_table`).
    """
    runs = {
        label: output.fit(shipped_config("mnist", output, [
            f"data.name={dataset}", f"seed={seed}", f"objective={objective}", f"train.epochs={epochs}",
            f"train.eval_every={epochs}", "train.checkpoint_every=1",
        ]), label)
        for label, objective in OBJECTIVES.items()
    }
    test = evaluation_split(runs["VAE"].dataset, "test")[:test_size]
    rows = score_rows(runs, test, BOUND_PARTICLES, importance_samples, "VAE", seed)
    for label, run in runs.items():
        rows[label].update(objective=run.config.objective.name,
                           train_particles=run.config.objective.options["num_particles"],
                           published_log_px=PUBLISHED_LOG_PX[label])
    budget = training_budget(runs["VAE"])
    output.save_figure(plot_table(rows, importance_samples, dataset, budget), "iwae_table.png")
    return {
        "units": SCORE_UNITS,
        "dataset": dataset, "test_size": test.shape[0], "importance_samples": importance_samples, "budget": budget,
        "published_budget": {"epochs": 3280, "batch_size": 20, "optimizer": "adam",
                             "lr": "1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7"},
        "rows": rows,
    }


@torch.no_grad()
def bounds_on(vae: VAE, x: torch.Tensor, particle_counts: Sequence[int], importance_samples: int,
              seed: int) -> dict[str, torch.Tensor]:
    """Per-datapoint estimates (nats) on ``x``, the draws seeded with ``seed``: ``log_px``, log p(x)
    importance-sampled with ``importance_samples`` draws from the encoder, with their effective
    sample size ``log_px_ess`` (between 1 and ``importance_samples``: low where the encoder is a poor
    proposal); ``elbo``, the mean of the same draws' log-weights; and ``bound_L<k>`` for each k in
    ``particle_counts``, one draw of the k-sample bound L_k = E log (1/k) Σ_j p(x, z_j) / q(z_j|x),
    which rises with k from the ELBO (k = 1) towards log p(x) (Burda et al. 2015, eq. 8, Theorem 1)."""
    pyro.set_rng_seed(seed)
    estimate = importance_sample(vae.model, vae.guide, x, num_samples=importance_samples, psis=False)
    bounds = {"elbo": estimate.elbo, "log_px": estimate.log_likelihood, "log_px_ess": estimate.ess}
    for k in particle_counts:
        bounds[f"bound_L{k}"] = importance_sample(vae.model, vae.guide, x, num_samples=k,
                                                  particle_batch_size=min(k, 100), psis=False).log_likelihood
    return bounds


def training_budget(run: Run) -> dict[str, Any]:
    """What a run was trained with: epochs, optimizer steps, batch size, optimizer and learning rate,
    and the number of training examples."""
    return {"epochs": run.metrics["epochs"], "steps": run.metrics["steps"], "batch_size": run.config.data.batch_size,
            "optimizer": run.config.optim.name, "lr": run.config.optim.lr,
            "training_examples": run.dataset.train.shape[0]}


def score_rows(runs: dict[str, Run], x: torch.Tensor, particle_counts: Sequence[int], importance_samples: int,
               baseline: str, seed: int) -> dict[str, dict[str, Any]]:
    """Each run's numbers on the datapoints ``x`` (:func:`bounds_on`) as means with standard errors
    (nats per datapoint), the paired gain of its log p(x) over the ``baseline`` run's on the same
    datapoints, and the run's active units and training time (s)."""
    bounds = {label: bounds_on(run.vae, x, particle_counts, importance_samples, seed) for label, run in runs.items()}
    reference = bounds[baseline]["log_px"]
    return {label: {
        **{name: mean_with_error(values) for name, values in bounds[label].items()},
        "log_px_gain_over_baseline": mean_with_error(bounds[label]["log_px"] - reference),
        "active_units": run.metrics["test_active_units"],
        "train_seconds": run.metrics["train_seconds"],
    } for label, run in runs.items()}


def mean_with_error(values: torch.Tensor) -> dict[str, float]:
    """The mean of per-datapoint ``values`` and its standard error, std / sqrt(n) (0 for one value)."""
    count = values.numel()
    spread = values.std().item() / math.sqrt(count) if count > 1 else 0.0
    return {"mean": values.mean().item(), "standard_error": spread}


def gain_bars(ax: Axes, rows: dict[str, dict[str, Any]], baseline: str, ours_label: str,
              published: dict[str, float] | None = None, published_label: str = "published") -> None:
    """Bars of each row's ``log_px_gain_over_baseline`` (over the row ``baseline``, whose own gain is 0
    and is left out), with its paired standard error, beside the ``published`` gains where given."""
    labels = [label for label in rows if label != baseline]
    positions = np.arange(len(labels))
    ours = [rows[label]["log_px_gain_over_baseline"] for label in labels]
    width = 0.4 if published else 0.6
    ax.bar(positions - (width / 2 if published else 0), [gain["mean"] for gain in ours], width=width,
           yerr=[gain["standard_error"] for gain in ours], capsize=3, label=ours_label)
    if published:
        ax.bar(positions + width / 2, [published.get(label, math.nan) for label in labels], width=width,
               label=published_label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(positions, labels)
    ax.set_ylabel(f"log p(x) - log p(x) of the {baseline} ({UNITS})")
    ax.legend(fontsize=8, loc="upper left")


def plot_table(rows: dict[str, dict[str, Any]], importance_samples: int, dataset: str,
               budget: dict[str, Any]) -> Figure:
    """Left: each model's test bound L_k against k, ending in log p(x) at K = ``importance_samples``
    (on MNIST the published log p(x) goes in the legend: too far above ours to share the axis);
    right: the gain of log p(x) over the VAE, with its paired standard error, beside the published
    gain."""
    fig = new_figure(11, 4.2)
    ladder, gains = fig.subplots(1, 2)
    published = dataset == PUBLISHED_DATASET
    counts = [1, *BOUND_PARTICLES, importance_samples]
    for label, row in rows.items():
        values = [row["elbo"], *(row[f"bound_L{k}"] for k in BOUND_PARTICLES), row["log_px"]]
        ladder.errorbar(counts, [value["mean"] for value in values], marker="o", capsize=3,
                        yerr=[value["standard_error"] for value in values], label=f"trained as {label}")
    ladder.set_xscale("log")
    ladder.set_xticks(counts, [str(count) for count in counts])
    ladder.set(xlabel="k, importance samples per test image (log scale)",
               ylabel=f"test L_k; log p(x) at k = {importance_samples} ({UNITS})",
               title=f"bounds tighten with k ({epochs_text(budget['epochs'])}, batch {budget['batch_size']})")
    published_text = ", ".join(f"{label} {row['published_log_px']:.2f}" for label, row in rows.items())
    ladder.legend(fontsize=8, loc="lower right", title_fontsize=8,
                  title=f"published log p(x), 3280 epochs:\n{published_text}" if published else None)
    published_gains = ({label: row["published_log_px"] - PUBLISHED_LOG_PX["VAE"] for label, row in rows.items()}
                       if published else None)
    gain_bars(gains, rows, "VAE", f"ours ({epochs_text(budget['epochs'])})", published_gains,
              "published (3280 epochs)")
    gains.set_title(f"gain of log p(x) over the VAE, K = {importance_samples}, same test images")
    return fig


def epochs_text(epochs: int) -> str:
    """``epochs`` as words: "1 epoch", "3 epochs"."""
    return f"{epochs} epoch{'' if epochs == 1 else 's'}"
