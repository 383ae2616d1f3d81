"""The ELBO of a model and guide on a dataset, split into its reconstruction and KL terms."""

from __future__ import annotations

from typing import Callable

import torch

from ppl_vae.evaluation.inputs import check_counts, chunks, count_datapoints
from ppl_vae.objectives.traces import elbo_terms, trace_pair


@torch.no_grad()
def evaluate_elbo(
    model: Callable, guide: Callable, *data: torch.Tensor, batch_size: int = 1000, num_particles: int = 1
) -> dict[str, float]:
    """Mean ELBO, reconstruction and (analytic where possible) KL over ``data``, in nats per datapoint.

    elbo = reconstruction - kl, with reconstruction = E_q[Σ log p(obs|z)] and kl = KL(q(z|data) || p(z)),
    each averaged over ``num_particles`` draws per datapoint, ``batch_size`` datapoints at a time.
    """
    check_counts(batch_size=batch_size, num_particles=num_particles)
    num_datapoints = count_datapoints(data)
    totals = torch.zeros(2, device=data[0].device)
    for chunk in chunks(data, batch_size):
        for _ in range(num_particles):
            reconstruction, kl = elbo_terms(*trace_pair(model, guide, *chunk))
            totals += torch.stack([reconstruction.sum(), kl.sum()])
    reconstruction, kl = (totals / (num_datapoints * num_particles)).tolist()
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}
