"""Runs: train a config into a run directory (:func:`fit`), continue it, and evaluate it (:func:`evaluate_run`).

The data flow of one run: config → :func:`ppl_vae.build.check` and :func:`~ppl_vae.build.build`
(dataset, VAE, objective, β schedule, optimizer) → :func:`ppl_vae.training.loop.train` with its
callbacks → end-of-training evaluation → figures. A run directory holds:

- ``config.yaml``: the resolved config (every default filled in);
- ``history.json``: one record per epoch (``train_*``: the running mean over the epoch's batches
  while the weights changed, as the progress bar shows; ``test_*``, on evaluated epochs: one pass
  over the test set at the epoch's end);
- ``objective.json``: the objective's own state, when it has any (GECO's λ and per-step log);
- ``checkpoint.pt`` (:mod:`ppl_vae.training.checkpoint`), the figures, and ``metrics.json``: the
  final numbers (``train_elbo`` is one pass over the training set with the final weights, so it is
  higher than the history's running mean early in training; ``test_*`` are the last epoch's
  evaluation, the same numbers as the history's last record; ``notes`` says this in the file), the
  data folder the run read (``data_dir``, which ``ppl-vae eval`` reads again), the objective's
  ``warnings`` and, with ``train.log_likelihood_samples: K``, the test log p(x);
- ``eval.json`` and ``kl_per_dim.png`` after ``ppl-vae eval``.

Numbers are nats per datapoint, log-probabilities (higher is better): elbo = reconstruction - kl.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pyro
import torch
from pyro.infer import SVI

from ppl_vae.build import Setup, build, build_vae, check, resolve_device
from ppl_vae.config import Config, apply_overrides, from_dict, load_config, save_config, to_dict
from ppl_vae.data import DATASETS, Dataset, batches, data_dir as find_data_dir, evaluation_split, load_dataset
from ppl_vae.data.datasets import reads_files
from ppl_vae.errors import CheckpointError, ConfigError
from ppl_vae.evaluation import (ACTIVE_UNIT_THRESHOLD, PSIS_KHAT_THRESHOLD, PSIS_MIN_SAMPLES, ImportanceEstimate,
                                evaluate_elbo, importance_sample, latent_health, log_likelihood)
from ppl_vae.models.vae import VAE
from ppl_vae.objectives import Objective
from ppl_vae.training.callbacks import (Callback, Checkpointing, EpochEvaluation, InterruptHandler, NonFiniteGuard,
                                        OutOfMemory, ProgressBar)
from ppl_vae.training.checkpoint import load_checkpoint, restore, save_checkpoint, snapshot
from ppl_vae.training.distributed import AgreedInterrupt, Processes, RankNoise, process_group
from ppl_vae.training.loop import train
from ppl_vae.training.state import TrainingState

CHECKPOINT = "checkpoint.pt"
EVAL_FILE = "eval.json"
UNITS = "nats per datapoint; elbo = reconstruction - kl, log-probability sign (higher is better)"
NOTES = {
    "train_elbo": "one pass over the training set with the final weights; history.json's train_elbo is the "
                  "running mean over each epoch's batches while the weights changed (lower early in training)",
    "test_elbo": "one pass over the test set at the end of the last epoch: history.json's last test_elbo",
}
RUN_FILES = (CHECKPOINT, "config.yaml", "history.json", "metrics.json", "objective.json", EVAL_FILE, "kl_per_dim.png",
             "reconstructions.png", "samples.png", "training_curves.png", "latent_scatter.png", "manifold.png")
RESUME_FIXED = ("seed", "data.name", "data.batch_size", "model", "objective", "optim.name")
"""Config keys a resumed run takes from its checkpoint: changing them would continue other weights,
data or objective state under a new name. ``train.*``, ``device``, ``data.data_dir`` and the other
``optim`` values may change."""


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


def fit(
    config: Config, out_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
    figures: bool = True, callbacks: Sequence[Callback] = (),
) -> Run:
    """Train a VAE as ``config`` says, writing the run directory ``out_dir`` if one is given.

    With ``resume=True`` the run continues from ``out_dir/checkpoint.pt``: ``config`` must keep the
    checkpoint's model, data, seed, objective and optimizer (:data:`RESUME_FIXED`); ``train.epochs``
    may be raised to train longer and ``optim.lr`` changed. A fresh run refuses an ``out_dir`` that
    already holds a run unless ``overwrite=True``, which replaces it. ``figures=False`` leaves out
    the run's figures (experiments draw their own). ``callbacks``
    (:class:`~ppl_vae.training.callbacks.Callback`) are told of every step and epoch after the
    run's own (progress bar, evaluation, checkpoints, ...), on every process. Returns the :class:`Run`.
    Ctrl-C saves a checkpoint and raises :class:`~ppl_vae.errors.TrainingInterrupted` (a KeyboardInterrupt).

    Under ``torchrun`` (``WORLD_SIZE`` > 1), or in a process group already joined, this is one
    process of a data-parallel run (:mod:`ppl_vae.training.distributed`): ``data.batch_size`` is the
    global batch, split over the processes; only rank 0 writes ``out_dir`` and computes the final
    metrics (the other processes return their :class:`Run` with empty ``metrics`` after training).
    """
    out_dir = Path(out_dir) if out_dir is not None else None
    if resume and out_dir is None:
        raise ConfigError("resume needs the run directory that holds checkpoint.pt.")
    if out_dir is not None:
        check_run_directory(out_dir, resume, overwrite)
    checkpoint = load_checkpoint(out_dir / CHECKPOINT) if resume else None
    check(config)
    if checkpoint is not None:
        check_resume(checkpoint, config, out_dir / CHECKPOINT)
    with process_group(resolve_device(config.device)) as processes:
        setup = build(config)
        num_rows, batch_size = setup.dataset.train.shape[0], config.data.batch_size
        batches = processes.shard(_batches(setup), num_rows, batch_size)  # refuses a batch smaller than the processes
        state = processes.training_state(torch.Generator().manual_seed(config.seed), num_rows, batch_size)
        if checkpoint is not None:
            restore(checkpoint, out_dir / CHECKPOINT, state, setup.vae, setup.optimizer, setup.objective)
        processes.synchronize(setup.vae, setup.objective)
        if out_dir is not None and processes.writes:
            _prepare_run_directory(out_dir, replace=overwrite and not resume)
            save_config(config, out_dir / "config.yaml")
        vae, objective, dataset = setup.vae, setup.objective, setup.dataset
        svi = SVI(vae.model, vae.guide, setup.optimizer, loss=objective,
                  loss_and_grads=processes.loss_and_grads(objective.loss_and_grads))
        train(svi, objective, setup.schedule, batches, config.train.epochs, state,
              [*_callbacks(setup, out_dir, processes), *callbacks])
    run = Run(config, vae, dataset, objective, state.history, out_dir=out_dir)
    if not processes.writes:
        return run
    run.metrics = final_metrics(run, state)
    if out_dir is not None and figures:
        run_figures(run)
    run.metrics["seconds"] = state.elapsed()
    if out_dir is not None:
        (out_dir / "metrics.json").write_text(json.dumps(run.metrics, indent=1))
    return run


def check_run_directory(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a run directory that is a file, and (unless ``overwrite``) a fresh run into a folder
    that already holds a run's results: its checkpoint is never replaced without being asked. A
    folder with only a ``config.yaml`` (a run that stopped before its first checkpoint) is reused."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"run directory {str(out_dir)!r} is a file, not a folder; choose another --out.")
    if resume or overwrite or not out_dir.is_dir():
        return
    existing = [name for name in RUN_FILES if name != "config.yaml" and (out_dir / name).exists()]
    if existing:
        raise ConfigError(
            f"run directory {str(out_dir)!r} already holds a run ({', '.join(existing)}); continue it with "
            f"'ppl-vae train --resume {out_dir}', choose another --out, or pass --overwrite (fit(..., "
            "overwrite=True)) to replace it."
        )


def _prepare_run_directory(out_dir: Path, replace: bool) -> None:
    """Create the run directory; when replacing a run, delete its files so none of the old run is left."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the run directory {str(out_dir)!r} ({error.strerror}); choose another "
                          "--out.") from None
    if replace:
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"model.encoder.activation": "tanh", ...}``."""
    if not isinstance(values, dict):
        return {prefix: values}
    return {key: value for name, child in values.items()
            for key, value in _flatten(child, f"{prefix}.{name}" if prefix else str(name)).items()}


def config_changes(before: Config, after: Config, keys: tuple[str, ...]) -> list[str]:
    """The values under ``keys`` (dotted prefixes) that differ, as ``key: before -> after`` lines."""
    old, new = _flatten(to_dict(before)), _flatten(to_dict(after))
    return [f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
            for key in sorted(old.keys() | new.keys())
            if any(key == fixed or key.startswith(fixed + ".") for fixed in keys) and old.get(key) != new.get(key)]


def saved_config(checkpoint: dict[str, Any], path: Path) -> Config:
    """The checked config stored in a checkpoint; a CheckpointError if it is not a valid config."""
    try:
        return check(from_dict(checkpoint["config"]))
    except ConfigError as error:
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged: its config is not valid ({error}).") from None


def check_resume(checkpoint: dict[str, Any], config: Config, path: Path) -> None:
    """Refuse to resume with a config whose model, data, seed, objective or optimizer differs from
    the checkpoint's, or with fewer epochs than the run has done."""
    changes = config_changes(saved_config(checkpoint, path), config, RESUME_FIXED)
    if changes:
        raise ConfigError(
            f"resuming {str(path.parent)!r} with changed settings: {'; '.join(changes)}. A resumed run continues "
            "its checkpoint's weights, data, seed, objective state and optimizer, so the model (model.*), "
            f"{', '.join(key for key in RESUME_FIXED if key != 'model')} must match the checkpoint; only train.*, "
            "device, data.data_dir, optim.lr, optim.weight_decay and optim.clip_norm may change. Drop those --set "
            "options, or start a new run with another --out."
        )
    done = checkpoint["training"].get("epoch")
    if isinstance(done, int) and config.train.epochs < done:
        raise ConfigError(f"train.epochs: the run in {str(path.parent)!r} has already trained {done} epochs; set "
                          f"train.epochs to {done} or more to resume it.")


def _batches(setup: Setup):
    """The epoch's batches as the model's data arguments: ``(x,)``."""
    train_x, batch_size, binarize = setup.dataset.train, setup.config.data.batch_size, setup.dataset.dynamic_binarization
    return lambda generator: ((x,) for x in batches(train_x, batch_size, generator, binarize=binarize))


def _callbacks(setup: Setup, out_dir: Path | None, processes: Processes) -> list[Callback]:
    """The callbacks of a run, in the order they act at an epoch's end: evaluate, checkpoint, (in
    data-parallel training) reseed each process's noise, stop on Ctrl-C. Processes other than rank 0
    show no progress bar, evaluate nothing and write nothing."""
    config, vae, objective = setup.config, setup.vae, setup.objective
    test_x = evaluation_split(setup.dataset, "test")
    steps_per_epoch = math.ceil(setup.dataset.train.shape[0] / config.data.batch_size)
    save = None
    if out_dir is not None:
        def save(state: TrainingState) -> Path:
            return save_run_state(out_dir, setup, state)
    sizes = {"objective.num_particles": config.objective.options.get("num_particles", 1),
             "data.batch_size": config.data.batch_size, "model.latent_dim": config.model.latent_dim}
    callbacks: list[Callback] = [
        OutOfMemory(sizes, setup.device),
        NonFiniteGuard(vae),
        ProgressBar(config.train.epochs * steps_per_epoch, objective.bound, objective.status,
                    config.train.progress and processes.writes, steps_per_epoch),
    ]
    if processes.writes:
        callbacks.append(EpochEvaluation(
            lambda: evaluate_elbo(vae.model, vae.guide, test_x, batch_size=config.train.eval_batch_size),
            config.train.eval_every, config.train.epochs))
    if save is not None and processes.writes:
        callbacks.append(Checkpointing(save, config.train.checkpoint_every, config.train.epochs))
    resume_hint = f"Continue with: ppl-vae train --resume {out_dir}"
    if processes.parallel:
        callbacks += [RankNoise(config.seed, processes.rank), AgreedInterrupt(processes, save, resume_hint)]
    else:
        callbacks.append(InterruptHandler(save, resume_hint))
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
    weights, unlike the history's running mean), the last epoch's test terms (every run evaluates
    its last epoch; a run resumed at its last epoch without them is evaluated now), the cheap latent
    diagnostics, the data folder, the objective's warnings and, with ``train.log_likelihood_samples``,
    the importance-sampled test log p(x)."""
    vae, config = run.vae, run.config
    test_x = evaluation_split(run.dataset, "test")
    train_x = evaluation_split(run.dataset, "train")
    last = run.history[-1] if run.history else {}
    test = {name: value for name, value in last.items() if name.startswith("test_")} or {
        f"test_{name}": value for name, value in evaluate_elbo(vae.model, vae.guide, test_x,
                                                               batch_size=config.train.eval_batch_size).items()}
    health = latent_health(vae.model, vae.guide, test_x, aggregate=False)  # 'ppl-vae eval' for the rest
    metrics = {
        "train_elbo": evaluate_elbo(vae.model, vae.guide, train_x, batch_size=config.train.eval_batch_size)["elbo"],
        "train_elbo_epoch_mean": last.get("train_elbo"), **test,
        "objective": config.objective.name, "epochs": state.epoch, "steps": state.step,
        "device": str(next(vae.parameters()).device), "num_parameters": sum(p.numel() for p in vae.parameters()),
        "train_seconds": last.get("seconds", state.seconds), "units": UNITS, "notes": NOTES,
        "data_dir": (str(find_data_dir(config.data.data_dir).resolve())
                     if reads_files(DATASETS.get(config.data.name, "data.name")) else None),
        "test_kl_per_dim": health["kl_per_dim"], "test_active_units": health["active_units"],
        "warnings": run.objective.warnings(),
    }
    samples = config.train.log_likelihood_samples
    if samples is not None:
        estimate = log_likelihood(vae.model, vae.guide, test_x, num_samples=samples,
                                  particle_batch_size=min(samples, 100), progress=config.train.progress)
        metrics.update(test_log_likelihood=estimate.mean().item(), test_log_likelihood_samples=samples)
    return metrics


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
            figures["manifold.png"] = plots.plot_manifold(vae, data.image_shape,
                                                           codes=plots.posterior_means(vae, test_x))
    finally:
        vae.train(was_training)
    return [plots.save_figure(fig, out / name) for name, fig in figures.items()]


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config a run was started with (from its checkpoint), with ``--set`` overrides applied."""
    path = Path(run_dir) / CHECKPOINT
    saved = to_dict(saved_config(load_checkpoint(path), path))
    return from_dict(apply_overrides(saved, overrides or []))


# -- evaluating a finished run ---------------------------------------------------------------------


def load_trained_vae(run_dir: str | Path, config: Config, dataset: Dataset, device: str | torch.device = "cpu") -> VAE:
    """The VAE of a run directory: rebuilt from its config for ``dataset``'s data and image sizes,
    weights from its checkpoint.pt. A CheckpointError if the config does not describe the checkpoint's model."""
    path = Path(run_dir) / CHECKPOINT
    checkpoint = load_checkpoint(path, map_location=device)
    changes = config_changes(saved_config(checkpoint, path), config, ("model", "data.name"))
    if changes:
        raise CheckpointError(
            f"the config.yaml of {str(run_dir)!r} does not describe the model in its checkpoint.pt "
            f"({'; '.join(changes)}, checkpoint -> config.yaml); the model must match its weights: restore "
            "config.yaml to the checkpoint's values."
        )
    vae = build_vae(config.model, dataset.data_dim, dataset.image_shape).to(device)
    try:
        vae.load_state_dict(checkpoint["module"])
    except (RuntimeError, TypeError, AttributeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold this model's weights or is damaged "
                              f"({type(error).__name__}: {error}).") from None
    return vae.eval()


def recorded_data_dir(run_dir: Path) -> str | None:
    """The data folder a finished run read (``metrics.json``'s ``data_dir``), if that folder still exists."""
    try:
        folder = json.loads((run_dir / "metrics.json").read_text()).get("data_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return folder if isinstance(folder, str) and Path(folder).is_dir() else None


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

    The data are read from ``data_dir`` if given, else from the folder the run was trained on
    (recorded in ``metrics.json``) if it still exists, else as training would (``data.data_dir``,
    ``$PPL_VAE_DATA``). Writes ``eval.json`` and ``kl_per_dim.png`` into ``run_dir`` and returns the
    dict it wrote; creates no folder. Units: nats per datapoint (log-probabilities), bits per dimension
    for ``bits_per_dim``, seconds. Below ``PSIS_MIN_SAMPLES`` samples the PSIS k̂ cannot be fitted:
    its fields are null then.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (it has no config.yaml); give a folder written "
                          "by 'ppl-vae train'.")
    torch_device = resolve_device(device)
    config = check(load_config(run_dir / "config.yaml"))
    dataset = load_dataset(config.data.name, data_dir or recorded_data_dir(run_dir) or config.data.data_dir,
                           device=torch_device)
    vae = load_trained_vae(run_dir, config, dataset, torch_device)
    x = evaluation_split(dataset, split)
    pyro.set_rng_seed(seed)
    estimate = importance_sample(vae.model, vae.guide, x, num_samples=num_samples, batch_size=batch_size,
                                 particle_batch_size=particle_batch_size, progress=progress)
    if progress:
        print(f"latent diagnostics on {x.shape[0]} datapoints (KL per dimension, active units, marginal KL)...",
              file=sys.stderr, flush=True)
    health = latent_health(vae.model, vae.guide, x, progress=progress)
    results = {
        "split": split,
        "num_datapoints": x.shape[0],
        **estimate_summary(estimate, dataset.data_dim),
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


def estimate_summary(estimate: ImportanceEstimate, data_dim: int) -> dict[str, Any]:
    """The mean log p(x) with its standard error over datapoints, the K-sample ELBO, bits per
    dimension, ESS and PSIS k̂ of an importance-sampling estimate (nats per datapoint; the k̂ fields
    are null where k̂ could not be fitted)."""
    num_samples, khat = estimate.num_samples, estimate.khat
    log_likelihood = estimate.log_likelihood
    return {
        "num_samples": num_samples,
        "log_likelihood": log_likelihood.mean().item(),
        "log_likelihood_std_error": (log_likelihood.std() / math.sqrt(log_likelihood.numel())).item(),
        "elbo": estimate.elbo.mean().item(),
        "bits_per_dim": estimate.bits_per_dim(data_dim),
        "ess_mean": estimate.ess.mean().item(),
        "ess_min": estimate.ess.min().item(),
        "psis_khat_max": _finite_or_none(khat.max().item()),
        "psis_khat_mean": _finite_or_none(khat.mean().item()),
        "psis_khat_above_0.7": None if num_samples < PSIS_MIN_SAMPLES else int((khat > PSIS_KHAT_THRESHOLD).sum()),
    }


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: a k̂ that could not be fitted is written as null."""
    return value if math.isfinite(value) else None
