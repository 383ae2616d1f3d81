"""Auto-Encoding Variational Bayes (Kingma & Welling 2013), Fig. 3: the estimated marginal
likelihood log p(x) on the training and test sets against the number of training samples seen, for
a small model (100 hidden units, N_z = 3) trained on 1000 and on 50000 MNIST digits::

    ppl-vae reproduce aevb-marginal-likelihood --out figures

With 1000 training digits the model overfits: the training log p(x) keeps rising while the test
log p(x) peaks and falls, as the KTH re-implementation (Pinheiro et al. 2021, Fig. 4) found with
Adam; with 50000 the two stay close. AEVB estimated log p(x) with an HMC-based estimator; we
importance-sample it with the trained encoder as the proposal (:func:`ppl_vae.evaluation.log_likelihood`,
K draws per datapoint, a lower bound on log p(x) in expectation that tightens as K grows).

Models, data and optimizers are those of ``aevb-lower-bound`` (:func:`aevb_config`): grayscale MNIST
with a Bernoulli decoder, one hidden tanh layer, minibatches of 100, one sample per datapoint. Nats
per datapoint, log-probabilities (higher is better). Writes ``aevb_marginal_likelihood.png``
(:func:`plot_marginal_likelihood`).
"""

from __future__ import annotations

from typing import Any

import pyro
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ppl_vae.data import evaluation_split
from ppl_vae.evaluation import log_likelihood
from ppl_vae.experiments.aevb_lower_bound import BATCH_SIZE, OPTIMIZERS, aevb_config, log_spaced_epochs
from ppl_vae.experiments.runner import EXPERIMENTS, Output, Reference, full, quick
from ppl_vae.plots import UNITS, new_figure
from ppl_vae.runs import Run

HIDDEN = 100  # AEVB's marginal-likelihood model: 100 hidden units, 3 latents
LATENT_DIM = 3
KTH_SOURCE = "KTH report (Pinheiro et al. 2021), Fig. 4a: the test curve turns at about -150 with N_train = 1000"


def log_px_on(run: Run, split: str, eval_size: int, importance_samples: int, seed: int) -> float:
    """Mean importance-sampled log p(x) of the first ``eval_size`` datapoints of ``split`` (nats per
    datapoint), with ``importance_samples`` draws from the encoder per datapoint."""
    x = evaluation_split(run.dataset, split)[:eval_size]
    pyro.set_rng_seed(seed)
    return log_likelihood(run.vae.model, run.vae.guide, x, num_samples=importance_samples,
                          particle_batch_size=min(importance_samples, 100)).mean().item()


@EXPERIMENTS.register("aevb-marginal-likelihood")
@quick(dataset="digits", train_sizes=(100, 1000), samples_seen=4000, evaluations=2, importance_samples=20,
       eval_size=100)
@full(seconds=787, references=[  # measured with the machine's 2 cores shared (load about 7): see the README
    Reference("curves.n1000.test_log_px_peak", low=-156, high=-145, published=-150.0, source=KTH_SOURCE),
    Reference("curves.n1000.test_drop_after_peak", low=6, high=25),
    Reference("curves.n1000.final_train_test_gap", low=40, high=70),
    Reference("curves.n50000.final_test_log_px", low=-138, high=-129),
    Reference("curves.n50000.final_train_test_gap", low=-2, high=10),
])
def aevb_marginal_likelihood(
    output: Output, *, dataset: str = "mnist", train_sizes: tuple[int, ...] = (1000, 50000),
    samples_seen: int = 2_000_000, evaluations: int = 8, optimizer: str = "adam", importance_samples: int = 500,
    eval_size: int = 500, seed: int = 0,
) -> dict[str, Any]:
    """On 1000 digits train log p(x) keeps rising as test log p(x) falls; on 50000 they stay close (AEVB Fig. 3).

    For each training-set size in ``train_sizes`` (the first N training images of ``dataset``),
    trains AEVB's 100-hidden-unit, N_z = 3 model with ``optimizer`` (a name in
    :data:`~ppl_vae.experiments.aevb_lower_bound.OPTIMIZERS`; Adam as the KTH report, whose
    overfitting this shows) for ``samples_seen`` training samples, in about ``evaluations`` stages
    spaced evenly on a log axis. After each stage, log p(x) is importance-sampled with
    ``importance_samples`` encoder draws on the first ``eval_size`` training images the model
    trains on and on the first ``eval_size`` test images. Draws ``aevb_marginal_likelihood.png``
    (:func:`plot_marginal_likelihood`) and returns every curve with its test peak, how far the test
    log p(x) fell after it and the final train-test gap (nats per datapoint), and the budget.
    """
    curves = {}
    for train_size in train_sizes:
        config = aevb_config(output, dataset, LATENT_DIM, HIDDEN, "bernoulli", optimizer, train_size, seed)
        stages = log_spaced_epochs(max(1, samples_seen // train_size), evaluations)
        curve: dict[str, Any] = {"train_size": train_size, "evaluated_at_epochs": stages, "samples_seen": [],
                                 "train_log_px": [], "test_log_px": [], "train_elbo": [], "test_elbo": []}
        for epochs, run in zip(stages, output.fit_in_stages(config, f"n{train_size}-{optimizer}", stages)):
            curve["samples_seen"].append(epochs * run.dataset.train.shape[0])
            for split in ("train", "test"):
                curve[f"{split}_log_px"].append(log_px_on(run, split, eval_size, importance_samples, seed))
                curve[f"{split}_elbo"].append(run.metrics[f"{split}_elbo"])
        peak = curve["test_log_px"].index(max(curve["test_log_px"]))
        curve.update(test_log_px_peak=curve["test_log_px"][peak], samples_seen_at_test_peak=curve["samples_seen"][peak],
                     final_train_log_px=curve["train_log_px"][-1], final_test_log_px=curve["test_log_px"][-1],
                     test_drop_after_peak=curve["test_log_px"][peak] - curve["test_log_px"][-1],
                     final_train_test_gap=curve["train_log_px"][-1] - curve["test_log_px"][-1])
        curves[f"n{train_size}"] = curve
    output.save_figure(plot_marginal_likelihood(curves, OPTIMIZERS[optimizer]["label"]), "aevb_marginal_likelihood.png")
    return {
        "units": "nats per datapoint, log-probabilities (higher is better): *_log_px importance-sampled with the "
                 "encoder as proposal, *_elbo the ELBO (train: the whole training subset; log p(x): its first "
                 "eval_size images and the first eval_size test images); samples_seen: training examples processed",
        "estimator": {"name": "importance sampling, encoder as proposal (AEVB used an HMC-based estimator)",
                      "samples_per_datapoint": importance_samples, "datapoints_per_split": eval_size},
        "budget": {"samples_seen": samples_seen, "batch_size": BATCH_SIZE, "optimizer": OPTIMIZERS[optimizer],
                   "hidden_units": HIDDEN, "latent_dim": LATENT_DIM, "dataset": dataset},
        "curves": curves,
    }


def plot_marginal_likelihood(curves: dict[str, dict[str, Any]], optimizer: str) -> Figure:
    """A panel per training-set size, as AEVB's Fig. 3: log p(x) on the training images (solid) and
    the test images (dashed) against training samples seen, the ELBO of each (thin, lighter) for
    comparison, and the test peak marked. All panels share their axes; the y axis starts a little
    below the lowest value of the later half of the stages, so that the first stages, far lower,
    do not squeeze the rest (the title says when some lie below)."""
    fig = new_figure(5.0 * len(curves), 4.0)
    axes = fig.subplots(1, len(curves), squeeze=False, sharex=True, sharey=True)[0]
    keys = ("train_log_px", "test_log_px", "train_elbo", "test_elbo")
    values = [value for curve in curves.values() for key in keys for value in curve[key]]
    later = [value for curve in curves.values() for key in keys for value in curve[key][len(curve[key]) // 2:]]
    low, high = min(later), max(values)
    margin = 0.1 * (high - low) if high > low else 1.0
    for ax, curve in zip(axes, curves.values()):
        samples = curve["samples_seen"]
        for split, colour, style in (("train", "C0", "o-"), ("test", "C1", "s--")):
            ax.plot(samples, curve[f"{split}_log_px"], style, color=colour, markersize=4, label=f"{split}: log p(x)")
            ax.plot(samples, curve[f"{split}_elbo"], style, color=colour, markersize=2, linewidth=0.8, alpha=0.5,
                    label=f"{split}: ELBO")
        ax.plot(curve["samples_seen_at_test_peak"], curve["test_log_px_peak"], "*", color="C3", markersize=12)
        ax.set(xscale="log", xlabel="training samples seen", title=f"N_train = {curve['train_size']}")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(low - margin, high + margin)
    axes[0].set_ylabel(f"log-likelihood ({UNITS})")
    clipped = "; earlier stages lie below the y axis" if min(values) < low - margin else ""
    fig.suptitle(f"MNIST, {HIDDEN} hidden units, N_z = {LATENT_DIM}, {optimizer}: log p(x) importance-sampled with "
                 f"the encoder as proposal{clipped}", fontsize=10)
    peak = Line2D([], [], color="C3", marker="*", linestyle="", markersize=10, label="test log p(x) peak")
    axes[0].legend(handles=[*axes[0].get_legend_handles_labels()[0], peak], fontsize=8, loc="upper left")
    return fig
