"""VAE with a VampPrior (Tomczak & Welling 2018): the same VAE (the shipped ``mnist`` config:
dynamically binarized MNIST, 784-200-200-50 tanh MLPs, Adam) with the standard, mixture, VampPrior
and flow priors, and with the diagonal and the IAF posterior, every row trained for the same epochs
with the same KL warm-up::

    ppl-vae reproduce priors-table --out figures

The warm-up is Tomczak & Welling's: β rises linearly from 0 to 1, over 100 of at most 2000 epochs in
their code, i.e. over the first :data:`WARMUP_FRACTION` of training, which we keep as a fraction of
our much shorter budget. Each model is scored on one fixed subset of test images by its ELBO and by
log p(x) importance-sampled from its encoder, in nats per datapoint (log-probabilities, higher is
better), with standard errors over the test images. Writes ``priors_table.png`` (:func:`plot_table`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ppl_vae.data import evaluation_split, load_dataset
from ppl_vae.experiments.common import shipped_config
from ppl_vae.experiments.iwae_table import (PUBLISHED_DATASET, SCORE_UNITS, epochs_text, gain_bars, score_rows,
                                            training_budget)
from ppl_vae.experiments.runner import EXPERIMENTS, Output, Reference, full, quick
from ppl_vae.plots import UNITS, new_figure

ROWS = {  # each row's config overrides of the shipped mnist config
    "standard prior": [],
    "mixture prior": ["model.prior={name: mixture, num_components: 10}"],
    "VampPrior": ["model.prior={name: vamp, num_pseudo: 500}"],
    "flow prior": ["model.prior={name: flow, num_flows: 4}"],
    "IAF posterior": ["model.posterior={name: iaf, num_flows: 2}"],
}
DESCRIPTIONS = {
    "standard prior": "p(z) = N(0, I), diagonal Normal posterior",
    "mixture prior": "mixture of 10 learned diagonal Normals",
    "VampPrior": "VampPrior, 500 learned pseudo-inputs",
    "flow prior": "N(0, I) through 4 affine couplings",
    "IAF posterior": "standard prior, diagonal posterior through 2 IAFs",
}
PUBLISHED_LOG_PX = {  # test log p(x) on dynamically binarized MNIST, one stochastic layer
    "standard prior": -86.76,  # Burda et al. 2015, Table 1: the VAE with our very net (784-200-200-50 tanh)
    "VampPrior": -85.6,  # Tomczak & Welling 2018, one-layer VAE with 500 pseudo-inputs (about)
}
PUBLISHED_SOURCES = {
    "standard prior": "Burda et al. 2015, Table 1 (VAE, the same 784-200-200-50 net, 3280 epochs)",
    "VampPrior": "Tomczak & Welling 2018, one-layer VAE, 500 pseudo-inputs (about -85.6; their net and budget)",
}
WARMUP_FRACTION = 100 / 2000  # Tomczak & Welling's code: 100 warm-up epochs of at most 2000


@EXPERIMENTS.register("priors-table")
@quick(dataset="digits", epochs=2, importance_samples=50, test_size=50)
@full(seconds=1799, references=[  # measured on 2 CPU cores shared with other jobs
    Reference("rows.standard prior.log_px.mean", low=-116.5, high=-109.5, published=PUBLISHED_LOG_PX["standard prior"],
              source=PUBLISHED_SOURCES["standard prior"]),
    Reference("rows.mixture prior.log_px.mean", low=-142.0, high=-125.0),
    Reference("rows.VampPrior.log_px.mean", low=-206.0, high=-190.0, published=PUBLISHED_LOG_PX["VampPrior"],
              source=PUBLISHED_SOURCES["VampPrior"]),
    Reference("rows.flow prior.log_px.mean", low=-167.0, high=-147.0),
    Reference("rows.IAF posterior.log_px.mean", low=-113.5, high=-106.5),
    Reference("rows.IAF posterior.log_px_gain_over_baseline.mean", low=1.0, high=5.0),
])
def priors_table(
    output: Output, *, dataset: str = "mnist-binarized", epochs: int = 5, importance_samples: int = 1000,
    test_size: int = 500, seed: int = 0,
) -> dict[str, Any]:
    """A VampPrior (Tomczak & Welling 2018) or a richer prior or posterior raises MNIST test log p(x) over the standard VAE.

    Trains the shipped ``mnist`` config on ``dataset`` for ``epochs`` once per row of :data:`ROWS`,
    each with β rising linearly from 0 to 1 over the first :data:`WARMUP_FRACTION` of its optimizer
    steps, then scores each model on the first ``test_size`` test images: the ELBO and log p(x) with
    ``importance_samples`` draws (means with standard errors) and the paired gain of log p(x) over
    the standard prior's on the same images. Draws ``priors_table.png`` (:func:`plot_table`).
    """
    train_examples = load_dataset(dataset).train.shape[0]
    batch_size = shipped_config("mnist", output, []).data.batch_size
    warmup_steps = warmup_duration(epochs, math.ceil(train_examples / batch_size), WARMUP_FRACTION)
    common = [f"data.name={dataset}", f"seed={seed}", f"train.epochs={epochs}", f"train.eval_every={epochs}",
              "train.checkpoint_every=1", f"objective.beta={{name: linear, start: 0.0, end: 1.0, "
              f"duration: {warmup_steps}, by: step}}"]
    runs = {label: output.fit(shipped_config("mnist", output, [*common, *overrides]), label)
            for label, overrides in ROWS.items()}
    test = evaluation_split(runs["standard prior"].dataset, "test")[:test_size]
    rows = score_rows(runs, test, (), importance_samples, "standard prior", seed)
    for label, row in rows.items():
        row.update(description=DESCRIPTIONS[label], published_log_px=PUBLISHED_LOG_PX.get(label))
    budget = {**training_budget(runs["standard prior"]), "warmup_steps": warmup_steps,
              "warmup": f"β linear from 0 to 1 over the first {warmup_steps} steps ({WARMUP_FRACTION:.0%} of "
                        "training)"}
    output.save_figure(plot_table(rows, importance_samples, dataset, budget), "priors_table.png")
    return {
        "units": SCORE_UNITS,
        "dataset": dataset, "test_size": test.shape[0], "importance_samples": importance_samples, "budget": budget,
        "published_budget": {"epochs": "at most 2000, early stopping after 50 without improvement",
                             "warmup_epochs": 100, "batch_size": 100, "optimizer": "adam", "lr": 5e-4},
        "rows": rows,
    }


def warmup_duration(epochs: int, steps_per_epoch: int, fraction: float) -> int:
    """The number of optimizer steps a warm-up over ``fraction`` of ``epochs`` epochs lasts: at least 1."""
    return max(1, round(fraction * epochs * steps_per_epoch))


def plot_table(rows: dict[str, dict[str, Any]], importance_samples: int, dataset: str,
               budget: dict[str, Any]) -> Figure:
    """Left: each row's test ELBO and log p(x) with their standard errors (and the published log p(x)
    where there is one, on MNIST); right: the gain of log p(x) over the standard prior, with its
    paired standard error."""
    fig = new_figure(12, 4.4)
    values, gains = fig.subplots(1, 2, width_ratios=[1.2, 1])
    published = dataset == PUBLISHED_DATASET
    positions = np.arange(len(rows))
    for offset, key, marker, label in ((-0.12, "elbo", "s", "test ELBO (ours)"),
                                       (0.12, "log_px", "o", f"test log p(x), K = {importance_samples} (ours)")):
        values.errorbar(positions + offset, [row[key]["mean"] for row in rows.values()], linestyle="none",
                        yerr=[row[key]["standard_error"] for row in rows.values()], marker=marker, capsize=3,
                        label=label)
    if published:
        values.plot(positions + 0.12, [math.nan if row["published_log_px"] is None else row["published_log_px"]
                                       for row in rows.values()],
                    "*", markersize=13, color="C3", markeredgecolor="black", label="published log p(x)")
    values.set_xticks(positions, list(rows))
    values.set(ylabel=f"{UNITS} (log-probability; higher is better)",
               title=f"{epochs_text(budget['epochs'])}, batch {budget['batch_size']}, "
                     f"KL warm-up over {budget['warmup_steps']} steps")
    values.legend(fontsize=8, loc="best")
    gain_bars(gains, rows, "standard prior", f"ours ({epochs_text(budget['epochs'])})")
    gains.set_title("gain of log p(x) over the standard prior, same test images")
    return fig
