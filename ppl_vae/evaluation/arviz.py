"""Draws from the guide as ArviZ ``InferenceData``, for ArviZ's summaries and plots."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ppl_vae.evaluation.inputs import count_datapoints
from ppl_vae.evaluation.plates import data_plate_dim, plate_layout
from ppl_vae.objectives.traces import sample_sites, trace_pair

if TYPE_CHECKING:
    import arviz as az


@torch.no_grad()
def to_inference_data(model: Callable, guide: Callable, *data: torch.Tensor, num_samples: int = 1000) -> az.InferenceData:
    """Draws from q(z|x) for each datapoint of ``data`` as ArviZ ``InferenceData`` (one chain).

    Every latent site of the guide becomes a posterior variable with dimensions
    (chain, draw, datapoint, <site>_dim_<i>), ready for ``az.summary`` and ``az.plot_posterior``.
    The draws are independent, so one chain holds them all (ArviZ's r_hat needs several: it is NaN).
    """
    import arviz as az  # imported when used: it is slow to import

    layout = plate_layout(model, guide, *data)
    _, guide_trace = trace_pair(model, guide, *data, num_particles=num_samples, particle_dim=layout.particle_dim)
    posterior, dims = {}, {}
    for name, site in sample_sites(guide_trace, observed=False).items():
        # (draw, <the site's plates and event dimensions>), the datapoint moved next to the draw
        draws = site["value"].movedim(data_plate_dim(site) - len(site["fn"].event_shape), 1)
        posterior[name] = draws.unsqueeze(0).cpu().numpy()
        dims[name] = ["datapoint", *(f"{name}_dim_{i}" for i in range(draws.dim() - 2))]
    return az.from_dict(posterior=posterior, dims=dims, coords={"datapoint": np.arange(count_datapoints(data))})
