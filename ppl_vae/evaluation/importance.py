"""Importance-sampled log-likelihood with the guide as proposal (Burda et al. 2015), and the
diagnostics of its weights (effective sample size, PSIS Pareto k̂).

For data d (x for a VAE; y given x for a conditional model) and latents z:
log p(d) ≈ log (1/K) Σ_k p(d, z_k) / q(z_k|d), z_k ~ q(z|d), one value per datapoint. The
log-weights are read off vectorized model and guide traces (:func:`~ppl_vae.objectives.traces.log_weights`),
so the estimator works for every model and guide whose latents are local to the data plate;
unlike Pyro's ``Importance``, it keeps the data plate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ppl_vae.errors import EvaluationError
from ppl_vae.evaluation.arviz import import_arviz
from ppl_vae.errors import warn_diagnostic
from ppl_vae.evaluation.inputs import check_counts, check_finite, chunks, count_datapoints
from ppl_vae.evaluation.plates import plate_layout
from ppl_vae.objectives.traces import PlateLayout, log_weights
from ppl_vae.training.loop import validation

PSIS_KHAT_THRESHOLD = 0.7  # ArviZ's guidance: above it, the importance-sampling estimate is unreliable
# ArviZ fits the Pareto tail to the ceil(K/5) largest weights (for K < 225) and needs more than 4 of them
PSIS_MIN_SAMPLES = 21


@dataclass
class ImportanceEstimate:
    """Per-datapoint results of importance sampling with ``num_samples`` draws from the guide.

    ``log_likelihood``: log p(x) estimates (nats); ``elbo``: the mean log-weight, a K-sample ELBO
    estimate (nats, <= log_likelihood); ``ess``: effective sample size (Σw)²/Σw², between 1 and
    K; ``khat``: PSIS Pareto k̂ (ArviZ ``psislw``; inf where the tail could not be fitted, every
    datapoint's below :data:`PSIS_MIN_SAMPLES` samples), or None when not asked for.
    """

    log_likelihood: torch.Tensor
    elbo: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor | None
    num_samples: int

    def bits_per_dim(self, data_dim: int) -> float:
        """Mean -log p(x) in bits per data dimension: NLL / (data_dim · ln 2)."""
        return -self.log_likelihood.mean().item() / (data_dim * math.log(2))


def psis_khat(weights: torch.Tensor) -> torch.Tensor:
    """PSIS Pareto k̂ of each column of log-weights (num_samples, datapoints), by ArviZ's ``psislw``.

    k̂ is inf where the tail is too short to fit: for every column when there are fewer than
    :data:`PSIS_MIN_SAMPLES` samples (ArviZ is not called then: it fails on a single sample), and
    where too few weights stand above the rest (equal weights, as from the exact posterior)."""
    if weights.dim() != 2:
        raise EvaluationError(
            f"psis_khat needs log-weights of shape (num_samples, datapoints), got shape {tuple(weights.shape)}."
        )
    if weights.shape[0] < PSIS_MIN_SAMPLES:
        return torch.full(weights.shape[1:], math.inf, dtype=weights.dtype)
    _, khat = import_arviz().psislw(weights.T.double().cpu().numpy())
    return torch.as_tensor(np.asarray(khat), dtype=weights.dtype)


@torch.no_grad()
def importance_sample(
    model: Callable,
    guide: Callable,
    *data: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    particle_batch_size: int = 100,
    psis: bool = True,
    progress: bool = False,
) -> ImportanceEstimate:
    """Importance-sample the log-likelihood of every datapoint of ``data``, with diagnostics from
    the same log-weights.

    Memory is bounded by chunking: ``batch_size`` datapoints at a time, their ``num_samples``
    particles drawn ``particle_batch_size`` at a time; only the (num_samples, batch_size)
    log-weights of one chunk of datapoints are held. Pyro's and torch's argument validation runs
    on the first batch of particles only, where it catches a model or guide that does not fit the
    data (as on the training loop's first step); later batches run the same model and guide with
    it off, without its support checks (and their host syncs on a GPU) at every sample site. Data
    with a NaN or Inf anywhere is refused up front, naming the datapoint.

    With ``psis``, warns (one :class:`~ppl_vae.errors.DiagnosticWarning`) when any
    k̂ > 0.7, or that k̂ could not be computed with fewer than :data:`PSIS_MIN_SAMPLES` samples
    (every k̂ is inf then). One sample is allowed: its log p(x) estimate is the single-sample ELBO
    and its ESS is 1.
    """
    check_counts(num_samples=num_samples, batch_size=batch_size, particle_batch_size=particle_batch_size)
    check_finite(data)
    layout = plate_layout(model, guide, *data)
    results: dict[str, list[torch.Tensor]] = {"log_likelihood": [], "elbo": [], "ess": [], "khat": []}
    with tqdm(total=count_datapoints(data), unit="datapoint", disable=not progress, dynamic_ncols=True) as bar:
        for index, chunk in enumerate(chunks(data, batch_size)):
            weights = _chunk_log_weights(model, guide, chunk, num_samples, particle_batch_size, layout,
                                         validate=index == 0)
            normalizer = torch.logsumexp(weights, dim=0)
            results["log_likelihood"].append(normalizer - math.log(num_samples))
            results["elbo"].append(weights.mean(0))
            results["ess"].append(torch.exp(2 * normalizer - torch.logsumexp(2 * weights, dim=0)))  # (Σw)²/Σw²
            if psis:
                results["khat"].append(psis_khat(weights))
            bar.update(weights.shape[1])
    khat = torch.cat(results["khat"]) if psis else None
    if khat is not None:
        _warn_about_khat(khat, num_samples)
    return ImportanceEstimate(
        log_likelihood=torch.cat(results["log_likelihood"]),
        elbo=torch.cat(results["elbo"]),
        ess=torch.cat(results["ess"]),
        khat=khat,
        num_samples=num_samples,
    )


def _chunk_log_weights(
    model: Callable, guide: Callable, chunk: tuple[torch.Tensor, ...], num_samples: int, particle_batch_size: int,
    layout: PlateLayout, validate: bool,
) -> torch.Tensor:
    """The (num_samples, datapoints) log-weights of one chunk of datapoints, ``particle_batch_size``
    particles at a time; Pyro's and torch's argument validation as the user set it on the first
    batch with ``validate``, off for every other batch."""
    weights = []
    for first in range(0, num_samples, particle_batch_size):
        num_particles = min(particle_batch_size, num_samples - first)
        with validation(validate and first == 0):
            weights.append(log_weights(model, guide, *chunk, num_particles=num_particles, layout=layout))
    return torch.cat(weights)


def _warn_about_khat(khat: torch.Tensor, num_samples: int) -> None:
    """One diagnostic warning, attributed to the caller of :func:`importance_sample`, when k̂ says the
    estimates may be unreliable or could not be computed at all."""
    stacklevel = 4  # past this function, importance_sample and torch.no_grad's wrapper
    if num_samples < PSIS_MIN_SAMPLES:
        warn_diagnostic(
            f"PSIS k̂ was not computed: it needs at least {PSIS_MIN_SAMPLES} importance samples per datapoint, got "
            f"{num_samples}, so nothing checks whether the guide is a good enough proposal (use more samples).",
            stacklevel=stacklevel,
        )
        return
    unreliable = int((khat > PSIS_KHAT_THRESHOLD).sum())
    if unreliable:
        unfitted = int(torch.isinf(khat).sum())
        worst = f"{unfitted} with k̂ = inf, a tail too short to fit" if unfitted else f"max {khat.max().item():.2f}"
        warn_diagnostic(
            f"PSIS k̂ > {PSIS_KHAT_THRESHOLD} for {unreliable} of {len(khat)} datapoints ({worst}): the guide is a "
            "poor proposal there and their log-likelihood estimates may be far too low; use more importance samples "
            "or a better guide.",
            stacklevel=stacklevel,
        )


def log_likelihood(
    model: Callable,
    guide: Callable,
    *data: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    particle_batch_size: int = 100,
    progress: bool = False,
) -> torch.Tensor:
    """Importance-sampled log-likelihood in nats, one value per datapoint (see :func:`importance_sample`):
    log p(x) for ``vae.model, vae.guide, x``, log p(y|x) for ``cvae.model, cvae.guide, x, y``."""
    return importance_sample(
        model, guide, *data, num_samples=num_samples, batch_size=batch_size,
        particle_batch_size=particle_batch_size, psis=False, progress=progress,
    ).log_likelihood
