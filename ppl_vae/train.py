"""Training with Pyro SVI: the loop, its history, checkpoints and the run directory.

Numbers are in nats per datapoint, as log-probabilities (DESIGN's conventions): ``elbo`` =
``reconstruction`` - ``kl``, with reconstruction = E_q[log p(x|z)] and kl = KL(q(z|x) || p(z)).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import SVI
from tqdm.auto import tqdm

from ppl_vae.checkpoint import load_checkpoint, save_checkpoint
from ppl_vae.config import Config, apply_overrides, from_dict, save_config, to_dict
from ppl_vae.data import Dataset, batches, load_dataset
from ppl_vae.errors import ConfigError, DataError, TrainingError
from ppl_vae.evaluate import elbo_terms, evaluate_elbo
from ppl_vae.model import VAE, build_vae
from ppl_vae.objectives import build_schedule, make_elbo

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


def evaluation_split(dataset: Dataset, split: str) -> torch.Tensor:
    """The data of a split as the model sees it: dynamically binarized data is binarized once with
    a fixed seed, so that evaluations are comparable between epochs and runs."""
    x, _ = dataset.split(split)
    if dataset.dynamic_binarization and split == "train":
        generator = torch.Generator().manual_seed(0)
        x = (torch.rand(x.shape, generator=generator).to(x.device) < x).to(x.dtype)
    return x


def check_support(vae: VAE, dataset: Dataset, key: str = "model.likelihood") -> None:
    """Refuse data outside the likelihood's support before training (not a NaN hours later)."""
    for split in ("train", "test"):
        if not bool(vae.likelihood.support.check(evaluation_split(dataset, split)).all()):
            raise DataError(
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


def fit(config: Config, out_dir: str | Path | None = None, resume: bool = False) -> Run:
    """Train a VAE as ``config`` says, writing the run directory ``out_dir`` if one is given.

    With ``resume=True`` the run continues from ``out_dir/checkpoint.pt`` (the config's
    ``train.epochs`` may be raised to train longer). Returns the :class:`Run`.
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
    optimizer = OPTIMIZERS[config.optim.name]({"lr": config.optim.lr, "weight_decay": config.optim.weight_decay})
    # traced model and guide: the terms (reconstruction, KL) are read off the traces of each step
    model, guide = poutine.trace(vae.model), poutine.trace(vae.guide)
    svi = SVI(model, guide, optimizer, make_elbo(config.objective.elbo, config.objective.num_particles))
    analytic_kl = config.objective.elbo == "meanfield"
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    epoch = step = 0
    seconds_before = 0.0
    if checkpoint is not None:
        vae.load_state_dict(checkpoint["vae"])
        optimizer.set_state(checkpoint["optimizer"])
        generator.set_state(checkpoint["data_generator"])
        _set_rng_state(checkpoint["rng"])
        epoch, step, history = checkpoint["epoch"], checkpoint["step"], checkpoint["history"]
        seconds_before = checkpoint["seconds"]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")

    test_x = evaluation_split(dataset, "test")
    steps_per_epoch = math.ceil(dataset.train.shape[0] / config.data.batch_size)
    bar = tqdm(
        total=config.train.epochs * steps_per_epoch, initial=step, disable=not config.train.progress,
        unit="step", dynamic_ncols=True,
    )
    while epoch < config.train.epochs:
        epoch_started = time.perf_counter()
        totals = torch.zeros(2, device=device)  # summed reconstruction and KL over the epoch
        seen = 0
        beta = schedule(step, epoch)
        for x in batches(dataset.train, config.data.batch_size, generator, binarize=dataset.dynamic_binarization):
            beta = schedule(step, epoch)
            loss = svi.step(x, beta)
            if not math.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss} at step {step} (epoch {epoch + 1}); lower optim.lr, or check "
                    "that the likelihood fits the data. The last checkpoint is kept intact."
                )
            reconstruction, kl = elbo_terms(model.trace, guide.trace, analytic_kl)
            totals += torch.stack([reconstruction.sum(), kl.sum()]).detach()
            seen += x.shape[0]
            step += 1
            bar.update()
            if step % 20 == 0 or seen == dataset.train.shape[0]:
                rec, kl_mean = (totals / seen).tolist()
                bar.set_postfix(epoch=epoch + 1, elbo=f"{rec - kl_mean:.2f}", rec=f"{rec:.2f}", kl=f"{kl_mean:.2f}",
                                beta=f"{beta:.3g}", refresh=False)
        epoch += 1
        rec, kl_mean = (totals / seen).tolist()
        record = {"epoch": epoch, "step": step, "beta": beta,
                  "train_elbo": rec - kl_mean, "train_reconstruction": rec, "train_kl": kl_mean}
        if epoch % config.train.eval_every == 0 or epoch == config.train.epochs:
            test = evaluate_elbo(vae, test_x, config.train.eval_batch_size)
            record.update({f"test_{name}": value for name, value in test.items()})
        record["seconds"] = seconds_before + time.perf_counter() - started
        record["epoch_seconds"] = time.perf_counter() - epoch_started
        history.append(record)
        if out_dir is not None and (epoch % config.train.checkpoint_every == 0 or epoch == config.train.epochs):
            save_checkpoint(out_dir / CHECKPOINT, {
                "config": to_dict(config), "epoch": epoch, "step": step, "history": history,
                "seconds": seconds_before + time.perf_counter() - started,
                "vae": vae.state_dict(), "optimizer": optimizer.get_state(),
                "data_generator": generator.get_state(), "rng": _rng_state(),
            })
            (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    bar.close()
    metrics = {
        "train_elbo": evaluate_elbo(vae, evaluation_split(dataset, "train"), config.train.eval_batch_size)["elbo"],
        **{f"test_{name}": value for name, value in evaluate_elbo(vae, test_x, config.train.eval_batch_size).items()},
        "epochs": epoch, "steps": step, "device": str(device),
        "num_parameters": sum(p.numel() for p in vae.parameters()),
        "train_seconds": history[-1]["seconds"] if history else 0.0,
        "units": "nats per datapoint; elbo = reconstruction - kl, log-probability sign (higher is better)",
    }
    metrics["seconds"] = seconds_before + time.perf_counter() - started
    run = Run(config, vae, dataset, history, metrics, out_dir)
    if out_dir is not None:
        from ppl_vae.plots import run_figures

        run_figures(run)
        metrics["seconds"] = seconds_before + time.perf_counter() - started
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return run


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config a run was started with (from its checkpoint), with ``--set`` overrides applied."""
    values = load_checkpoint(Path(run_dir) / CHECKPOINT)["config"]
    return from_dict(apply_overrides(values, overrides or []))
