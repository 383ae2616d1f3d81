"""Taming VAEs (Rezende & Viola 2018): GECO's information plane, GECO against the ELBO and a
hand-tuned β at matched reconstruction error, and the phase transitions of a β-VAE.

    python -m ppl_vae.experiments.geco --out figures/

writes ``geco_information_plane.png`` (Fig. 3), ``geco_comparison.png`` with
``geco_comparison.md`` (Fig. 5) and ``beta_phase_transitions.png`` (Fig. 2). The default budgets are
small (a few minutes on two CPU cores); raise ``--scale`` for longer runs. Reconstruction errors
are mean squared errors per dimension, E_q ||x - E[x|z]||² / D, in squared data units; KLs are
in nats per datapoint.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from ppl_vae.config import Config, from_dict  # noqa: E402
from ppl_vae.evaluate import marginal_kl  # noqa: E402
from ppl_vae.models.vae import VAE  # noqa: E402
from ppl_vae.train import Run, fit  # noqa: E402

EVAL_SIZE = 1000  # test points for the reconstruction error and the marginal KL


def vae_config(dataset: str, epochs: int, objective: dict[str, Any], latent_dim: int = 10, hidden: int = 200,
               likelihood: Any = "bernoulli", lr: float = 1e-3, seed: int = 0) -> Config:
    """A one-hidden-layer tanh VAE trained with Adam, with the given objective section."""
    net = {"name": "mlp", "hidden_sizes": [hidden], "activation": "tanh"}
    return from_dict({
        "seed": seed,
        "data": {"name": dataset, "batch_size": 100},
        "model": {"latent_dim": latent_dim, "encoder": net, "decoder": net, "likelihood": likelihood},
        "objective": {"elbo": "meanfield", **objective},
        "optim": {"name": "adam", "lr": lr},
        "train": {"epochs": epochs, "eval_every": epochs, "checkpoint_every": epochs, "progress": False},
    })


@torch.no_grad()
def squared_error(vae: VAE, x: torch.Tensor) -> float:
    """E_q(z|x) ||x - E[x|z]||² / D averaged over ``x`` (one z per datapoint), in squared data units."""
    return ((x - vae.decoded_mean(vae.encode(x).sample())) ** 2).mean().item()


def _test_sample(run: Run) -> torch.Tensor:
    return run.dataset.test[:EVAL_SIZE]


# -- Fig. 3: the information plane ----------------------------------------------------------------


def plot_information_plane(runs: dict[str, tuple[Run, float]], path: Path) -> Path:
    """Per-step reconstruction error (MSE per dimension) against KL of GECO runs, coloured by step,
    with the tolerance κ² as a dashed line; one panel per ``title: (run, κ)``."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.2), squeeze=False)
    for ax, (title, (run, tolerance)) in zip(axes[0], runs.items()):
        history, dims = run.geco.history, run.dataset.data_dim
        error = np.array(history["constraint"]) / dims + tolerance**2
        points = ax.scatter(history["kl"], error, c=np.arange(len(error)), cmap="viridis", s=4)
        ax.axhline(tolerance**2, color="red", linestyle="--", label=f"tolerance κ² = {tolerance}²")
        ax.set(xlabel="KL(q(z|x) || p(z)) (nats)", ylabel="||x - g(z)||² / D (squared data units)",
               yscale="log", title=title)
        ax.legend()
        fig.colorbar(points, ax=ax, label="step")
    fig.suptitle("GECO in the information plane (Taming VAEs Fig. 3); batch values")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def information_plane(out: Path, scale: float) -> Path:
    specs = {
        "MNIST (grayscale, N_z=10)": ("mnist", max(1, round(3 * scale)), 0.15),
        "Frey Face (N_z=10)": ("frey", max(1, round(100 * scale)), 0.08),
    }
    runs = {}
    for title, (dataset, epochs, tolerance) in tqdm(specs.items(), desc="information plane"):
        geco = {"tolerance": tolerance, "rate": 1e-4 if dataset == "mnist" else 1e-3}
        runs[title] = (fit(vae_config(dataset, epochs, {"geco": geco})), tolerance)
    return plot_information_plane(runs, out / "geco_information_plane.png")


# -- Fig. 5: GECO, the ELBO and a hand-tuned β at matched reconstruction error ----------------


def _summary(method: str, setting: str, run: Run) -> dict[str, Any]:
    x = _test_sample(run)
    return {"method": method, "setting": setting, "mse": squared_error(run.vae, x),
            "average_kl": run.metrics["test_kl"], "marginal_kl": marginal_kl(run.vae, x)}


def compare(out: Path, scale: float, dataset: str = "frey", betas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
            ) -> list[dict[str, Any]]:
    """Train the ELBO, then GECO with the ELBO's training error as its tolerance (GECO constrains the
    error on the training batches), then β-VAEs with β annealed linearly from 0 over the first half
    of training to each of ``betas``; the β run whose test error comes closest to GECO's is the
    hand-tuned match."""
    epochs = max(2, round(100 * scale))
    elbo_run = fit(vae_config(dataset, epochs, {}))
    elbo = _summary("ELBO", "β = 1", elbo_run)
    tolerance = math.sqrt(squared_error(elbo_run.vae, elbo_run.dataset.train[:EVAL_SIZE]))
    geco_run = fit(vae_config(dataset, epochs, {"geco": {"tolerance": tolerance, "rate": 1e-3}}))
    geco = _summary("GECO", f"κ = {tolerance:.4f}, final λ = {geco_run.geco.lam:.3g}", geco_run)
    sweep = []
    for beta in tqdm(betas, desc="β sweep"):
        schedule = {"name": "linear", "start": 0.0, "end": beta, "duration": max(1, epochs // 2)}
        sweep.append(_summary("annealed β", f"β: 0 -> {beta}", fit(vae_config(dataset, epochs, {"beta": schedule}))))
    matched = min(sweep, key=lambda row: abs(math.log(row["mse"] / geco["mse"])))
    rows = [elbo, geco, {**matched, "method": "annealed β (matched)"}]
    plot_comparison(rows, sweep, tolerance, out / "geco_comparison.png")
    write_table(rows + sweep, out / "geco_comparison.md", f"{dataset} (test sample of {len(_test_sample(elbo_run))})",
                epochs)
    (out / "geco_comparison.json").write_text(json.dumps({"matched": rows, "beta_sweep": sweep}, indent=1))
    return rows


def plot_comparison(rows: list[dict[str, Any]], sweep: list[dict[str, Any]], tolerance: float, path: Path) -> Path:
    fig, (plane, bars) = plt.subplots(1, 2, figsize=(11, 4.2))
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
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_table(rows: list[dict[str, Any]], path: Path, dataset: str, epochs: int) -> Path:
    lines = [f"GECO vs ELBO vs annealed β on {dataset}, {epochs} epochs.",
             "MSE: ||x - g(z)||² / D (squared data units); KLs in nats per datapoint.", "",
             "| method | setting | test MSE | average KL | marginal KL |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['method']} | {r['setting']} | {r['mse']:.5f} | {r['average_kl']:.2f} | {r['marginal_kl']:.2f} |"
              for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- Fig. 2: β-VAE phase transitions on a 2-D mixture ----------------------------------------------


def phase_transitions(out: Path, scale: float, betas: np.ndarray | None = None) -> dict[str, Any]:
    """β-VAEs on the four-cluster ``mixture2d`` over a grid of β: the expected reconstruction error,
    its second derivative in log β, and the critical βs at the peaks of that derivative."""
    betas = np.geomspace(0.1, 30, 22) if betas is None else betas
    epochs = max(2, round(50 * scale))
    likelihood = {"name": "gaussian", "sigma": 0.1, "squash": "none"}
    errors = []
    for beta in tqdm(betas, desc="β-VAE phase transitions"):
        objective = {"beta": {"name": "constant", "value": float(beta)}}
        run = fit(vae_config("mixture2d", epochs, objective, latent_dim=2, hidden=32, likelihood=likelihood, lr=1e-2))
        errors.append(squared_error(run.vae, run.dataset.test) * run.dataset.data_dim)
    log_beta = np.log(betas)
    curvature = np.gradient(np.gradient(errors, log_beta), log_beta)
    peaks = [i for i in range(1, len(betas) - 1)
             if curvature[i] > max(curvature[i - 1], curvature[i + 1]) and curvature[i] > 0.2 * curvature.max()]
    critical = [float(betas[i]) for i in peaks]
    plot_phase_transitions(betas, np.array(errors), curvature, critical, out / "beta_phase_transitions.png")
    return {"betas": betas.tolist(), "errors": errors, "critical_betas": critical}


def plot_phase_transitions(betas: np.ndarray, errors: np.ndarray, curvature: np.ndarray, critical: list[float],
                           path: Path) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 6), sharex=True)
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
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="figures", help="folder for the figures and the table (default: figures)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every training budget (default: 1)")
    parser.add_argument("--only", choices=("plane", "compare", "phases"), help="make one figure only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "phases"):
        result = phase_transitions(out, args.scale)
        print(f"critical β (KL weight): {', '.join(f'{b:.3g}' for b in result['critical_betas'])}")
    if args.only in (None, "compare"):
        for row in compare(out, args.scale):
            print(f"{row['method']:22s} test MSE {row['mse']:.5f} (squared data units), average KL "
                  f"{row['average_kl']:.2f} nats, marginal KL {row['marginal_kl']:.2f} nats")
    if args.only in (None, "plane"):
        print(f"wrote {information_plane(out, args.scale)}")


if __name__ == "__main__":
    main()
