"""Evaluating a finished run directory: ``ppl-vae eval RUN_DIR`` writes ``RUN_DIR/eval.json``.

Units: nats per datapoint (log-probabilities, higher is better), bits per dimension for
``bits_per_dim``, seconds for ``seconds``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pyro
import torch

from ppl_vae.checkpoint import load_checkpoint
from ppl_vae.config import Config, load_config
from ppl_vae.data import Dataset, load_dataset
from ppl_vae.evaluate import ACTIVE_UNIT_THRESHOLD, PSIS_KHAT_THRESHOLD, importance_sample, latent_health
from ppl_vae.model import VAE, build_vae
from ppl_vae.plots import plot_kl_per_dim
from ppl_vae.train import CHECKPOINT, evaluation_split, resolve_device

EVAL_FILE = "eval.json"


def load_trained_vae(run_dir: str | Path, config: Config, dataset: Dataset, device: str | torch.device = "cpu") -> VAE:
    """The VAE of a run directory: rebuilt from its config for ``dataset``'s data and image sizes,
    weights from its checkpoint.pt."""
    vae = build_vae(config.model, dataset.data_dim, dataset.image_shape).to(device)
    vae.load_state_dict(load_checkpoint(Path(run_dir) / CHECKPOINT, map_location=device)["vae"])
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

    Writes ``eval.json`` and ``kl_per_dim.png`` into ``run_dir`` and returns the dict it wrote.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    torch_device = resolve_device(device)
    config = load_config(run_dir / "config.yaml")
    dataset = load_dataset(config.data.name, data_dir or config.data.data_dir, device=torch_device)
    vae = load_trained_vae(run_dir, config, dataset, torch_device)
    x = evaluation_split(dataset, split)
    pyro.set_rng_seed(seed)
    estimate = importance_sample(
        vae, x, num_samples, batch_size=batch_size, particle_batch_size=particle_batch_size, progress=progress
    )
    health = latent_health(vae, x)
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
        plot_kl_per_dim(health["kl_per_dim"], [a > ACTIVE_UNIT_THRESHOLD for a in health["unit_activity"]],
                        run_dir / "kl_per_dim.png")
    results["seconds"] = time.perf_counter() - started
    (run_dir / EVAL_FILE).write_text(json.dumps(results, indent=1))
    return results


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: a k̂ that could not be fitted is written as null."""
    return value if math.isfinite(value) else None
