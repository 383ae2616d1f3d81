"""Runs: train a config into a run directory (:func:`fit`), continue it, and evaluate it (:func:`evaluate_run`).

The data flow of one run: config → :func:`ppl_vae.build.check` and :func:`~ppl_vae.build.build`
(dataset, VAE, objective, β schedule, optimizer) → :func:`ppl_vae.training.loop.train` with its
callbacks → end-of-training evaluation → figures. A run directory holds:

- ``config.yaml``: the resolved config (every default filled in);
- ``history.json``: one record per epoch (train terms averaged over the epoch's batches as the
  weights changed; test terms, on evaluated epochs, at the epoch's end);
- ``objective.json``: the objective's own state, when it has any (GECO's λ and per-step log);
- ``checkpoint.pt`` (:mod:`ppl_vae.training.checkpoint`), ``metrics.json`` and the figures;
- ``eval.json`` and ``kl_per_dim.png`` after ``ppl-vae eval``.

Numbers are nats per datapoint, log-probabilities (higher is better): elbo = reconstruction - kl.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import SVI

from ppl_vae.build import Setup, build, build_vae, check, resolve_device
from ppl_vae.config import Config, apply_overrides, from_dict, load_config, save_config, to_dict
from ppl_vae.data import Dataset, batches, evaluation_split, load_dataset
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation import (ACTIVE_UNIT_THRESHOLD, PSIS_KHAT_THRESHOLD, evaluate_elbo, importance_sample,
                                latent_health)
from ppl_vae.models.vae import VAE
from ppl_vae.objectives import Objective
from ppl_vae.training.callbacks import Checkpointing, EpochEvaluation, InterruptHandler, NonFiniteGuard, ProgressBar
from ppl_vae.training.checkpoint import load_checkpoint, restore, save_checkpoint, snapshot
from ppl_vae.training.loop import train
from ppl_vae.training.state import TrainingState

CHECKPOINT = "checkpoint.pt"
EVAL_FILE = "eval.json"
UNITS = "nats per datapoint; elbo = reconstruction - kl, log-probability sign (higher is better)"


@dataclass
class Run:
    """A trained run: its config, model, data, objective, per-epoch history and final metrics."""

    config: Config
    vae: VAE
    dataset: Dataset
    objective: Objective
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None


def fit(config: Config, out_dir: str | Path | None = None, resume: bool = False) -> Run:
    """Train a VAE as ``config`` says, writing the run directory ``out_dir`` if one is given.

    With ``resume=True`` the run continues from ``out_dir/checkpoint.pt`` (the config's
    ``train.epochs`` may be raised to train longer). Returns the :class:`Run`. Ctrl-C saves a
    checkpoint and raises :class:`~ppl_vae.errors.TrainingInterrupted` (a KeyboardInterrupt).
    """
    out_dir = Path(out_dir) if out_dir is not None else None
    if resume and out_dir is None:
        raise ConfigError("resume needs the run directory that holds checkpoint.pt.")
    checkpoint = load_checkpoint(out_dir / CHECKPOINT) if resume else None
    setup = build(check(config))
    state = TrainingState(generator=torch.Generator().manual_seed(config.seed))
    if checkpoint is not None:
        restore(checkpoint, out_dir / CHECKPOINT, state, setup.vae, setup.optimizer, setup.objective)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
    vae, objective, dataset = setup.vae, setup.objective, setup.dataset
    svi = SVI(vae.model, vae.guide, setup.optimizer, loss=objective, loss_and_grads=objective.loss_and_grads)
    train(svi, objective, setup.schedule, _batches(setup), config.train.epochs, state, _callbacks(setup, out_dir))
    run = Run(config, vae, dataset, objective, state.history, out_dir=out_dir)
    run.metrics = final_metrics(run, state)
    if out_dir is not None:
        run_figures(run)
    run.metrics["seconds"] = state.elapsed()
    if out_dir is not None:
        (out_dir / "metrics.json").write_text(json.dumps(run.metrics, indent=1))
    return run


def _batches(setup: Setup):
    """The epoch's batches as the model's data arguments: ``(x,)``."""
    train_x, batch_size, binarize = setup.dataset.train, setup.config.data.batch_size, setup.dataset.dynamic_binarization
    return lambda generator: ((x,) for x in batches(train_x, batch_size, generator, binarize=binarize))


def _callbacks(setup: Setup, out_dir: Path | None) -> list:
    """The callbacks of a run, in the order they act at an epoch's end: evaluate, checkpoint, stop on Ctrl-C."""
    config, vae, objective = setup.config, setup.vae, setup.objective
    test_x = evaluation_split(setup.dataset, "test")
    steps_per_epoch = math.ceil(setup.dataset.train.shape[0] / config.data.batch_size)
    save = None
    if out_dir is not None:
        def save(state: TrainingState) -> Path:
            return save_run_state(out_dir, setup, state)
    callbacks = [
        NonFiniteGuard(vae),
        ProgressBar(config.train.epochs * steps_per_epoch, objective.bound, objective.status,
                    config.train.progress, steps_per_epoch),
        EpochEvaluation(lambda: evaluate_elbo(vae.model, vae.guide, test_x, batch_size=config.train.eval_batch_size),
                        config.train.eval_every, config.train.epochs),
    ]
    if save is not None:
        callbacks.append(Checkpointing(save, config.train.checkpoint_every, config.train.epochs))
    callbacks.append(InterruptHandler(save, f"Continue with: ppl-vae train --resume {out_dir}"))
    return callbacks


def save_run_state(out_dir: Path, setup: Setup, state: TrainingState) -> Path:
    """Write the checkpoint, ``history.json`` and (when the objective has state) ``objective.json``."""
    path = out_dir / CHECKPOINT
    save_checkpoint(path, snapshot(to_dict(setup.config), state, setup.vae, setup.optimizer, setup.objective))
    (out_dir / "history.json").write_text(json.dumps(state.history, indent=1))
    objective_state = setup.objective.state_dict()
    if objective_state:
        (out_dir / "objective.json").write_text(json.dumps(objective_state))
    return path


def final_metrics(run: Run, state: TrainingState) -> dict[str, Any]:
    """The end-of-training numbers: the ELBO on the whole training set (one pass with the final
    weights, unlike the history's running average), the last epoch's test terms (every run evaluates
    its last epoch), and the cheap latent diagnostics."""
    vae, config = run.vae, run.config
    test_x = evaluation_split(run.dataset, "test")
    train_x = evaluation_split(run.dataset, "train")
    last = run.history[-1] if run.history else {}
    health = latent_health(vae.model, vae.guide, test_x, aggregate=False)  # 'ppl-vae eval' for the rest
    return {
        "train_elbo": evaluate_elbo(vae.model, vae.guide, train_x, batch_size=config.train.eval_batch_size)["elbo"],
        **{name: value for name, value in last.items() if name.startswith("test_")},
        "objective": config.objective.name, "epochs": state.epoch, "steps": state.step,
        "device": str(next(vae.parameters()).device), "num_parameters": sum(p.numel() for p in vae.parameters()),
        "train_seconds": last.get("seconds", state.seconds), "units": UNITS,
        "test_kl_per_dim": health["kl_per_dim"], "test_active_units": health["active_units"],
    }


def run_figures(run: Run) -> list[Path]:
    """Write the figures of a finished run into ``run.out_dir``: reconstructions.png, samples.png,
    training_curves.png and, for a 2-D latent space, latent_scatter.png and manifold.png. Returns
    their paths."""
    from ppl_vae import plots  # matplotlib is imported only when figures are drawn

    out, data, vae = Path(run.out_dir), run.dataset, run.vae
    test_x, test_labels = data.split("test")
    was_training = vae.training
    vae.eval()
    try:
        figures = {
            "reconstructions.png": plots.plot_reconstructions(vae, test_x, data.image_shape),
            "samples.png": plots.plot_samples(vae, data.image_shape),
            "training_curves.png": plots.plot_training_curves(run.history, status_panels=run.objective.status_panels,
                                                              term_labels=run.objective.term_labels),
        }
        if vae.latent_dim == 2:
            figures["latent_scatter.png"] = plots.plot_latent_scatter(vae, test_x, test_labels)
            figures["manifold.png"] = plots.plot_manifold(vae, data.image_shape)
    finally:
        vae.train(was_training)
    return [plots.save_figure(fig, out / name) for name, fig in figures.items()]


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config a run was started with (from its checkpoint), with ``--set`` overrides applied."""
    values = load_checkpoint(Path(run_dir) / CHECKPOINT)["config"]
    return from_dict(apply_overrides(values, overrides or []))


# -- evaluating a finished run ---------------------------------------------------------------------


def load_trained_vae(run_dir: str | Path, config: Config, dataset: Dataset, device: str | torch.device = "cpu") -> VAE:
    """The VAE of a run directory: rebuilt from its config for ``dataset``'s data and image sizes,
    weights from its checkpoint.pt."""
    vae = build_vae(config.model, dataset.data_dim, dataset.image_shape).to(device)
    vae.load_state_dict(load_checkpoint(Path(run_dir) / CHECKPOINT, map_location=device)["module"])
    return vae.eval()


def evaluate_run(
    run_dir: str | Path,
    num_samples: int = 5000,
    split: str = "test",
    *,
    batch_size: int = 100,
    particle_batch_size: int = 100,
    data_dir: str | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Importance-sampled log p(x), ELBO, PSIS/ESS diagnostics and latent health of a run on one split.

    Writes ``eval.json`` and ``kl_per_dim.png`` into ``run_dir`` and returns the dict it wrote. Units:
    nats per datapoint (log-probabilities), bits per dimension for ``bits_per_dim``, seconds.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    torch_device = resolve_device(device)
    config = check(load_config(run_dir / "config.yaml"))
    dataset = load_dataset(config.data.name, data_dir or config.data.data_dir, device=torch_device)
    vae = load_trained_vae(run_dir, config, dataset, torch_device)
    x = evaluation_split(dataset, split)
    pyro.set_rng_seed(seed)
    estimate = importance_sample(vae.model, vae.guide, x, num_samples=num_samples, batch_size=batch_size,
                                 particle_batch_size=particle_batch_size, progress=progress)
    health = latent_health(vae.model, vae.guide, x)
    khat = estimate.khat
    results = {
        "split": split,
        "num_datapoints": x.shape[0],
        "num_samples": num_samples,
        "log_likelihood": estimate.log_likelihood.mean().item(),
        "log_likelihood_std_error": (estimate.log_likelihood.std() / math.sqrt(x.shape[0])).item(),
        "elbo": estimate.elbo.mean().item(),
        "bits_per_dim": estimate.bits_per_dim(dataset.data_dim),
        "ess_mean": estimate.ess.mean().item(),
        "ess_min": estimate.ess.min().item(),
        "psis_khat_max": _finite_or_none(khat.max().item()),
        "psis_khat_mean": _finite_or_none(khat.mean().item()),
        "psis_khat_above_0.7": int((khat > PSIS_KHAT_THRESHOLD).sum()),
        **health,
        "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
        "seed": seed,
        "units": "nats per datapoint (log-probabilities, higher is better); bits_per_dim = -log p(x) / "
                 "(data_dim ln 2); ess in samples; seconds of wall time",
    }
    if health["kl_per_dim"] is not None:  # only a factorized prior and posterior split the KL by dimension
        from ppl_vae.plots import plot_kl_per_dim

        plot_kl_per_dim(health["kl_per_dim"], [a > ACTIVE_UNIT_THRESHOLD for a in health["unit_activity"]],
                        run_dir / "kl_per_dim.png")
    results["seconds"] = time.perf_counter() - started
    (run_dir / EVAL_FILE).write_text(json.dumps(results, indent=1))
    return results


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: a k̂ that could not be fitted is written as null."""
    return value if math.isfinite(value) else None
