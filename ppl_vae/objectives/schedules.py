"""Schedules of the KL weight β over training (β-VAE, KL annealing), registered by name.

β is applied by the model and the guide (``kl_weight``), so every objective that supports it gives
loss = -E_q[log p(x|z)] + β·KL; a schedule only says which β each step uses."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from ppl_vae.registry import Registry
from ppl_vae.validation import Bounds, Count, NonNegative, Positive

Ratio = Annotated[float, Bounds(0, 1, low_open=True)]

SCHEDULES: Registry = Registry("β schedule")


class Schedule:
    """β as a function of training time, counted in optimizer steps or in epochs (``by``)."""

    def __init__(self, by: str) -> None:
        self.by = by

    def __call__(self, step: int, epoch: int) -> float:
        """β for the given 0-based optimizer step and epoch."""
        return self.value_at(step if self.by == "step" else epoch)

    def value_at(self, time: int) -> float:
        raise NotImplementedError


@SCHEDULES.register("constant")
class Constant(Schedule):
    """β fixed at ``value`` (1: the ELBO; 0: the plain autoencoder; other: β-VAE)."""

    def __init__(self, *, value: NonNegative = 1.0) -> None:
        super().__init__("step")
        self.value = value

    def value_at(self, time: int) -> float:
        return self.value


@SCHEDULES.register("linear")
class Linear(Schedule):
    """β rises linearly from ``start`` to ``end`` over ``duration`` steps or epochs, then stays."""

    def __init__(
        self,
        *,
        start: NonNegative = 0.0,
        end: NonNegative = 1.0,
        duration: Count = 10,
        by: Literal["step", "epoch"] = "epoch",
    ) -> None:
        super().__init__(by)
        self.start, self.end, self.duration = start, end, duration

    def value_at(self, time: int) -> float:
        return self.start + (self.end - self.start) * min(time / self.duration, 1.0)


@SCHEDULES.register("sigmoid")
class Sigmoid(Schedule):
    """β follows a logistic curve from ``start`` to ``end``, centred at ``duration / 2``
    (Bowman et al. 2016); ``steepness`` is the slope at the centre in units of 1/duration."""

    def __init__(
        self,
        *,
        start: NonNegative = 0.0,
        end: NonNegative = 1.0,
        duration: Count = 10,
        steepness: Positive = 10.0,
        by: Literal["step", "epoch"] = "epoch",
    ) -> None:
        super().__init__(by)
        self.start, self.end, self.duration, self.steepness = start, end, duration, steepness

    def value_at(self, time: int) -> float:
        # 1 / (1 + exp(-x)) written with tanh, which cannot overflow for any steepness
        logistic = 0.5 * (1.0 + math.tanh(0.5 * self.steepness * (time / self.duration - 0.5)))
        return self.start + (self.end - self.start) * logistic


@SCHEDULES.register("cyclical")
class Cyclical(Schedule):
    """Cyclical annealing (Fu et al. 2019): every ``period`` steps or epochs β restarts at
    ``start``, rises linearly to ``end`` during the first ``ratio`` of the period, then stays."""

    def __init__(
        self,
        *,
        start: NonNegative = 0.0,
        end: NonNegative = 1.0,
        period: Count = 10,
        ratio: Ratio = 0.5,
        by: Literal["step", "epoch"] = "epoch",
    ) -> None:
        super().__init__(by)
        self.start, self.end, self.period, self.ratio = start, end, period, ratio

    def value_at(self, time: int) -> float:
        phase = (time % self.period) / self.period
        return self.start + (self.end - self.start) * min(phase / self.ratio, 1.0)
