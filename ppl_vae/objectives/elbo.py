"""The evidence lower bound through Pyro's own estimators (Kingma & Welling 2013, eq. 3 and 10).

``elbo`` is ``Trace_ELBO``: the KL is estimated from the sample, log q(z|x) - log p(z).
``meanfield`` is ``TraceMeanField_ELBO``: the KL is closed-form where torch knows it (diagonal
Gaussian posterior and prior), the Monte Carlo estimate elsewhere. Both run as the on-device
versions of :mod:`ppl_vae.objectives.estimators` (the same loss and gradients, no host reads).

Both estimate E_q[log p(x|z)] - β·KL(q(z|x) || p(z)): β comes from the model and guide, which scale
the latent site by it in both (``ppl_vae.models.vae.kl_weight_scale``), so that the loss changes by
exactly (β - 1)·KL under either estimator (DESIGN's pitfalls).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from pyro.infer import ELBO
from pyro.ops.jit import CompiledFunction
from pyro.ops.jit import trace as jit_trace

from ppl_vae.errors import ConfigError
from ppl_vae.objectives.base import OBJECTIVES, Objective
from ppl_vae.objectives.estimators import DeviceTraceELBO, DeviceTraceMeanFieldELBO
from ppl_vae.objectives.traces import elbo_terms


MAX_COMPILED_GRAPHS = 4
"""The most graphs a compiled objective traces (one per batch shape and keyword arguments: a full
batch and an epoch's last, shorter one) before it stops compiling: a β that changes every step
would trace a new graph each step, slower than running eagerly."""

MAX_NUM_PARTICLES = 10_000
"""The most particles per datapoint a training objective accepts. Every particle of every datapoint
of a batch is held in memory at once (batch_size x num_particles x data size floats, and the
activations of every layer): 10000 particles of a 100-image MNIST batch already need 3 GB per
784-pixel tensor, while published objectives train with a few to a few dozen (IWAE: k <= 50; k = 5000
only to evaluate). A test log p(x) with more importance samples is estimated in chunks
(``train.log_likelihood_samples``, ``ppl-vae eval``)."""


def check_num_particles(num_particles: int) -> None:
    """Refuse a particle count below 1 or above :data:`MAX_NUM_PARTICLES`, naming the option."""
    if not 1 <= num_particles <= MAX_NUM_PARTICLES:
        raise ConfigError(
            f"num_particles: must be in [1, {MAX_NUM_PARTICLES}] (all particles of a batch are held in memory "
            f"at once), got {num_particles}; for a test log p(x) with more samples use "
            "train.log_likelihood_samples or ppl-vae eval, which take them in chunks."
        )


def elbo_term_sums(model_trace: Any, guide_trace: Any, analytic_kl: bool) -> dict[str, torch.Tensor]:
    """The batch sums of the ELBO, its reconstruction and its KL (unweighted by β), detached."""
    reconstruction, kl = elbo_terms(model_trace, guide_trace, analytic_kl)
    reconstruction, kl = reconstruction.sum().detach(), kl.sum().detach()
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}


@OBJECTIVES.register("elbo")
class TraceELBO(Objective):
    """The ELBO with Pyro's ``Trace_ELBO``: ``num_particles`` samples per datapoint, vectorized.

    Terms: ``elbo``, ``reconstruction`` (E_q log p(x|z)) and ``kl`` (KL(q(z|x) || p(z)), estimated as
    the loss estimates it), per datapoint, averaged over particles.
    """

    estimator: type[ELBO] = DeviceTraceELBO
    analytic_kl = False

    def __init__(self, *, num_particles: int = 1) -> None:
        super().__init__()
        check_num_particles(num_particles)
        self.num_particles = num_particles
        self.elbo = self.estimator(num_particles=num_particles, vectorize_particles=num_particles > 1)
        self.compiled: dict[Any, CompiledFunction] | None = None  # per (model, guide, shapes, keywords)

    def compile(self) -> bool:
        """From the next call on, run the loss and its terms as TorchScript graphs traced by Pyro's
        ``pyro.ops.jit.trace`` (the machinery of ``JitTrace_ELBO``): the same model, guide and
        estimator, without Python between the operations. One graph is traced per model and guide,
        batch shape and keyword arguments (β); past :data:`MAX_COMPILED_GRAPHS` of them, or if tracing
        fails, the objective warns once and runs eagerly from then on."""
        self.compiled = {}
        return True

    def needs_parameter_sites(self) -> bool:
        """Whether the loss is compiled: Pyro's jit finds the graph's parameters among the traces' sites."""
        return self.compiled is not None

    def __call__(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.compiled is not None:
            key = (model, guide, tuple(tuple(arg.shape) if isinstance(arg, torch.Tensor) else arg for arg in args),
                   tuple(sorted(kwargs.items())))
            if key not in self.compiled and len(self.compiled) == MAX_COMPILED_GRAPHS:
                self._stop_compiling(f"more than {MAX_COMPILED_GRAPHS} batch shapes and keyword arguments (a β that "
                                     "changes during training)")
            else:
                try:
                    return self._compiled_call(key, model, guide, *args, **kwargs)
                except Exception as error:  # torch.jit.trace fails in many ways on code it cannot trace
                    self._stop_compiling(f"tracing failed ({type(error).__name__}: {str(error).splitlines()[0][:200]})")
        loss = self.elbo.differentiable_loss(model, guide, *args, **kwargs)
        self._terms = elbo_term_sums(*self.elbo.last_traces, self.analytic_kl)
        return loss

    def _compiled_call(self, key: Any, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        if key not in self.compiled:

            def loss_and_terms(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
                loss = self.elbo.differentiable_loss(model, guide, *args, **kwargs)
                return loss, *elbo_term_sums(*self.elbo.last_traces, self.analytic_kl).values()

            self.compiled[key] = jit_trace(loss_and_terms, ignore_warnings=True)
        with warnings.catch_warnings():  # torch 2.9+ marks torch.jit.trace deprecated, on every trace
            warnings.filterwarnings("ignore", message=".*torch.jit.trace. is deprecated", category=DeprecationWarning)
            loss, *terms = self.compiled[key](*args, **kwargs)
        self._terms = dict(zip(("elbo", "reconstruction", "kl"), terms))
        return loss

    def _stop_compiling(self, reason: str) -> None:
        self.compiled = None
        warnings.warn(f"train.compile: objective {type(self).__name__} runs eagerly from now on: {reason}.",
                      RuntimeWarning, stacklevel=4)


@OBJECTIVES.register("meanfield")
class MeanFieldELBO(TraceELBO):
    """The ELBO with Pyro's ``TraceMeanField_ELBO``: the KL in closed form where torch knows it."""

    estimator = DeviceTraceMeanFieldELBO
    analytic_kl = True
