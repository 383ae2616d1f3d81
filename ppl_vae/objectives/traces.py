"""Reading per-datapoint quantities off Pyro traces of any model and guide with local latents.

Every objective and every evaluation works on a ``(model, guide, *args)`` triple, not on a VAE: the
model and the guide put their latent and observed sample sites inside ``pyro.plate("data", N)``
(the :data:`DATA_PLATE`), and these helpers keep that plate, so each quantity comes out as one
value per datapoint (Pyro's ``Importance`` and ``RenyiELBO`` sum over it instead, DESIGN's
pitfalls). Units: nats; log-probabilities are unscaled (read off the sites' distributions, so β
and subsample scales are left to the caller).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch.distributions import kl_divergence

from ppl_vae.errors import EvaluationError

DATA_PLATE = "data"  # the plate over datapoints in every model and guide
PARTICLES = "particles"  # the plate over particles that trace_pair adds
PYRO_PARTICLES = "num_particles_vectorized"  # the plate Pyro's ELBOs add for vectorized particles


def trace_pair(
    model: Callable, guide: Callable, *args: Any, num_particles: int | None = None, particle_dim: int = -2,
    **kwargs: Any,
) -> tuple[Trace, Trace]:
    """Run the guide on ``args`` and the model replayed on the guide's latents: (model_trace, guide_trace).

    With ``num_particles`` both run inside a ``particles`` plate at ``particle_dim`` (left of every
    plate of the model), so each latent site holds that many draws per datapoint.
    """
    if num_particles is not None:
        model, guide = _vectorized(model, num_particles, particle_dim), _vectorized(guide, num_particles, particle_dim)
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def _vectorized(fn: Callable, num_particles: int, particle_dim: int) -> Callable:
    def vectorized(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(PARTICLES, num_particles, dim=particle_dim):
            return fn(*args, **kwargs)

    return vectorized


def sample_sites(trace: Trace, observed: bool | None = None) -> dict[str, dict[str, Any]]:
    """The sample sites of ``trace`` by name (plates' subsample sites left out): all, only the
    observed ones, or only the latent ones."""
    return {
        name: site for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
        and (observed is None or bool(site["is_observed"]) == observed)
    }


def per_datapoint(value: torch.Tensor, site: dict[str, Any]) -> torch.Tensor:
    """A site's per-element values (its batch shape) as (particles, datapoints): summed over every
    plate but the data plate and particle plates, particles flattened into the first dimension
    (1 without particles)."""
    frames = [frame for frame in site["cond_indep_stack"] if frame.vectorized]
    data = [frame for frame in frames if frame.name == DATA_PLATE]
    if not data:
        raise EvaluationError(
            f"site {site['name']!r} is outside the {DATA_PLATE!r} plate: per-datapoint quantities need every "
            f"sample site to be local (sampled inside pyro.plate({DATA_PLATE!r}, ...))."
        )
    nesting = max(-frame.dim for frame in frames)
    if value.dim() < nesting:
        value = value.reshape((1,) * (nesting - value.dim()) + value.shape)
    nested = [frame.dim for frame in frames if frame.name not in (DATA_PLATE, PARTICLES, PYRO_PARTICLES)]
    if nested:
        value = value.sum(nested, keepdim=True)
    value = value.movedim(data[0].dim, -1)
    return value.reshape(-1, value.shape[-1]).expand(-1, data[0].size)


def unscaled_log_prob(site: dict[str, Any]) -> torch.Tensor:
    """log p(value) of a sample site, unscaled and unmasked: the value Pyro's ``compute_log_prob``
    (or ``compute_score_parts``) already stored in the site when an ELBO computed it, else computed here."""
    cached = site.get("unscaled_log_prob")
    return cached if cached is not None else site["fn"].log_prob(site["value"])


def analytic_kl_of(guide_site: dict[str, Any], model_site: dict[str, Any]) -> torch.Tensor | None:
    """KL(q || p) in closed form between a latent site's guide and model distributions, unscaled: the
    value an estimator already stored in the guide site (``analytic_kl``), else computed here; None
    where torch has no closed form."""
    cached = guide_site.get("analytic_kl")
    if cached is not None:
        return cached
    try:
        return kl_divergence(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        return None


def log_prob_per_datapoint(trace: Trace, observed: bool | None = None) -> torch.Tensor:
    """Σ of the unscaled log-probabilities of the trace's sample sites (all, observed or latent),
    as (particles, datapoints)."""
    sites = sample_sites(trace, observed)
    return sum(per_datapoint(unscaled_log_prob(site), site) for site in sites.values())


def elbo_terms(model_trace: Trace, guide_trace: Trace, analytic_kl: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint reconstruction Σ log p(obs|z) and KL(q(z|x) || p(z)) from one pair of traces.

    The terms are unweighted by β (read off the sites' distributions, not their scaled log-probs).
    With ``analytic_kl`` the KL is closed-form where torch knows it (TraceMeanField_ELBO's
    estimator), else the single-sample estimate log q(z|x) - log p(z) (Trace_ELBO's). Particles
    are averaged. Every latent site of the guide counts towards the KL.
    """
    reconstruction = log_prob_per_datapoint(model_trace, observed=True).mean(0)
    kl = torch.zeros_like(reconstruction)
    for name, guide_site in sample_sites(guide_trace, observed=False).items():
        site_kl = analytic_kl_of(guide_site, model_trace.nodes[name]) if analytic_kl else None
        if site_kl is None:
            site_kl = unscaled_log_prob(guide_site) - unscaled_log_prob(model_trace.nodes[name])
        kl = kl + per_datapoint(site_kl, guide_site).mean(0)
    return reconstruction, kl


@dataclass
class PlateLayout:
    """Where a particle plate can go for a model and guide: left of every plate they use."""

    particle_dim: int

    @classmethod
    def of(cls, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> PlateLayout:
        """Read the plates off one unvectorized trace pair on the first datapoint of ``args``.

        Every sample site must lie in the data plate (local latents): a global latent would couple
        the datapoints, and log p(x) would no longer split into one value per datapoint.
        """
        first = [arg[:1] if isinstance(arg, torch.Tensor) else arg for arg in args]
        nesting = 1
        for trace in trace_pair(model, guide, *first, **kwargs):
            for site in sample_sites(trace).values():
                frames = [frame for frame in site["cond_indep_stack"] if frame.vectorized]
                per_datapoint(torch.zeros(()), site)  # raises for a site outside the data plate
                nesting = max([nesting, *(-frame.dim for frame in frames)])
        return cls(particle_dim=-nesting - 1)


def log_weights(
    model: Callable, guide: Callable, *args: Any, num_particles: int, layout: PlateLayout | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Importance log-weights log p(x, z_k) - log q(z_k|x), z_k ~ q(z|x): shape (num_particles, datapoints).

    All particles are drawn in one vectorized pass (a ``particles`` plate around model and guide);
    the data plate is kept, so each column belongs to one datapoint. Differentiable: wrap the call in
    ``torch.no_grad()`` for evaluation.
    """
    layout = layout or PlateLayout.of(model, guide, *args, **kwargs)
    model_trace, guide_trace = trace_pair(
        model, guide, *args, num_particles=num_particles, particle_dim=layout.particle_dim, **kwargs
    )
    weights = log_prob_per_datapoint(model_trace) - log_prob_per_datapoint(guide_trace, observed=False)
    return weights.expand(num_particles, -1)
