"""GECO (Rezende & Viola 2018, "Taming VAEs", Algorithm 1): the ELBO as a constrained problem.

Instead of guessing β, state the reconstruction you need. GECO minimizes the Lagrangian

    L = KL(q(z|x) || p(z)) + λ·C(x, z)

where C is a per-datapoint constraint that is satisfied when C <= 0 (the default: the squared
reconstruction error minus its tolerance). The Lagrange multiplier λ is a state of the objective,
not a parameter: after every step it is updated multiplicatively, λ <- λ·exp(ν·C_ma), with C_ma a
moving average of the batch constraint. λ grows while the constraint is violated and shrinks once
it holds, so the KL is pressed down exactly as far as the constraint allows. Minimizing L/λ is a
β-VAE with β = 1/λ and the constraint in place of the reconstruction term.

The state (λ, C_ma and ν) is kept as 0-dim float64 tensors on the loss's device and updated there, so
a training step reads nothing back to the host (on a GPU each read would wait for the device). The
per-step log ``history`` waits on the device too, and reaches the host in one read when it is
asked for: by :meth:`GECO.status` once per epoch, by a checkpoint, by :meth:`GECO.warnings`.

The scale of ν: a constraint summed over a datapoint's D dimensions is large (on MNIST, D = 784, the
first batches' squared error is about 190 for κ = 0.1, so a fixed ν = 1e-3 multiplies λ by
exp(0.19) = 1.2 per step and reaches λ = 1e6 within the first epoch, while the lagging C_ma is still
far above the constraint). The default ``rate=None`` therefore calibrates ν once, on the first step:
ν = ``RELATIVE_RATE`` / |C_1| with C_1 the first batch's mean constraint, so that λ changes by at
most about 1% per step while the constraint is as violated as at the start, whatever D and the
units of C. An explicit ``rate`` is used as given (Algorithm 1 unchanged). A run whose λ ends at a
clamp, or whose constraint is still unmet at the end, says so in :meth:`GECO.warnings`.

:class:`GECO` is the registered objective ``geco`` (config ``objective: {name: geco, tolerance: 0.1}``),
a wrapper around another objective: the KL term is the wrapped ELBO's own estimate (Monte Carlo with
``wraps: elbo``, analytic with ``wraps: meanfield``), computed with the observed sites hidden from
it; the constraint is read off the observed sites of the same model run, so both terms use the same z.

Units: the loss is summed over the batch, as Pyro's ELBO losses are; the logged ``kl`` and
``constraint`` are per datapoint (nats for the KL; the constraint's own units, below).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Literal, Union

import torch
from pyro import poutine
from pyro.distributions import Distribution

from ppl_vae.errors import ConfigError
from ppl_vae.objectives.base import OBJECTIVES, Objective
from ppl_vae.objectives.elbo import check_num_particles, elbo_term_sums
from ppl_vae.validation import suggest

Constraint = Callable[[torch.Tensor, Distribution, float], torch.Tensor]
RELATIVE_RATE = 0.01  # the default ν·|C_1|: the first step's change of log λ
UNMET = 0.01  # C_ma above this fraction of the first batch's |C_1| at the end: the constraint is clearly unmet


def _sum_event(value: torch.Tensor, event_dim: int) -> torch.Tensor:
    return value.sum(dim=tuple(range(-event_dim, 0))) if event_dim else value


def reconstruction_error(x: torch.Tensor, likelihood: Distribution, tolerance: float) -> torch.Tensor:
    """||x - g(z)||² - D·κ² per datapoint, with g(z) = E[x|z] the likelihood's mean, D the number of
    dimensions of x and κ = ``tolerance`` the root-mean-square error per dimension that is
    acceptable, in data units (for pixels in [0, 1], κ = 0.1 is an error of 10% of the range)."""
    event_dim = len(likelihood.event_shape)
    dims = math.prod(likelihood.event_shape)
    return _sum_event((x - likelihood.mean) ** 2, event_dim) - dims * tolerance**2


def negative_log_likelihood(x: torch.Tensor, likelihood: Distribution, tolerance: float) -> torch.Tensor:
    """-log p(x|z) - κ per datapoint, κ = ``tolerance`` in nats per datapoint."""
    return -likelihood.log_prob(x) - tolerance


CONSTRAINTS: dict[str, Constraint] = {"reconstruction_error": reconstruction_error, "nll": negative_log_likelihood}


def _is_observed(msg: dict[str, Any]) -> bool:
    return msg["type"] == "sample" and msg.get("is_observed", False)


@OBJECTIVES.register("geco")
class GECO(Objective):
    """The GECO loss: KL + λ·C with a moving-average constraint and a multiplicative λ update.

    Args:
        tolerance: κ, passed to the constraint (units: see the constraint).
        constraint: ``"reconstruction_error"`` (:func:`reconstruction_error`), ``"nll"``
            (:func:`negative_log_likelihood`) or a callable ``(x, p(x|z), tolerance) -> C``
            giving one value per datapoint (the batch shape of p(x|z)); C <= 0 means satisfied.
        wraps: the objective whose KL estimator is used: ``elbo`` (``Trace_ELBO``) or ``meanfield``
            (``TraceMeanField_ELBO``), with ``num_particles`` samples per datapoint.
        alpha: the moving-average weight α in C_ma <- α·C_ma + (1-α)·C_batch.
        rate: ν in λ <- λ·exp(ν·C_ma), in 1/(units of C); choose it so that ν·|C| is small. ``None``
            (the default): ν = ``RELATIVE_RATE`` / |C_1|, set on the first step from its mean constraint.
        lambda_init, lambda_min, lambda_max: the first λ and the range λ is clamped to.
        warmup: steps during which λ stays at ``lambda_init`` (C_ma is still averaged).

    Every call with gradients enabled is one step of Algorithm 1: it updates C_ma, builds the loss
    KL + λ·(C + stopgrad(C_ma - C)) and then moves λ for the next step. Calls under
    ``torch.no_grad()`` (``SVI.evaluate_loss``) leave the state alone. The state (``lam``,
    ``c_ma``, ``rate``, ``step``) and the per-step log ``history`` are saved by :meth:`state_dict`;
    ``lam``, ``c_ma`` and ``rate`` read as floats, the tensors staying on the device between steps.
    ``all_reduce`` sums a tensor over the processes of a data-parallel run
    (:mod:`ppl_vae.training.distributed` sets it; it returns its argument in one process): C_ma,
    ν and the logged C and KL are those of the global batch, so λ is the same in every process.
    Every call uses it, so there every process must make the same calls.
    Terms: the wrapped ELBO's ``elbo``, ``reconstruction`` and ``kl``, and ``constraint`` (C).
    """

    supports_beta = False  # λ weighs the KL against the constraint
    term_labels = {"constraint": "GECO constraint C (<= 0 is met; squared data units, nats for nll)"}
    status_panels = {
        "geco_lambda": ("GECO λ (constraint weight)", "log"),
        "geco_c_ma": ("GECO C_ma (constraint; <= 0 is met)", "linear"),
    }

    def __init__(
        self,
        *,
        tolerance: float,
        constraint: Union[Literal["reconstruction_error", "nll"], Constraint] = "reconstruction_error",
        wraps: Literal["elbo", "meanfield"] = "elbo",
        num_particles: int = 1,
        alpha: float = 0.99,
        rate: float | None = None,
        lambda_init: float = 1.0,
        lambda_min: float = 1e-6,
        lambda_max: float = 1e6,
        warmup: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(constraint, str):
            if constraint not in CONSTRAINTS:
                raise ConfigError(f"constraint: unknown constraint {constraint!r}.{suggest(constraint, list(CONSTRAINTS))} "
                                  "Choose one of "
                                  f"{', '.join(CONSTRAINTS)}, or pass a callable (x, p(x|z), tolerance) -> C.")
            if constraint == "reconstruction_error" and tolerance <= 0:
                raise ConfigError(f"tolerance: the reconstruction error tolerance κ must be > 0, got {tolerance}.")
            constraint = CONSTRAINTS[constraint]
        if wraps not in ("elbo", "meanfield"):
            raise ConfigError(f"wraps: GECO needs the KL estimator of 'elbo' or 'meanfield', got {wraps!r}.")
        check_num_particles(num_particles)
        if not 0 <= alpha < 1:
            raise ConfigError(f"alpha: the moving-average weight must be in [0, 1), got {alpha}.")
        if rate is not None and rate <= 0:
            raise ConfigError(f"rate: ν must be > 0, got {rate}.")
        if not 0 < lambda_min <= lambda_init <= lambda_max:
            raise ConfigError(
                "lambda_init: need 0 < lambda_min <= lambda_init <= lambda_max, got lambda_init="
                f"{lambda_init}, lambda_min={lambda_min}, lambda_max={lambda_max}."
            )
        if warmup < 0:
            raise ConfigError(f"warmup: must be >= 0 steps, got {warmup}.")
        self.wrapped = OBJECTIVES.get(wraps)(num_particles=num_particles)
        self.constraint = constraint
        self.tolerance = tolerance
        self.alpha, self.warmup = alpha, warmup
        self.lambda_min, self.lambda_max = lambda_min, lambda_max
        self._lam = _state(lambda_init)
        self._c_ma: torch.Tensor | None = None
        self._rate = None if rate is None else _state(rate)
        self.step = 0
        self._history: dict[str, list[float]] = {name: [] for name in ("lambda", "c_ma", "constraint", "kl")}
        self._pending: list[torch.Tensor] = []  # one [λ, C_ma, C, KL] per step not yet read off the device
        self.all_reduce: Callable[[torch.Tensor], torch.Tensor] = _unchanged

    def __call__(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The differentiable loss KL + λ·C of one batch, summed over the batch (a Pyro loss)."""
        model, guide = poutine.trace(model), poutine.trace(guide)
        kl = self.wrapped.elbo.differentiable_loss(poutine.block(model, hide_fn=_is_observed), guide, *args, **kwargs)
        constraints = [self.constraint(site["value"], site["fn"], self.tolerance)
                       for site in model.trace.nodes.values() if _is_observed(site)]
        if not constraints:
            raise ValueError("GECO: the model has no observed sample site to constrain.")
        per_datapoint = sum(constraints)
        batch_size = per_datapoint.shape[-1]
        c_batch = per_datapoint.mean()  # over the batch (and vectorized particles)
        c_batch_value, kl_value = self._global_means(per_datapoint.detach(), kl.detach(), batch_size)
        self._move_state(c_batch_value.device)
        c_ma = c_batch_value if self._c_ma is None else self.alpha * self._c_ma + (1 - self.alpha) * c_batch_value
        # straight-through: the value is C_ma, the gradient that of the current batch
        constraint = c_batch + (c_ma.to(c_batch.dtype) - c_batch).detach()
        loss = kl + (self._lam * batch_size).to(constraint.dtype) * constraint
        self._terms = {**elbo_term_sums(model.trace, guide.trace, self.wrapped.analytic_kl),
                       "constraint": c_batch.detach() * batch_size}
        if torch.is_grad_enabled():
            if self._rate is None:
                self._rate = RELATIVE_RATE / torch.clamp(c_batch_value.abs(), min=1e-12)  # ν = 0.01 / |C_1|
            self._advance(c_ma, c_batch_value, kl_value)
        return loss

    def _global_means(self, per_datapoint: torch.Tensor, kl: torch.Tensor,
                      batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean constraint and KL per datapoint of the whole batch (float64, on the batch's device):
        of this process's batch, or in data-parallel training of the union of the processes' shards
        (through :attr:`all_reduce`)."""
        # the counts are filled in on the device: a tensor made from a number would be copied there, a host sync
        sums = self.all_reduce(torch.stack([per_datapoint.sum(), kl.to(per_datapoint.dtype),
                                            per_datapoint.new_full((), per_datapoint.numel()),
                                            per_datapoint.new_full((), batch_size)]))
        c_sum, kl_sum, count, datapoints = sums.double()
        return c_sum / count, kl_sum / datapoints

    def _move_state(self, device: torch.device) -> None:
        """λ, C_ma and ν onto the loss's device: on the first step, or the first after a load; a no-op after."""
        self._lam = self._lam.to(device)
        self._c_ma = None if self._c_ma is None else self._c_ma.to(device)
        self._rate = None if self._rate is None else self._rate.to(device)

    def _advance(self, c_ma: torch.Tensor, c_batch: torch.Tensor, kl: torch.Tensor) -> None:
        self._pending.append(torch.stack([self._lam, c_ma, c_batch, kl]))
        self._c_ma = c_ma
        self.step += 1
        if self.step > self.warmup:
            # λ <- clamp(λ·exp(ν·C_ma), lambda_min, lambda_max); the exponent is capped where λ would pass
            # lambda_max anyway, so a huge C_ma cannot overflow exp
            growth = torch.exp(torch.minimum(self._rate * c_ma, torch.log(self.lambda_max / self._lam)))
            self._lam = torch.clamp(self._lam * growth, self.lambda_min, self.lambda_max)

    @property
    def lam(self) -> float:
        """λ for the next step (a read off the device)."""
        return self._lam.item()

    @property
    def c_ma(self) -> float | None:
        """C_ma after the last step, None before the first (a read off the device)."""
        return None if self._c_ma is None else self._c_ma.item()

    @property
    def rate(self) -> float | None:
        """ν: as given, or as calibrated on the first step (None until then)."""
        return None if self._rate is None else self._rate.item()

    @property
    def history(self) -> dict[str, list[float]]:
        """The per-step log, a list of floats for each of ``lambda`` (λ the step used), ``c_ma``, ``constraint``
        (the batch's C) and ``kl`` (per datapoint)."""
        self._read_pending()
        return self._history

    def _read_pending(self) -> None:
        """Move the steps still on the device into :attr:`history`, all in one read."""
        if self._pending:
            for values, new in zip(self._history.values(), zip(*torch.stack(self._pending).tolist())):
                values.extend(new)
            self._pending = []

    def state_dict(self) -> dict[str, Any]:
        """λ, C_ma, ν (None until calibrated), the step count and the per-step history, for a checkpoint."""
        return {"lambda": self.lam, "c_ma": self.c_ma, "rate": self.rate, "step": self.step,
                "history": {name: list(values) for name, values in self.history.items()}}

    def status(self) -> dict[str, float]:
        """λ and C_ma (None before the first step) after the last step. Called once per epoch, it also
        brings the epoch's steps into :attr:`history`, so they do not pile up on the device."""
        self._read_pending()
        return {"geco_lambda": self.lam, "geco_c_ma": self.c_ma}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a TypeError or ValueError if ``state`` is not one."""
        lam, c_ma, step, history = (state[name] for name in ("lambda", "c_ma", "step", "history"))
        rate = state.get("rate", self.rate)  # checkpoints before ν's calibration hold no "rate"
        if not (_is_number(lam) and self.lambda_min <= lam <= self.lambda_max):
            raise ValueError(f"GECO λ must be a number in [{self.lambda_min}, {self.lambda_max}], got {lam!r}")
        if not (c_ma is None or _is_number(c_ma)) or not (rate is None or (_is_number(rate) and rate > 0)):
            raise TypeError(f"GECO C_ma and ν must be numbers (ν > 0) or None, got {c_ma!r} and {rate!r}")
        if type(step) is not int or step < 0 or (c_ma is None) != (step == 0):
            raise ValueError(f"GECO step must be an integer >= 0, 0 exactly when C_ma is None; got {step!r} "
                             f"and {c_ma!r}")
        if (not isinstance(history, dict) or set(history) != set(self._history)
                or not all(isinstance(values, list) and len(values) == step and all(map(_is_number, values))
                           for values in history.values())):
            raise ValueError(f"GECO history must hold {step} numbers for each of {', '.join(self._history)}")
        self._lam, self._c_ma, self._rate = (None if value is None else _state(value) for value in (lam, c_ma, rate))
        self.step = step
        self._history = {name: list(values) for name, values in history.items()}
        self._pending = []

    def warnings(self) -> list[str]:
        """λ at a clamp, or the constraint clearly unmet at the end of training: C_ma above ``UNMET``
        times the first batch's |C| (a met constraint leaves C_ma hovering around 0)."""
        found = []
        for bound, value, meaning, fix in (
            ("lambda_max", self.lambda_max, "the constraint was never met and the KL is barely weighed, so it can "
             "grow without limit", "raise objective.tolerance to an error the model can reach"),
            ("lambda_min", self.lambda_min, "the constraint is met by a wide margin and barely weighed, so the "
             "reconstruction is left to degrade", "lower objective.tolerance"),
        ):
            if self.step and math.isclose(self.lam, value):
                steps = sum(1 for _ in itertools.takewhile(lambda lam: math.isclose(lam, value),
                                                           reversed(self.history["lambda"])))
                found.append(f"GECO: λ ended at its clamp {bound}={value:g} (at it for the last {steps} of "
                             f"{self.step} steps): {meaning}. The run's numbers are not those of a settled GECO; "
                             f"{fix}, or lower objective.rate (ν).")
        if self.c_ma is not None and self.c_ma > UNMET * abs(self.history["constraint"][0]):
            found.append(f"GECO: the constraint is still unmet at the end of training (C_ma = {self.c_ma:.4g} > 0, in "
                         "the constraint's units): the reconstruction is worse than objective.tolerance asks; train "
                         "longer or raise objective.tolerance.")
        return found


def _state(value: float) -> torch.Tensor:
    """A number of GECO's state as a 0-dim float64 tensor (moved to the loss's device on the next step)."""
    return torch.tensor(float(value), dtype=torch.float64)


def _unchanged(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
