"""The importance-weighted bound (IWAE; Burda, Grosse & Salakhutdinov 2015, "Importance weighted
autoencoders"), with the standard gradient or the doubly reparameterized one (DReG; Tucker, Lawson,
Gu & Maddison 2018, "Doubly reparameterized gradient estimators for Monte Carlo objectives").

For a datapoint x and k particles z_1, ..., z_k drawn independently from q(z|x), with the
importance log-weights

    log w_j = log p(x, z_j) - log q(z_j|x),

the bound (Burda et al., eq. 8) is

    L_k(x) = E[log (1/k) Σ_j w_j]  <=  log p(x).

L_1 is the ELBO; L_k grows with k and tends to log p(x) as k -> ∞ when the weights are bounded
(their Theorem 1).

Pyro's ``RenyiELBO(alpha=0)`` is this bound only for one global latent: it logsumexps log-weights
summed over the whole batch, and it puts site scales (β, subsampling) inside the logsumexp (pyro
issue 3104; DESIGN's pitfalls). Here every quantity is kept per datapoint (the ``data`` plate of
:mod:`~ppl_vae.objectives.traces`), the log-weights are unscaled (an observed site's mask still
drops what it hides) and the scales are applied outside the logsumexp: with s the datapoint's
scale (that of the observed sites, e.g. a subsample scale N/B) and β_site the KL weight of a
latent site (its scale relative to s, 0 where it is masked), the loss of a batch is

    loss = -Σ_n s·L̂_k(x_n) + Σ_n Σ_sites s·(β_site - 1)·KL̂_n,site,

    L̂_k(x_n) = logsumexp_j(log w_nj) - log k,
    KL̂_n,site = (1/k) Σ_j [log q(z_j|x_n) - log p(z_j)]   (at the site).

So β changes the loss by exactly (β - 1)·KL, as for the other objectives (DESIGN's β semantics),
and with k = 1 the loss is ``Trace_ELBO``'s on the same draws, for every β. The weighted KL is read
off each trace's own scale and mask, which the VAE sets alike in its model and guide
(:func:`~ppl_vae.models.vae.kl_weight_scale`).

Gradients. Both estimators need reparameterized latents (a guide site whose distribution has no
``rsample`` raises: there is no score-function term here). ``standard`` differentiates the loss
above: for the bound, Σ_j w̃_j ∇ log w_j with w̃_j = w_j / Σ_i w_i, the path through z included.
``dreg`` keeps this for the model's parameters θ and replaces the guide's (φ) by

    ∇_φ L̂_k = Σ_j w̃_j² (∂ log w_j / ∂z_j)(∂z_j / ∂φ),

which has the same expectation and no score term: the standard estimator's signal-to-noise ratio
for φ falls like 1/√k (Rainforth et al. 2018, "Tighter variational bounds are not necessarily
better"), DReG's grows with k (Tucker et al.). At k = 1 it is the "sticking the landing" gradient
of the ELBO (Roeder, Wu & Duvenaud 2017); at the exact posterior it is 0 on every draw.

It is built for any reparameterized guide, flows included: log q is evaluated with its direct
dependence on φ removed (:func:`score_free_log_prob`), and a hook on each latent, as the model
receives it, multiplies the gradient flowing back into z by w̃, so the pathwise term gets w̃
twice. The model receives each latent as a view of the guide's draw (not the draw itself), so the
KL correction above, computed on the guide's draw, keeps its standard gradient. DReG treats each
guide site's distribution as a function of x and φ only: in a guide whose latents condition on one
another, the path through the earlier latents' values into the later distributions' parameters is
removed as well, which biases it.

Terms (nats, summed over the batch's datapoints, unscaled): ``iwae`` (Σ_n L̂_k(x_n)), and the
one-sample ELBO's ``elbo``, ``reconstruction`` (E_q log p(x|z)) and ``kl`` (the Monte Carlo
estimate log q - log p), averaged over the k particles, comparable with the other objectives.
"""

from __future__ import annotations

import math
import typing
from typing import Any, Callable, Literal

import pyro
import torch
from pyro import poutine
from pyro.distributions import Distribution
from pyro.distributions.util import scale_and_mask
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites

from ppl_vae.errors import ConfigError, EvaluationError
from ppl_vae.objectives.base import OBJECTIVES
from ppl_vae.objectives.compiled import CompilableObjective
from ppl_vae.objectives.elbo import check_num_particles
from ppl_vae.objectives.traces import DATA_PLATE, PARTICLES, PlateLayout, per_datapoint, sample_sites
from ppl_vae.validation import suggest

Gradient = Literal["standard", "dreg"]


@OBJECTIVES.register("iwae")
class IWAE(CompilableObjective):
    """The IWAE bound with ``num_particles`` (k) particles per datapoint, drawn in one vectorized pass.

    Args:
        num_particles: k, the number of importance samples per datapoint (k = 1 is the ELBO).
        gradient: ``"standard"`` (the reparameterized gradient of the bound) or ``"dreg"`` (the
            doubly reparameterized estimator for the guide's parameters; same value and expectation).

    Works for any model and guide whose sample sites lie in ``pyro.plate("data", N)``; a site
    outside it raises :class:`~ppl_vae.errors.EvaluationError`.
    """

    bound = "iwae"
    term_labels = {"iwae": "IWAE bound, k particles (nats/datapoint)"}

    def __init__(self, *, num_particles: int = 5, gradient: Gradient = "standard") -> None:
        super().__init__()
        check_num_particles(num_particles)
        gradients = typing.get_args(Gradient)
        if gradient not in gradients:
            raise ConfigError(
                f"gradient: must be one of {', '.join(map(repr, gradients))}, got {gradient!r}."
                f"{suggest(str(gradient), list(gradients))}"
            )
        self.num_particles = num_particles
        self.gradient = gradient
        self._layout: tuple[tuple[Callable, Callable], PlateLayout] | None = None  # per (model, guide)

    def compile(self) -> bool:
        """Compile the loss as :class:`~ppl_vae.objectives.compiled.CompilableObjective` does, with the
        standard gradient only: DReG's gradient comes from hooks on the latents, which a traced graph
        drops."""
        return self.gradient == "standard" and super().compile()

    def loss_and_terms(self, model: Callable, guide: Callable, *args: Any,
                       **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The differentiable loss of one batch, summed over its datapoints (a Pyro loss), and its terms."""
        num_particles = self.num_particles
        if self._layout is None or self._layout[0] != (model, guide):  # the plates depend on the model, not the data
            self._layout = (model, guide), _plate_layout(model, guide, *args, **kwargs)
        layout = self._layout[1]
        model_trace, guide_trace = _particle_trace_pair(
            model, guide, *args, num_particles=num_particles, particle_dim=layout.particle_dim, **kwargs
        )
        scale = _datapoint_scale(model_trace)
        # every per-datapoint quantity below is (particles, datapoints)
        reconstruction = sum(
            per_datapoint(scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"]), site)
            for site in sample_sites(model_trace, observed=True).values()
        )
        kl = torch.zeros_like(reconstruction)
        weighted_kl = torch.zeros_like(reconstruction)  # s·β·KL, with each trace's own scale and mask
        latents = sample_sites(guide_trace, observed=False)
        for name, guide_site in latents.items():
            _check_reparameterized(guide_site)
            model_site, z = model_trace.nodes[name], guide_site["value"]
            log_q, log_p = guide_site["fn"].log_prob(z), model_site["fn"].log_prob(z)
            kl = kl + per_datapoint(log_q, guide_site) - per_datapoint(log_p, model_site)
            weighted_kl = (
                weighted_kl
                + per_datapoint(scale_and_mask(log_q, guide_site["scale"], guide_site["mask"]), guide_site)
                - per_datapoint(scale_and_mask(log_p, model_site["scale"], model_site["mask"]), model_site)
            )
        log_weights = (reconstruction - kl).expand(num_particles, -1)
        bound = log_weights.logsumexp(0) - math.log(num_particles)
        bound_loss = -scale * bound.sum()
        kl_correction = (weighted_kl - scale * kl).mean(0).sum()  # Σ_n Σ_sites s·(β - 1)·KL̂_n,site
        terms = {
            "iwae": bound.sum().detach(),
            "elbo": (reconstruction - kl).mean(0).sum().detach(),
            "reconstruction": reconstruction.mean(0).sum().detach(),
            "kl": kl.mean(0).sum().detach(),
        }
        if self.gradient == "dreg" and bound_loss.requires_grad:
            surrogate = -scale * _dreg_surrogate(model_trace, latents, reconstruction, log_weights, layout)
            bound_loss = bound_loss.detach() + surrogate - surrogate.detach()
        return bound_loss + kl_correction, terms


def score_free_log_prob(distribution: Distribution, z: torch.Tensor) -> torch.Tensor:
    """log q(z) with its direct dependence on q's parameters (the score) removed: the same value, a
    gradient through z only. Works for any distribution with a ``log_prob`` at new points. For a
    flow, ``z`` must not be the tensor it sampled: log q would be read off the cached base noise,
    and its gradient would reach the parameters without passing through z (the model's view of the
    draw is used here)."""
    at_fixed_z = distribution.log_prob(z.detach())
    return distribution.log_prob(z) - at_fixed_z + at_fixed_z.detach()


def _dreg_surrogate(
    model_trace: Trace, latents: dict[str, dict[str, Any]], reconstruction: torch.Tensor,
    log_weights: torch.Tensor, layout: PlateLayout,
) -> torch.Tensor:
    """Σ_n Σ_j w̃_nj·log w_nj, with the score part of log q removed and a hook on each latent (as the
    model received it) that multiplies the gradient into z by w̃: its gradient is DReG's estimate of
    ∇ Σ_n L̂_k(x_n) (w̃ is held constant)."""
    normalized_weights = log_weights.detach().softmax(0)
    score_free_log_weights = reconstruction
    for name, guide_site in latents.items():
        model_site = model_trace.nodes[name]
        z = model_site["value"]  # the model's view of the guide's draw: the decoder's input
        score_free_log_weights = (
            score_free_log_weights
            + per_datapoint(model_site["fn"].log_prob(z), model_site)
            - per_datapoint(score_free_log_prob(guide_site["fn"], z), guide_site)
        )
        if z.requires_grad:
            z.register_hook(_gradient_multiplier(_on_site(normalized_weights, model_site, layout)))
    return (normalized_weights * score_free_log_weights).sum()


def _gradient_multiplier(factor: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def multiply(gradient: torch.Tensor) -> torch.Tensor:
        return gradient * factor

    return multiply


def _on_site(values: torch.Tensor, site: dict[str, Any], layout: PlateLayout) -> torch.Tensor:
    """(particles, datapoints) values laid out to broadcast against the site's value: the particles
    at the particle plate's dimension, the datapoints at the data plate's, 1 elsewhere."""
    data_dim = next(frame.dim for frame in site["cond_indep_stack"] if frame.name == DATA_PLATE)
    shape = [1] * -layout.particle_dim
    shape[layout.particle_dim], shape[data_dim] = values.shape
    return values.reshape(shape + [1] * len(site["fn"].event_shape))


def _plate_layout(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> PlateLayout:
    """``PlateLayout.of`` without moving the random stream: its probe draws a latent, and the
    particles should be the draws an ELBO would make from the same seed."""
    devices = sorted({arg.device.index for arg in args if isinstance(arg, torch.Tensor) and arg.is_cuda})
    with torch.random.fork_rng(devices=devices):
        return PlateLayout.of(model, guide, *args, **kwargs)


def _particle_trace_pair(
    model: Callable, guide: Callable, *args: Any, num_particles: int, particle_dim: int, **kwargs: Any,
) -> tuple[Trace, Trace]:
    """:func:`~ppl_vae.objectives.traces.trace_pair` with particles, except that the model is
    replayed on a view of each latent drawn by the guide rather than on the draw itself, so that a
    gradient hook on the model's value acts only on what is computed from the model's side."""
    with pyro.plate(PARTICLES, num_particles, dim=particle_dim):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        handed_over = guide_trace.copy()
        for name, site in sample_sites(guide_trace, observed=False).items():
            handed_over.nodes[name] = {**site, "value": site["value"].view_as(site["value"])}
        model_trace = poutine.trace(poutine.replay(model, trace=handed_over)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def _datapoint_scale(model_trace: Trace) -> float:
    """s, the scale of every observed site (1, or e.g. N/B for a subsample); it must be one number."""
    scales = {name: _as_number(site) for name, site in sample_sites(model_trace, observed=True).items()}
    if not scales:
        raise EvaluationError("iwae: the model has no observed sample site, so there is no log p(x) to bound.")
    first = next(iter(scales.values()))
    if any(not math.isclose(scale, first) for scale in scales.values()):
        raise EvaluationError(
            f"iwae: the observed sites have different scales {scales}; the bound needs one scale per "
            "datapoint (e.g. a subsample scale N/B around the whole model), applied outside the logsumexp."
        )
    return first


def _as_number(site: dict[str, Any]) -> float:
    scale = site["scale"]
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise EvaluationError(
                f"iwae: site {site['name']!r} has a scale of shape {tuple(scale.shape)}; the bound needs "
                "one number (applied outside the logsumexp over particles)."
            )
        return scale.item()
    return float(scale)


def _check_reparameterized(site: dict[str, Any]) -> None:
    if not site["fn"].has_rsample:
        raise EvaluationError(
            f"iwae: latent site {site['name']!r} has a distribution without rsample "
            f"({type(site['fn']).__name__}); the IWAE gradients (standard and dreg) need reparameterized "
            "latents. Use the 'elbo' objective, whose Trace_ELBO adds score-function terms."
        )
