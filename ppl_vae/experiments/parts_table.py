"""The MNIST table of parts: test ELBO and log p(x) of the same VAE (the shipped ``mnist`` config:
dynamically binarized MNIST, 784-200-200-50 tanh MLPs, Adam) with the standard, mixture, VampPrior
and flow priors, and with the diagonal and the IAF posterior, every row trained for the same number
of epochs. Nats per datapoint, log-probabilities (higher is better)::

    ppl-vae reproduce parts-table --set epochs=15
"""

from __future__ import annotations

from typing import Any

import pyro

from ppl_vae.data import evaluation_split
from ppl_vae.evaluation import evaluate_elbo, log_likelihood
from ppl_vae.experiments.common import shipped_config
from ppl_vae.experiments.runner import EXPERIMENTS, Output, quick
from ppl_vae.runs import fit

ROWS = {  # each row's config overrides
    "standard prior, diagonal posterior": [],
    "mixture prior (10 components)": ["model.prior={name: mixture, num_components: 10}"],
    "VampPrior (500 pseudo-inputs)": ["model.prior={name: vamp, num_pseudo: 500}"],
    "flow prior (4 affine couplings)": ["model.prior={name: flow, num_flows: 4}"],
    "IAF posterior (2 flows)": ["model.posterior={name: iaf, num_flows: 2}"],
}


@EXPERIMENTS.register("parts-table")
@quick(dataset="digits", epochs=1, importance_samples=10, test_size=100)
def parts_table(
    output: Output, *, dataset: str = "mnist-binarized", epochs: int = 5, importance_samples: int = 100,
    test_size: int = 2000,
) -> dict[str, Any]:
    """A VampPrior (Tomczak & Welling 2018, Table 2) or an IAF posterior (Kingma et al. 2016) raises MNIST log p(x).

    Trains the shipped ``mnist`` config on ``dataset`` for ``epochs`` once per row of :data:`ROWS`
    and returns each row's test ELBO (all test images), its test log p(x) by importance sampling
    with ``importance_samples`` samples on the first ``test_size`` test images, and its training time.
    """
    common = [f"data.name={dataset}", f"train.epochs={epochs}", f"train.eval_every={epochs}"]
    rows = {}
    for name, overrides in ROWS.items():
        run = fit(shipped_config("mnist", output, [*common, *overrides]))
        test = evaluation_split(run.dataset, "test")
        pyro.set_rng_seed(0)
        rows[name] = {
            "test_elbo": evaluate_elbo(run.vae.model, run.vae.guide, test, batch_size=200)["elbo"],
            "test_log_px": log_likelihood(run.vae.model, run.vae.guide, test[:test_size],
                                          num_samples=importance_samples).mean().item(),
            "train_seconds": run.metrics["train_seconds"],
        }
    return {"units": "nats per datapoint (log-probabilities, higher is better); train_seconds: s",
            "log_px_test_size": min(test_size, test.shape[0]), "rows": rows}
