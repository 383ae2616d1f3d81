"""Taming VAEs (Rezende & Viola 2018), Fig. 5: GECO, the ELBO and a hand-tuned β compared at matched
reconstruction error, by the average and the marginal KL each reaches::

    ppl-vae reproduce geco-vs-beta --out figures

Writes ``geco_comparison.png`` and the table ``geco_comparison.md``. Reconstruction errors are mean
squared errors per dimension, E_q ||x - E[x|z]||² / D, in squared data units; KLs are in nats per
datapoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ppl_vae.evaluation import marginal_kl
from ppl_vae.experiments.common import one_hidden_layer_config, squared_error
from ppl_vae.experiments.runner import EXPERIMENTS, Output, Reference, full, quick
from ppl_vae.runs import Run

MEANFIELD_ELBO = {"name": "meanfield"}


@EXPERIMENTS.register("geco-vs-beta")
@quick(dataset="digits", epochs=2, betas=(0.5, 2.0), eval_size=200)
@full(seconds=95, references=[Reference("matched.1.mse", 0.0062, 0.0078), Reference("matched.1.average_kl", 4.5, 8.0),
                              Reference("matched.0.average_kl", 2.3, 4.0)])
def geco_vs_beta(
    output: Output, *, dataset: str = "frey", epochs: int = 100, betas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0),
    eval_size: int = 1000,
) -> dict[str, Any]:
    """GECO reaches the KLs of the β-VAE whose error matches its own, without a β sweep (Taming VAEs, Fig. 5).

    Trains the ELBO, then GECO with the ELBO's training error as its tolerance (GECO constrains the
    error on the training batches), then β-VAEs with β annealed linearly from 0 over the first half
    of training to each of ``betas``; the β run whose test error comes closest to GECO's is the
    hand-tuned match. All are one-hidden-layer VAEs (N_z = 10) on ``dataset`` for ``epochs``, with
    the mean-field ELBO; errors and the marginal KL are measured on the first ``eval_size`` test
    points. Draws ``geco_comparison.png`` (:func:`plot_comparison`), writes ``geco_comparison.md``
    and returns the rows of both.
    """
    elbo_run = output.fit(one_hidden_layer_config(output, dataset, epochs, MEANFIELD_ELBO), "elbo")
    elbo = summary("ELBO", "β = 1", elbo_run, eval_size)
    tolerance = math.sqrt(squared_error(elbo_run.vae, elbo_run.dataset.train[:eval_size]))
    geco = {"name": "geco", "wraps": "meanfield", "tolerance": tolerance, "rate": 1e-3}
    geco_run = output.fit(one_hidden_layer_config(output, dataset, epochs, geco), "geco")
    geco_row = summary("GECO", f"κ = {tolerance:.4f}, final λ = {geco_run.objective.lam:.3g}", geco_run, eval_size)
    sweep = []
    for beta in betas:
        schedule = {"name": "linear", "start": 0.0, "end": beta, "duration": max(1, epochs // 2)}
        run = output.fit(one_hidden_layer_config(output, dataset, epochs, {**MEANFIELD_ELBO, "beta": schedule}),
                         f"annealed-beta={beta}")
        sweep.append(summary("annealed β", f"β: 0 -> {beta}", run, eval_size))
    matched = min(sweep, key=lambda row: abs(math.log(row["mse"] / geco_row["mse"])))
    rows = [elbo, geco_row, {**matched, "method": "annealed β (matched)"}]
    output.save_figure(plot_comparison(rows, sweep, tolerance), "geco_comparison.png")
    test_points = min(eval_size, elbo_run.dataset.test.shape[0])
    write_table(rows + sweep, output.path("geco_comparison.md"), f"{dataset} (test sample of {test_points})", epochs)
    return {"units": "mse: ||x - g(z)||² / D (squared data units); average_kl, marginal_kl: nats per datapoint",
            "tolerance": tolerance, "matched": rows, "beta_sweep": sweep}


def summary(method: str, setting: str, run: Run, eval_size: int) -> dict[str, Any]:
    """One row: the test error, the average KL E_x KL(q(z|x) || p(z)) and the marginal KL(q(z) || p(z))."""
    x = run.dataset.test[:eval_size]
    return {"method": method, "setting": setting, "mse": squared_error(run.vae, x),
            "average_kl": run.metrics["test_kl"], "marginal_kl": marginal_kl(run.vae.model, run.vae.guide, x)}


def plot_comparison(rows: list[dict[str, Any]], sweep: list[dict[str, Any]], tolerance: float) -> Figure:
    """Left: test error against average KL of the β sweep, with the ELBO, GECO and the matched β
    marked; right: the average and marginal KL of those three."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    plane, bars = fig.subplots(1, 2)
    plane.plot([r["average_kl"] for r in sweep], [r["mse"] for r in sweep], "o-", color="gray",
               label="annealed β sweep")
    for row in sweep:
        plane.annotate(row["setting"].split("-> ")[1], (row["average_kl"], row["mse"]), fontsize=8,
                       xytext=(3, 3), textcoords="offset points")
    for row, marker in zip(rows, ("s", "*", "D")):
        plane.plot(row["average_kl"], row["mse"], marker, markersize=10, label=row["method"])
    plane.axhline(tolerance**2, color="red", linestyle="--", linewidth=1, label="GECO tolerance κ²")
    plane.set(xlabel="average KL(q(z|x) || p(z)) (nats)", ylabel="test ||x - g(z)||² / D", yscale="log",
              title="test error against KL")
    plane.legend(fontsize=8)
    positions = np.arange(len(rows))
    bars.bar(positions - 0.2, [r["average_kl"] for r in rows], width=0.4, label="average KL E_x KL(q(z|x)||p(z))")
    bars.bar(positions + 0.2, [r["marginal_kl"] for r in rows], width=0.4, label="marginal KL KL(q(z)||p(z))")
    bars.set_xticks(positions, [r["method"] for r in rows], fontsize=8)
    bars.set(ylabel="nats per datapoint", title="KL reached (GECO and the matched β: same error)")
    bars.set_ylim(top=1.3 * max(r["average_kl"] for r in rows))
    bars.legend(fontsize=8, loc="upper left")
    return fig


def write_table(rows: list[dict[str, Any]], path: Path, dataset: str, epochs: int) -> Path:
    """The rows as a Markdown table."""
    lines = [f"GECO vs ELBO vs annealed β on {dataset}, {epochs} epochs.",
             "MSE: ||x - g(z)||² / D (squared data units); KLs in nats per datapoint.", "",
             "| method | setting | test MSE | average KL | marginal KL |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['method']} | {r['setting']} | {r['mse']:.5f} | {r['average_kl']:.2f} | {r['marginal_kl']:.2f} |"
              for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path
