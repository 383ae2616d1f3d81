"""Pyro's ``Trace_ELBO`` and ``TraceMeanField_ELBO`` as the training objectives run them: the same
estimators, with the loss kept on the device and the last traces kept for the objective's terms.

Pyro's ``differentiable_loss`` reads each sample site's log-probability sum off the device
(``.item()``, to report the loss as a number) and checks the loss for NaN on every call
(``warn_if_nan``: one more read, and a hook on its gradient). On a GPU every read makes the host
wait for the device, several times a step. The estimators here compute the same loss and the same
surrogate loss (the one whose gradient is the estimator's) as tensors, as Pyro's own
``JitTrace_ELBO`` and ``JitTraceMeanField_ELBO`` do inside their compiled graphs, from the traces
Pyro's ``_get_traces`` makes (validation checks included). The training loop reads the losses for
NaN itself, in batches (:class:`~ppl_vae.training.callbacks.NonFiniteGuard`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import check_fully_reparametrized, is_identically_zero, is_validation_enabled
from pyro.poutine import Trace
from torch.distributions import kl_divergence

Sites = list[tuple[str, dict[str, Any]]]


def _sample_sites(trace: Trace) -> Sites:
    return [(name, site) for name, site in trace.nodes.items() if site["type"] == "sample"]


class OnDevice:
    """Mixin for a Pyro ELBO of the ``Trace_ELBO`` family: ``differentiable_loss`` without reading
    the device, and the model and guide traces of its last call in ``last_traces`` (each site's
    log-probability is stored there, so the objective's terms are read off them without computing
    any log-probability again)."""

    last_traces: tuple[Trace, Trace] | None = None

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The loss averaged over particles, as a tensor whose value is the negative ELBO estimate
        and whose gradient is the surrogate loss's (Pyro's ``loss + (surrogate - surrogate.item())``)."""
        loss, surrogate = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle_loss, particle_surrogate = self.particle_losses(model_trace, guide_trace)
            loss = loss + particle_loss.detach() / self.num_particles
            surrogate = surrogate + particle_surrogate / self.num_particles
            self.last_traces = model_trace, guide_trace
        return loss + (surrogate - surrogate.detach())

    def particle_losses(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, surrogate loss) of one particle's traces, both tensors."""
        raise NotImplementedError


class DeviceTraceELBO(OnDevice, Trace_ELBO):
    """``Trace_ELBO``: the KL estimated from the sample, log q(z|x) - log p(z); score-function terms
    (weighted by the downstream log-ratio) for latents without ``rsample``."""

    def particle_losses(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
        elbo = sum(site["log_prob_sum"] for _, site in _sample_sites(model_trace))
        surrogate, log_r = elbo, None
        for _, site in _sample_sites(guide_trace):
            _, score_function_term, entropy_term = site["score_parts"]
            elbo = elbo - site["log_prob_sum"]
            if not is_identically_zero(entropy_term):
                surrogate = surrogate - entropy_term.sum()
            if not is_identically_zero(score_function_term):
                log_r = _compute_log_r(model_trace, guide_trace) if log_r is None else log_r
                surrogate = surrogate + (log_r.sum_to(site["cond_indep_stack"]) * score_function_term).sum()
        return -elbo, -surrogate


class DeviceTraceMeanFieldELBO(OnDevice, TraceMeanField_ELBO):
    """``TraceMeanField_ELBO``: the KL in closed form where torch knows it, else the sampled
    log p(z) - log q(z|x); every latent must be reparameterized, so the loss is its own surrogate.
    The closed-form KL (unscaled) is kept in the guide site as ``analytic_kl``, where the objective's
    terms read it (:func:`~ppl_vae.objectives.traces.analytic_kl_of`)."""

    def particle_losses(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
        elbo = 0.0
        for name, model_site in _sample_sites(model_trace):
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            try:
                guide_site["analytic_kl"] = kl_divergence(guide_site["fn"], model_site["fn"])  # for the terms too
                elbo = elbo - scale_and_mask(guide_site["analytic_kl"], scale=guide_site["scale"],
                                             mask=guide_site["mask"]).sum()
            except NotImplementedError:
                elbo = elbo + model_site["log_prob_sum"] - guide_site["score_parts"].entropy_term.sum()
        for name, guide_site in _sample_sites(guide_trace):
            if name not in model_trace.nodes:  # an auxiliary guide site
                if is_validation_enabled():
                    check_fully_reparametrized(guide_site)
                elbo = elbo - guide_site["score_parts"].entropy_term.sum()
        return -elbo, -elbo
