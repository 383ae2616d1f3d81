"""Where the plates sit: the particle plate evaluation adds, and the data plate's dimension in a
latent site's values, to lay those values out per datapoint."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ppl_vae.objectives.traces import DATA_PLATE, PlateLayout, per_datapoint


def plate_layout(model: Callable, guide: Callable, *data: torch.Tensor) -> PlateLayout:
    """:meth:`PlateLayout.of` the model and guide on ``data``, leaving the random number generators
    as they were: the probe's draws do not shift the evaluation's, so a seeded evaluation draws
    exactly what one vectorized pass from that seed would."""
    cuda_devices = list({tensor.device for tensor in data if tensor.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
        return PlateLayout.of(model, guide, *data)


def data_plate_dim(site: dict[str, Any]) -> int:
    """The batch dimension (negative) of ``site`` that the data plate indexes.

    Raises :class:`~ppl_vae.errors.EvaluationError` for a site outside the data plate (a global latent)."""
    per_datapoint(torch.zeros(()), site)  # raises for a site outside the data plate
    return next(frame.dim for frame in site["cond_indep_stack"] if frame.name == DATA_PLATE)


def per_datapoint_units(values: torch.Tensor, site: dict[str, Any], event_dims: int) -> torch.Tensor:
    """A site's values of shape (batch shape of the site, ``event_dims`` more dimensions) as
    (datapoints, units): every number that belongs to one datapoint is one unit, in row-major order
    (for a latent vector z in the data plate alone, unit u is z_u)."""
    data_dim = data_plate_dim(site) - event_dims
    return values.movedim(data_dim, 0).reshape(values.shape[data_dim], -1)
