"""Draws from the guide as ArviZ ``InferenceData``, for ArviZ's summaries and plots."""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ppl_vae.evaluation.inputs import check_counts, count_datapoints
from ppl_vae.evaluation.plates import data_plate_dim, plate_layout
from ppl_vae.objectives.traces import sample_sites, trace_pair

if TYPE_CHECKING:
    import arviz as az

# ArviZ 0.23 warns on its first import each day (a FutureWarning about its coming 1.0): nothing to
# do with an evaluation, and a raw library warning in every run's output
ARVIZ_IMPORT_WARNING = r"\s*ArviZ is undergoing a major refactor"


def import_arviz() -> ModuleType:
    """ArviZ, imported when first used (it is slow to import) without its import-time notice
    (:data:`ARVIZ_IMPORT_WARNING`, filtered here alone: every other warning passes)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ARVIZ_IMPORT_WARNING, category=FutureWarning, module="arviz")
        import arviz

    return arviz


@torch.no_grad()
def to_inference_data(model: Callable, guide: Callable, *data: torch.Tensor, num_samples: int = 1000) -> az.InferenceData:
    """Draws from q(z|x) for each datapoint of ``data`` as ArviZ ``InferenceData`` (one chain).

    Every latent site of the guide becomes a posterior variable with dimensions
    (chain, draw, datapoint, <site>_dim_<i>), ready for ``az.summary`` and ``az.plot_posterior``.
    The draws are independent, so one chain holds them all (ArviZ's r_hat needs several: it is NaN).
    """
    check_counts(num_samples=num_samples)
    az = import_arviz()
    layout = plate_layout(model, guide, *data)
    _, guide_trace = trace_pair(model, guide, *data, num_particles=num_samples, particle_dim=layout.particle_dim)
    posterior, dims = {}, {}
    for name, site in sample_sites(guide_trace, observed=False).items():
        # (draw, <the site's plates and event dimensions>), the datapoint moved next to the draw
        draws = site["value"].movedim(data_plate_dim(site) - len(site["fn"].event_shape), 1)
        posterior[name] = draws.unsqueeze(0).cpu().numpy()
        dims[name] = ["datapoint", *(f"{name}_dim_{i}" for i in range(draws.dim() - 2))]
    return az.from_dict(posterior=posterior, dims=dims, coords={"datapoint": np.arange(count_datapoints(data))})
