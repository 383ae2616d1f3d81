"""Evaluation of any model and guide whose latents are local to the data plate. Every function
takes ``model, guide, *data`` (per-datapoint tensors, chunked together along their first
dimension) and keyword options: ``log_likelihood(vae.model, vae.guide, x)`` for a VAE,
``log_likelihood(cvae.model, cvae.guide, x, y)`` for a conditional VAE.

Units: nats per datapoint; the ELBO and the log-likelihood are log-probabilities (higher is
better); "reconstruction" is E_q[log p(x|z)] and "kl" is KL(q(z|x) || p(z)) >= 0, so
elbo = reconstruction - kl.

- :mod:`~ppl_vae.evaluation.elbo`: the ELBO and its terms;
- :mod:`~ppl_vae.evaluation.importance`: the importance-sampled log-likelihood, ESS and PSIS k̂;
- :mod:`~ppl_vae.evaluation.latent`: KL per dimension, active units, marginal KL, mutual information;
- :mod:`~ppl_vae.evaluation.arviz`: posterior draws as ArviZ ``InferenceData``;
- :class:`~ppl_vae.errors.DiagnosticWarning`, the one-sentence warning an
  evaluation gives when a diagnostic doubts its numbers, and :func:`concise_warnings` to show it as
  one line in a command-line program.
"""

from ppl_vae.evaluation.arviz import to_inference_data
from ppl_vae.errors import DiagnosticWarning, concise_warnings
from ppl_vae.evaluation.elbo import evaluate_elbo
from ppl_vae.evaluation.importance import (
    PSIS_KHAT_THRESHOLD,
    PSIS_MIN_SAMPLES,
    ImportanceEstimate,
    importance_sample,
    log_likelihood,
    psis_khat,
)
from ppl_vae.evaluation.latent import (
    ACTIVE_UNIT_THRESHOLD,
    kl_per_dimension,
    latent_health,
    marginal_kl,
    unit_activity,
)

__all__ = [
    "ACTIVE_UNIT_THRESHOLD",
    "PSIS_KHAT_THRESHOLD",
    "PSIS_MIN_SAMPLES",
    "DiagnosticWarning",
    "ImportanceEstimate",
    "concise_warnings",
    "evaluate_elbo",
    "importance_sample",
    "kl_per_dimension",
    "latent_health",
    "log_likelihood",
    "marginal_kl",
    "psis_khat",
    "to_inference_data",
    "unit_activity",
]
