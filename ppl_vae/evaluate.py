"""Evaluation of a trained VAE. Units: nats per datapoint; ELBO and log p(x) are log-probabilities
(higher is better); "reconstruction" is E_q[log p(x|z)] and "kl" is KL(q(z|x) || p(z)) >= 0, so
elbo = reconstruction - kl.

The marginal likelihood is estimated by importance sampling with the guide as proposal (Burda et
al. 2015): log p(x) ≈ log (1/K) Σ_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x), one value per datapoint.
The log-weights are read off vectorized model and guide traces, so the estimator works for every
prior, likelihood and posterior; unlike Pyro's ``Importance``, it keeps the data plate.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import Independent, kl_divergence
from tqdm.auto import tqdm

from ppl_vae.errors import EvaluationError
from ppl_vae.model import VAE

if TYPE_CHECKING:
    import arviz as az

DATA_PLATE = "data"  # the plate over datapoints in VAE.model and VAE.guide
PSIS_KHAT_THRESHOLD = 0.7  # ArviZ's guidance: above it, the importance-sampling estimate is unreliable
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2015: unit u is active if Cov_x(E_q[z_u|x]) > 0.01


def elbo_terms(model_trace: Trace, guide_trace: Trace, analytic_kl: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint reconstruction log p(x|z) and KL(q(z|x) || p(z)) from one pair of traces.

    The terms are unweighted by β (read off the sites' distributions, not their scaled log-probs).
    With ``analytic_kl`` the KL is closed-form where torch knows it (TraceMeanField_ELBO's
    estimator), else the single-sample estimate log q(z|x) - log p(z) (Trace_ELBO's). Vectorized
    particles (a leading particle dimension) are averaged.
    """
    x_site, z_model, z_guide = model_trace.nodes["x"], model_trace.nodes["z"], guide_trace.nodes["z"]
    reconstruction = x_site["fn"].log_prob(x_site["value"])
    posterior, prior, z = z_guide["fn"], z_model["fn"], z_guide["value"]
    kl = None
    if analytic_kl:
        try:
            kl = kl_divergence(posterior, prior)
        except NotImplementedError:
            pass
    if kl is None:
        kl = posterior.log_prob(z) - prior.log_prob(z)
    batch_size = x_site["value"].shape[0]
    kl = kl.expand(reconstruction.shape)
    return reconstruction.reshape(-1, batch_size).mean(0), kl.reshape(-1, batch_size).mean(0)


def trace_pair(
    vae: VAE, x: torch.Tensor, kl_weight: float = 1.0, num_particles: int | None = None, particle_dim: int = -2
) -> tuple[Trace, Trace]:
    """Run the guide on ``x`` and the model replayed on the guide's z: (model_trace, guide_trace).

    With ``num_particles`` both run inside a ``particles`` plate at ``particle_dim`` (left of every
    plate of the model), so each latent site holds that many draws per datapoint.
    """
    model, guide = vae.model, vae.guide
    if num_particles is not None:
        model, guide = _vectorized(model, num_particles, particle_dim), _vectorized(guide, num_particles, particle_dim)
    guide_trace = poutine.trace(guide).get_trace(x, kl_weight)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, kl_weight)
    return model_trace, guide_trace


def _vectorized(fn: Any, num_particles: int, particle_dim: int) -> Any:
    def vectorized(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate("particles", num_particles, dim=particle_dim):
            return fn(*args, **kwargs)

    return vectorized


@torch.no_grad()
def evaluate_elbo(vae: VAE, x: torch.Tensor, batch_size: int = 1000, num_particles: int = 1) -> dict[str, float]:
    """Mean ELBO, reconstruction and (analytic where possible) KL over ``x``, in nats per datapoint."""
    totals = torch.zeros(2, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        for _ in range(num_particles):
            reconstruction, kl = elbo_terms(*trace_pair(vae, batch))
            totals += torch.stack([reconstruction.sum(), kl.sum()])
    reconstruction, kl = (totals / (x.shape[0] * num_particles)).tolist()
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}


# -- importance-sampled log p(x) --------------------------------------------------------------------


@dataclass
class PlateLayout:
    """Where the particle and data dimensions sit in the log-probabilities of a VAE's sites."""

    particle_dim: int
    data_dim: int

    @classmethod
    def of(cls, vae: VAE, x: torch.Tensor) -> PlateLayout:
        """Read the plates off one unvectorized trace pair: particles go left of every plate.

        Every sample site must lie in the data plate (local latents): a global latent would couple
        the datapoints, and log p(x) would no longer split into one value per datapoint.
        """
        data_dims, nesting = set(), 0
        for trace in trace_pair(vae, x[:1]):
            for name, site in prune_subsample_sites(trace).nodes.items():
                if site["type"] != "sample":
                    continue
                frames = {frame.name: frame.dim for frame in site["cond_indep_stack"]}
                if DATA_PLATE not in frames:
                    raise EvaluationError(
                        f"site {name!r} is outside the {DATA_PLATE!r} plate: a per-datapoint log p(x) needs every "
                        f"latent variable to be local (sampled inside pyro.plate({DATA_PLATE!r}, ...))."
                    )
                data_dims.add(frames[DATA_PLATE])
                nesting = max([nesting, *(-dim for dim in frames.values())])
        return cls(particle_dim=-nesting - 1, data_dim=data_dims.pop())

    def per_datapoint(self, trace: Trace) -> torch.Tensor:
        """Σ of every sample site's log-probability, summed over all plates but particles and data:
        shape (particles, datapoints)."""
        trace = prune_subsample_sites(trace)
        trace.compute_log_prob()
        total = torch.zeros(())
        for site in trace.nodes.values():
            if site["type"] == "sample":
                log_prob = site["log_prob"]
                log_prob = log_prob.reshape((1,) * (-self.particle_dim - log_prob.dim()) + log_prob.shape)
                others = [dim for dim in range(self.particle_dim + 1, 0) if dim != self.data_dim]
                total = total + (log_prob.sum(others) if others else log_prob)
        return total


@torch.no_grad()
def log_weights(vae: VAE, x: torch.Tensor, num_samples: int, layout: PlateLayout | None = None) -> torch.Tensor:
    """Importance log-weights log p(x, z_k) - log q(z_k|x), z_k ~ q(z|x): shape (num_samples, len(x)).

    All particles are drawn in one vectorized pass (a ``particles`` plate around model and guide);
    the data plate is kept, so each column belongs to one datapoint.
    """
    layout = layout or PlateLayout.of(vae, x)
    model_trace, guide_trace = trace_pair(vae, x, num_particles=num_samples, particle_dim=layout.particle_dim)
    weights = layout.per_datapoint(model_trace) - layout.per_datapoint(guide_trace)
    return weights.expand(num_samples, x.shape[0])


@dataclass
class ImportanceEstimate:
    """Per-datapoint results of importance sampling with ``num_samples`` draws from the guide.

    ``log_likelihood``: log p(x) estimates (nats); ``elbo``: the mean log-weight, a K-sample ELBO
    estimate (nats, <= log_likelihood); ``ess``: effective sample size (Σw)²/Σw², between 1 and
    K; ``khat``: PSIS Pareto k̂ (ArviZ ``psislw``), or None when not computed.
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
    """PSIS Pareto k̂ of each column of log-weights (num_samples, datapoints), by ArviZ.

    k̂ is inf where the tail is too short to fit (fewer than about 25 samples, or equal weights)."""
    import arviz as az  # imported when used: it is slow to import and warns about its coming 1.0

    _, khat = az.psislw(weights.T.double().cpu().numpy())
    return torch.as_tensor(np.asarray(khat), dtype=weights.dtype)


@torch.no_grad()
def importance_sample(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 5000,
    *,
    batch_size: int = 100,
    particle_batch_size: int = 100,
    psis: bool = True,
    progress: bool = False,
) -> ImportanceEstimate:
    """Importance-sample log p(x) for every row of ``x``, with diagnostics from the same log-weights.

    Memory is bounded by chunking: ``batch_size`` datapoints at a time, their ``num_samples``
    particles drawn ``particle_batch_size`` at a time; only the (num_samples, batch_size)
    log-weights of one chunk of datapoints are held. With ``psis``, warns when any k̂ > 0.7.
    """
    if num_samples < 1 or batch_size < 1 or particle_batch_size < 1:
        raise EvaluationError(
            f"num_samples, batch_size and particle_batch_size must be >= 1, got {num_samples}, {batch_size} and "
            f"{particle_batch_size}."
        )
    layout = PlateLayout.of(vae, x)
    results: dict[str, list[torch.Tensor]] = {"log_likelihood": [], "elbo": [], "ess": [], "khat": []}
    with tqdm(total=x.shape[0], unit="datapoint", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size]
            weights = torch.cat([
                log_weights(vae, batch, min(particle_batch_size, num_samples - first), layout)
                for first in range(0, num_samples, particle_batch_size)
            ])
            normalizer = torch.logsumexp(weights, dim=0)
            results["log_likelihood"].append(normalizer - math.log(num_samples))
            results["elbo"].append(weights.mean(0))
            results["ess"].append(torch.exp(2 * normalizer - torch.logsumexp(2 * weights, dim=0)))
            if psis:
                results["khat"].append(psis_khat(weights))
            bar.update(batch.shape[0])
    khat = torch.cat(results["khat"]) if psis else None
    if khat is not None and bool((khat > PSIS_KHAT_THRESHOLD).any()):
        unreliable = int((khat > PSIS_KHAT_THRESHOLD).sum())
        warnings.warn(
            f"PSIS k̂ > {PSIS_KHAT_THRESHOLD} for {unreliable} of {len(khat)} datapoints "
            f"(max {khat.max().item():.2f}): the guide is a poor proposal there and their log p(x) estimates may be"
            " far too low; use more samples or a better guide (k̂ = inf: too few samples to fit the tail).",
            stacklevel=3,  # the caller of importance_sample, past torch.no_grad's wrapper
        )
    return ImportanceEstimate(
        log_likelihood=torch.cat(results["log_likelihood"]),
        elbo=torch.cat(results["elbo"]),
        ess=torch.cat(results["ess"]),
        khat=khat,
        num_samples=num_samples,
    )


def log_likelihood(
    vae: VAE, x: torch.Tensor, num_samples: int = 5000, *, batch_size: int = 100, particle_batch_size: int = 100,
    progress: bool = False,
) -> torch.Tensor:
    """Importance-sampled log p(x) in nats, one value per row of ``x`` (see :func:`importance_sample`)."""
    return importance_sample(
        vae, x, num_samples, batch_size=batch_size, particle_batch_size=particle_batch_size, psis=False,
        progress=progress,
    ).log_likelihood


# -- latent health ----------------------------------------------------------------------------------


def _factorized(distribution: Any, role: str) -> Any:
    if not (isinstance(distribution, Independent) and distribution.reinterpreted_batch_ndims == 1):
        raise EvaluationError(
            f"the KL per latent dimension needs a {role} that factorizes over dimensions (an Independent "
            f"distribution over one event dimension), got {type(distribution).__name__}."
        )
    return distribution.base_dist


@torch.no_grad()
def kl_per_dimension(vae: VAE, x: torch.Tensor, batch_size: int = 1000, num_samples: int = 100) -> torch.Tensor:
    """KL(q(z_u|x) || p(z_u)) for each latent dimension u, averaged over ``x`` (nats).

    Closed-form where torch knows it; else a Monte Carlo estimate with ``num_samples`` draws.
    Needs a factorized posterior and prior (their per-dimension KLs then sum to the total KL).
    """
    prior = _factorized(vae.prior(), "prior")
    total = torch.zeros(vae.latent_dim, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        posterior = _factorized(vae.encode(x[start : start + batch_size]), "posterior")
        try:
            kl = kl_divergence(posterior, prior)
        except NotImplementedError:
            z = posterior.sample((num_samples,))
            kl = (posterior.log_prob(z) - prior.log_prob(z)).mean(0)
        total += kl.sum(0)
    return total / x.shape[0]


@torch.no_grad()
def unit_activity(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Cov_x(E_q[z_u|x]) for each latent dimension u: the variance over ``x`` of the posterior means."""
    means = torch.cat([vae.encode(x[start : start + batch_size]).mean for start in range(0, x.shape[0], batch_size)])
    return means.var(0)


@torch.no_grad()
def marginal_kl(vae: VAE, x: torch.Tensor, num_samples: int = 1, batch_size: int = 10) -> float:
    """KL(q(z) || p(z)) of the aggregate posterior q(z) = (1/N) Σ_n q(z|x_n) over the rows of ``x``.

    Monte Carlo, as in Taming VAEs (Rezende & Viola 2018, §4.1.1): ``num_samples`` draws
    z ~ q(z|x_n) per datapoint, log q(z) = logsumexp_m log q(z|x_m) - log N over all N rows; the
    estimate is the mean of log q(z) - log p(z) (nats). This is unbiased for the aggregate posterior
    of these N datapoints (an N-component mixture), which approaches the population's as N grows.
    """
    posterior, prior = vae.encode(x), vae.prior()
    z = posterior.sample((num_samples,)).reshape(-1, vae.latent_dim)
    total = 0.0
    for start in range(0, z.shape[0], batch_size):
        z_batch = z[start : start + batch_size]
        # (batch, 1, latent) against the N posteriors: (batch, N) log-densities
        log_aggregate = torch.logsumexp(posterior.log_prob(z_batch.unsqueeze(1)), dim=1) - math.log(x.shape[0])
        total += (log_aggregate - prior.log_prob(z_batch)).sum().item()
    return total / z.shape[0]


def latent_health(vae: VAE, x: torch.Tensor, aggregate: bool = True) -> dict[str, Any]:
    """KL per latent dimension (nats), active units (Burda et al.) and, with ``aggregate``, the
    marginal KL(q(z) || p(z)) and the mutual information I(x; z) = E_x KL(q(z|x) || p(z)) - KL(q(z) || p(z))
    (nats; 0 <= I <= log N for N datapoints, up to Monte Carlo noise). ``kl_per_dim`` is ``None``
    for a prior or posterior that does not factorize over dimensions (mixture, VampPrior, flows,
    full covariance): only the total KL is defined then."""
    try:
        kl_per_dim = kl_per_dimension(vae, x)
        kl = kl_per_dim.sum().item()
    except EvaluationError:
        kl_per_dim, kl = None, evaluate_elbo(vae, x, num_particles=10)["kl"]  # Monte Carlo where no closed form
    activity = unit_activity(vae, x)
    health: dict[str, Any] = {
        "kl_per_dim": None if kl_per_dim is None else kl_per_dim.tolist(),
        "kl": kl,
        "unit_activity": activity.tolist(),
        "active_units": int((activity > ACTIVE_UNIT_THRESHOLD).sum()),
    }
    if aggregate:
        health["marginal_kl"] = marginal_kl(vae, x)
        health["mutual_information"] = health["kl"] - health["marginal_kl"]
    return health


# -- posterior samples for ArviZ --------------------------------------------------------------------


@torch.no_grad()
def to_inference_data(vae: VAE, x: torch.Tensor, num_samples: int = 1000) -> az.InferenceData:
    """Draws from q(z|x) for each row of ``x`` as ArviZ ``InferenceData`` (one chain).

    Every latent site of the guide becomes a posterior variable with dimensions
    (chain, draw, datapoint, <site>_dim_<i>), ready for ``az.summary`` and ``az.plot_posterior``.
    The draws are independent, so one chain holds them all (ArviZ's r_hat needs several: it is NaN).
    """
    import arviz as az

    layout = PlateLayout.of(vae, x)
    _, guide_trace = trace_pair(vae, x, num_particles=num_samples, particle_dim=layout.particle_dim)
    posterior, dims = {}, {}
    for name, site in prune_subsample_sites(guide_trace).nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            draws = site["value"].expand(num_samples, *site["value"].shape[1:])
            posterior[name] = draws.unsqueeze(0).cpu().numpy()
            dims[name] = ["datapoint", *(f"{name}_dim_{i}" for i in range(draws.dim() - 2))]
    return az.from_dict(posterior=posterior, dims=dims, coords={"datapoint": np.arange(x.shape[0])})
