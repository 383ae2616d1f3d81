"""How noisy an objective's gradient is: the mean and variance of its gradient over repeated draws.

A training objective is a Monte Carlo estimate: each call draws fresh latents, so its gradient is a
random vector g whose mean is the gradient of the bound and whose variance sets how far one step
can trust it. :func:`gradient_moments` calls the objective ``num_draws`` times on the same data and
parameters and returns, for every parameter tensor, the elementwise mean and (unbiased) variance of
∂loss/∂parameter over the draws. Summed over a layer's elements, the variance is the trace of the
gradient's covariance. Rainforth et al. (2018, "Tighter variational bounds are not necessarily
better") judge an estimator by its signal-to-noise ratio |E[g]| / std[g]; :func:`signal_to_noise`
gives it for a group of parameters (a layer, a network) as ‖E[g]‖ / √(E‖g - E[g]‖²).

Draws and seeds: with ``seed`` set, draw r runs from ``torch.manual_seed(seed + r)`` and the
caller's random state is restored afterwards, so two objectives measured with the same seed see the
same noise on every draw where they consume it alike (``elbo`` and ``meanfield`` do: their decoder
gradients then agree draw by draw) and a measurement is repeatable. With ``seed=None`` the draws
continue the global random stream.

The objective is any Pyro loss ``objective(model, guide, *data) -> loss`` (the registered
objectives, ``Trace_ELBO().differentiable_loss``, ...); the moments are those of the gradient of
that loss, the negative bound summed over the batch, as the optimizer sees it. An objective with
state that moves on every call with gradients on (GECO) moves it ``num_draws`` times.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Callable, NamedTuple

import torch

from ppl_vae.errors import EvaluationError
from ppl_vae.evaluation.inputs import check_counts


class GradientMoments(NamedTuple):
    """Per parameter tensor (in the order given), the elementwise mean and unbiased variance of the
    loss's gradient over the draws, in float64 and of the parameter's shape."""

    mean: list[torch.Tensor]
    variance: list[torch.Tensor]


def gradient_moments(
    objective: Callable[..., torch.Tensor],
    model: Callable,
    guide: Callable,
    *data: Any,
    parameters: Iterable[torch.Tensor],
    num_draws: int,
    seed: int | None = 0,
) -> GradientMoments:
    """Mean and variance over ``num_draws`` calls of the gradient of ``objective(model, guide, *data)``
    with respect to each of ``parameters`` (see the module docstring for the seeds).

    A parameter the loss does not reach has gradient 0 on every draw. The running moments are
    accumulated in float64 (Welford's update), so memory stays at three copies of the parameters
    whatever ``num_draws`` is.
    """
    check_counts(num_draws=num_draws)
    if num_draws < 2:
        raise EvaluationError(f"num_draws must be at least 2 for a variance, got {num_draws}.")
    parameters = list(parameters)
    if not parameters:
        raise EvaluationError("parameters: give at least one tensor to differentiate the loss with respect to.")
    mean = [torch.zeros_like(parameter, dtype=torch.float64) for parameter in parameters]
    squares = [torch.zeros_like(parameter, dtype=torch.float64) for parameter in parameters]  # Σ (g - mean)²
    devices = sorted({tensor.device.index for tensor in [*parameters, *data]
                      if isinstance(tensor, torch.Tensor) and tensor.is_cuda})
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        for draw in range(num_draws):
            if seed is not None:
                torch.manual_seed(seed + draw)
            loss = objective(model, guide, *data)
            gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
            for gradient, parameter, running_mean, running_squares in zip(gradients, parameters, mean, squares):
                value = (torch.zeros_like(parameter) if gradient is None else gradient).to(torch.float64)
                delta = value - running_mean
                running_mean += delta / (draw + 1)
                running_squares += delta * (value - running_mean)
    return GradientMoments(mean, [running_squares / (num_draws - 1) for running_squares in squares])


def signal_to_noise(mean: list[torch.Tensor], variance: list[torch.Tensor], num_draws: int) -> float:
    """‖E[g]‖ / √(tr Cov[g]) over the given tensors of a :class:`GradientMoments` (e.g. one
    layer's or one network's): the length of the mean gradient against its typical random deviation.

    The squared length of the sample mean overestimates ‖E[g]‖² by tr Cov[g] / n for n draws; that
    much is subtracted (at least 0 is kept), so a gradient that is pure noise gives about 0, not
    about 1/√n. A gradient with no variance gives infinity (NaN if it is also 0).
    """
    check_counts(num_draws=num_draws)
    squared_mean = sum(float((tensor**2).sum()) for tensor in mean)
    trace = sum(float(tensor.sum()) for tensor in variance)
    if trace == 0:
        return math.nan if squared_mean == 0 else math.inf
    return math.sqrt(max(squared_mean - trace / num_draws, 0.0) / trace)
