"""The per-datapoint tensors every evaluation takes after its model and guide (``*data``): how many
datapoints they hold, whether they are finite, and the same rows of each, a chunk at a time; and the
check of the counts (samples, particles, chunk sizes) every evaluation takes as keyword options."""

from __future__ import annotations

from collections.abc import Iterator
from numbers import Integral

import torch

from ppl_vae.errors import EvaluationError


def count_datapoints(data: tuple[torch.Tensor, ...]) -> int:
    """The number of datapoints: the length of the first dimension, which every tensor must share."""
    lengths = [tensor.shape[0] for tensor in data]
    if len(set(lengths)) != 1 or lengths[0] == 0:
        raise EvaluationError(
            "evaluation needs one or more per-datapoint tensors of the same length (their first dimension, at "
            f"least 1), got lengths {lengths}."
        )
    return lengths[0]


def check_finite(data: tuple[torch.Tensor, ...]) -> None:
    """Refuse data holding a NaN or Inf, naming the first such datapoint (one read of the device for
    all the data: evaluations validate the model's arguments on their first batch only)."""
    for position, tensor in enumerate(data):
        if tensor.is_floating_point():
            finite = torch.isfinite(tensor).reshape(tensor.shape[0], -1).all(-1)
            if not finite.all():
                first = int(torch.nonzero(~finite)[0])
                raise EvaluationError(
                    f"datapoint {first} of data argument {position} holds NaN or Inf: evaluation needs finite data "
                    "(remove or repair those rows)."
                )


def check_counts(**options: object) -> None:
    """Raise :class:`~ppl_vae.errors.EvaluationError` naming the first of ``options`` (name=value)
    that is not a whole number >= 1."""
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise EvaluationError(f"{name} must be a whole number >= 1, got {value!r}.")


def chunks(data: tuple[torch.Tensor, ...], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """The data ``batch_size`` datapoints at a time: every tensor sliced alike along its first dimension."""
    check_counts(batch_size=batch_size)
    for start in range(0, count_datapoints(data), batch_size):
        yield tuple(tensor[start : start + batch_size] for tensor in data)
