"""Training with Pyro SVI: the loop, its history, checkpoints and the run directory.

Numbers are in nats per datapoint, as log-probabilities (DESIGN's conventions): ``elbo`` =
``reconstruction`` - ``kl``, with reconstruction = E_q[log p(x|z)] and kl = KL(q(z|x) || p(z)).

Faults lose no run: a NaN or Inf loss or gradient stops training at its step with a
:class:`~ppl_vae.errors.TrainingError`, before any checkpoint could hold it. Ctrl-C stops training
between two steps and checkpoints the exact position, mid-epoch included (the epoch's batch order is
redrawn from the data generator's state at the epoch's start, and the batches already done are
skipped), so a resumed run ends with the same parameters as one never interrupted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import signal
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.optim import PyroOptim
from tqdm.auto import tqdm

from ppl_vae.checkpoint import load_checkpoint, save_checkpoint
from ppl_vae.config import Config, OptimConfig, apply_overrides, from_dict, save_config, to_dict
from ppl_vae.data import Dataset, batches, load_dataset, sample_binary
from ppl_vae.errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from ppl_vae.evaluate import elbo_terms, evaluate_elbo, latent_health
from ppl_vae.geco import GECO
from ppl_vae.model import VAE, build_vae
from ppl_vae.objectives import build_objective, build_schedule

OPTIMIZERS = {"adam": pyro.optim.Adam, "adagrad": pyro.optim.Adagrad}
CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch sees no CUDA device; use 'auto' or 'cpu'.")
    return torch.device(name)


@dataclass
class Run:
    """The result of :func:`fit`: the trained model, its data, the per-epoch history and metrics."""

    config: Config
    vae: VAE
    dataset: Dataset
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    geco: GECO | None = None  # the GECO objective (λ, C_ma and its per-step history), if one was used


def evaluation_split(dataset: Dataset, split: str) -> torch.Tensor:
    """The data of a split as the model sees it: dynamically binarized data is binarized once with
    a fixed seed, so that evaluations are comparable between epochs and runs."""
    x, _ = dataset.split(split)
    if dataset.dynamic_binarization and split == "train":
        x = sample_binary(x, torch.Generator().manual_seed(0))
    return x


def check_support(vae: VAE, dataset: Dataset, key: str = "model.likelihood") -> None:
    """Refuse data outside the likelihood's support before training (not a NaN hours later)."""
    for split in ("train", "test"):
        if not bool(vae.likelihood.support.check(evaluation_split(dataset, split)).all()):
            raise ConfigError(
                f"{key}: {type(vae.likelihood).__name__} needs data in {vae.likelihood.support}, but the "
                f"{split} split of {dataset.name!r} has values outside it; choose a likelihood whose support fits."
            )


def _rng_state() -> dict[str, Any]:
    state = pyro.util.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    pyro.util.set_rng_state(state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_optimizer(config: OptimConfig) -> PyroOptim:
    """The Pyro optimizer of a config's ``optim`` section. With ``clip_norm``, Pyro clips each
    parameter tensor's gradient to that norm before the update (``clip_args``)."""
    clip_args = {"clip_norm": config.clip_norm} if config.clip_norm is not None else None
    return OPTIMIZERS[config.name]({"lr": config.lr, "weight_decay": config.weight_decay}, clip_args)


def check_finite(loss: float, vae: VAE, where: str) -> None:
    """Stop at the step where the loss, or a gradient, stopped being finite.

    SVI zeroes the gradients after its update, so a NaN or Inf gradient is caught by its trace: the
    parameters it made non-finite (Adam and Adagrad turn an Inf gradient into a NaN update).
    """
    if not math.isfinite(loss):
        raise TrainingError(
            f"the loss became {loss} {where}. Likely causes: a learning rate too high (lower optim.lr), "
            "exploding activations (set optim.clip_norm, e.g. 10) or a likelihood that does not fit the "
            "data. Training stopped; the last checkpoint is kept intact."
        )
    with torch.no_grad():  # one sum of sums: a NaN or Inf anywhere makes it non-finite
        total = torch.stack([parameter.sum() for parameter in vae.parameters()]).sum().item()
    broken = [] if math.isfinite(total) else [
        name for name, parameter in vae.named_parameters() if not bool(parameter.isfinite().all())
    ]  # empty if the sum only overflowed
    if broken:
        raise TrainingError(
            f"a gradient became NaN or Inf {where}: the loss was finite ({loss:.6g}) but the update made "
            f"{', '.join(broken)} non-finite. Likely cause: exploding gradients; set optim.clip_norm "
            "(e.g. 10) or lower optim.lr. Training stopped; the last checkpoint is kept intact."
        )


@contextlib.contextmanager
def deferred_interrupt():
    """While active, the first Ctrl-C (SIGINT) only sets ``requested`` on the yielded flag, for the
    training loop to stop between two steps with a consistent state; a second one interrupts at once.
    Outside the main thread (where Python cannot handle signals) Ctrl-C keeps its usual effect."""
    flag = types.SimpleNamespace(requested=False)
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True
        print("\nppl-vae: Ctrl-C: saving a checkpoint after this step (press Ctrl-C again to stop at once)",
              file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _geco_postfix(geco: GECO | None) -> dict[str, str]:
    """λ and C_ma for the progress bar, when training with GECO."""
    return {} if geco is None else {"lambda": f"{geco.lam:.3g}", "c_ma": f"{geco.c_ma:.3g}"}


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
    started = time.perf_counter()

    device = resolve_device(config.device)
    dataset = load_dataset(config.data.name, config.data.data_dir, device=device)
    if config.data.batch_size > dataset.train.shape[0]:
        raise ConfigError(
            f"data.batch_size: {config.data.batch_size} is larger than the {dataset.train.shape[0]} "
            f"training examples of {dataset.name!r}; choose at most {dataset.train.shape[0]}."
        )
    pyro.set_rng_seed(config.seed)
    pyro.clear_param_store()
    vae = build_vae(config.model, dataset.data_dim, dataset.image_shape).to(device)
    check_support(vae, dataset)
    schedule = build_schedule(config.objective.beta)
    optimizer = make_optimizer(config.optim)
    # traced model and guide: the terms (reconstruction, KL) are read off the traces of each step
    model, guide = poutine.trace(vae.model), poutine.trace(vae.guide)
    objective = build_objective(config.objective)
    geco = objective if isinstance(objective, GECO) else None
    svi = SVI(model, guide, optimizer, objective)
    analytic_kl = config.objective.elbo == "meanfield"
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    epoch = step = 0
    # the epoch in progress: batches done, and the sums of reconstruction and KL over them
    epoch_step, totals, seen = 0, torch.zeros(2, device=device), 0
    seconds_before = 0.0
    if checkpoint is not None:
        _restore(checkpoint, out_dir / CHECKPOINT, vae, optimizer, generator)
        epoch, step, history = checkpoint["epoch"], checkpoint["step"], checkpoint["history"]
        if geco is not None:
            geco.load_state_dict(checkpoint["geco"])
        seconds_before = checkpoint["seconds"]
        if checkpoint.get("epoch_step", 0):
            epoch_step, seen = checkpoint["epoch_step"], checkpoint["epoch_seen"]
            totals = torch.tensor(checkpoint["epoch_totals"], device=device)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")

    def save(data_generator_state: torch.Tensor) -> Path:
        """Checkpoint the run; ``data_generator_state`` is the data generator's state at the start
        of the epoch in progress, whose first ``epoch_step`` batches are done."""
        path = out_dir / CHECKPOINT
        save_checkpoint(path, {
            "config": to_dict(config), "epoch": epoch, "step": step, "history": history,
            "seconds": seconds_before + time.perf_counter() - started,
            "vae": vae.state_dict(), "optimizer": optimizer.get_state(),
            "data_generator": data_generator_state, "rng": _rng_state(),
            "epoch_step": epoch_step, "epoch_seen": seen, "epoch_totals": totals.tolist(),
            "geco": geco.state_dict() if geco is not None else None,
        })
        (out_dir / "history.json").write_text(json.dumps(history, indent=1))
        if geco is not None:
            (out_dir / "geco.json").write_text(json.dumps(geco.history))
        return path

    def interrupted(data_generator_state: torch.Tensor) -> TrainingInterrupted:
        where = f"at step {step} (epoch {epoch + 1}, after {epoch_step} of its {steps_per_epoch} batches)"
        if out_dir is None:
            return TrainingInterrupted(f"training stopped {where}; no run directory, so nothing was saved.", None)
        path = save(data_generator_state)
        return TrainingInterrupted(
            f"training stopped {where}; checkpoint saved to {path}. "
            f"Continue with: ppl-vae train --resume {out_dir}", str(path)
        )

    test_x = evaluation_split(dataset, "test")
    steps_per_epoch = math.ceil(dataset.train.shape[0] / config.data.batch_size)
    bar = tqdm(
        total=config.train.epochs * steps_per_epoch, initial=step, disable=not config.train.progress,
        unit="step", dynamic_ncols=True,
    )
    with deferred_interrupt() as interrupt, bar:
        while epoch < config.train.epochs:
            epoch_started = time.perf_counter()
            epoch_generator_state = generator.get_state()
            beta = schedule(step, epoch)
            epoch_batches = batches(dataset.train, config.data.batch_size, generator,
                                    binarize=dataset.dynamic_binarization)
            # a run resumed mid-epoch redraws the epoch's batches and skips those already done
            for x in itertools.islice(epoch_batches, epoch_step, None):
                if interrupt.requested:
                    raise interrupted(epoch_generator_state)
                beta = schedule(step, epoch)
                loss = svi.step(x, beta)
                check_finite(loss, vae, f"at step {step + 1} (epoch {epoch + 1}, batch {epoch_step + 1})")
                reconstruction, kl = elbo_terms(model.trace, guide.trace, analytic_kl)
                totals += torch.stack([reconstruction.sum(), kl.sum()]).detach()
                seen += x.shape[0]
                step += 1
                epoch_step += 1
                bar.update()
                if step % 20 == 0 or seen == dataset.train.shape[0]:
                    rec, kl_mean = (totals / seen).tolist()
                    bar.set_postfix(epoch=epoch + 1, elbo=f"{rec - kl_mean:.2f}", rec=f"{rec:.2f}",
                                    kl=f"{kl_mean:.2f}", beta=f"{beta:.3g}", refresh=False,
                                    **_geco_postfix(geco))
            epoch += 1
            rec, kl_mean = (totals / seen).tolist()
            epoch_step, totals, seen = 0, torch.zeros(2, device=device), 0
            record = {"epoch": epoch, "step": step, "beta": beta,
                      "train_elbo": rec - kl_mean, "train_reconstruction": rec, "train_kl": kl_mean}
            if geco is not None:
                record.update({"geco_lambda": geco.lam, "geco_c_ma": geco.c_ma})
            if epoch % config.train.eval_every == 0 or epoch == config.train.epochs:
                test = evaluate_elbo(vae, test_x, config.train.eval_batch_size)
                record.update({f"test_{name}": value for name, value in test.items()})
            record["seconds"] = seconds_before + time.perf_counter() - started
            record["epoch_seconds"] = time.perf_counter() - epoch_started
            history.append(record)
            if out_dir is not None and (epoch % config.train.checkpoint_every == 0 or epoch == config.train.epochs):
                save(generator.get_state())
            if interrupt.requested:
                raise interrupted(generator.get_state())
    metrics = {
        "train_elbo": evaluate_elbo(vae, evaluation_split(dataset, "train"), config.train.eval_batch_size)["elbo"],
        **{f"test_{name}": value for name, value in evaluate_elbo(vae, test_x, config.train.eval_batch_size).items()},
        "epochs": epoch, "steps": step, "device": str(device),
        "num_parameters": sum(p.numel() for p in vae.parameters()),
        "train_seconds": history[-1]["seconds"] if history else 0.0,
        "units": "nats per datapoint; elbo = reconstruction - kl, log-probability sign (higher is better)",
    }
    health = latent_health(vae, test_x, aggregate=False)  # the cheap diagnostics; 'ppl-vae eval' for the rest
    metrics.update({"test_kl_per_dim": health["kl_per_dim"], "test_active_units": health["active_units"]})
    metrics["seconds"] = seconds_before + time.perf_counter() - started
    run = Run(config, vae, dataset, history, metrics, out_dir, geco)
    if out_dir is not None:
        from ppl_vae.plots import run_figures

        run_figures(run)
        metrics["seconds"] = seconds_before + time.perf_counter() - started
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return run


def _restore(
    checkpoint: dict[str, Any], path: Path, vae: VAE, optimizer: PyroOptim, generator: torch.Generator
) -> None:
    """Load a checkpoint's model, optimizer and random states; a CheckpointError if they do not fit."""
    try:
        vae.load_state_dict(checkpoint["vae"])
        optimizer.set_state(checkpoint["optimizer"])
        generator.set_state(checkpoint["data_generator"])
        _set_rng_state(checkpoint["rng"])
    except (KeyError, RuntimeError, TypeError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this run ({type(error).__name__}: {error}); resume with "
            "the config the run was started with (no --set of model.* options)."
        ) from None


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config a run was started with (from its checkpoint), with ``--set`` overrides applied."""
    values = load_checkpoint(Path(run_dir) / CHECKPOINT)["config"]
    return from_dict(apply_overrides(values, overrides or []))
