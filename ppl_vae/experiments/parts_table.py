"""The MNIST table of parts: test ELBO and log p(x) of the same VAE (the shipped ``mnist`` config:
dynamically binarized MNIST, 784-200-200-50 tanh MLPs, Adam) with the standard, mixture and
VampPrior priors, and with the diagonal and the IAF posterior, every row trained for the same
number of epochs. Nats per datapoint, log-probabilities (higher is better)::

    python -m ppl_vae.experiments.parts_table --epochs 15 --out results
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ppl_vae.config import load_config
from ppl_vae.evaluate import evaluate_elbo
from ppl_vae.model import VAE
from ppl_vae.train import evaluation_split, fit

ROWS = {
    "standard prior, diagonal posterior": [],
    "mixture prior (10 components)": ["model.prior={name: mixture, num_components: 10}"],
    "VampPrior (500 pseudo-inputs)": ["model.prior={name: vamp, num_pseudo: 500}"],
    "flow prior (4 affine couplings)": ["model.prior={name: flow, num_flows: 4}"],
    "IAF posterior (2 flows)": ["model.posterior={name: iaf, num_flows: 2}"],
}


@torch.no_grad()
def importance_log_likelihood(vae: VAE, x: torch.Tensor, num_samples: int = 100, batch_size: int = 20) -> float:
    """log p(x) ≈ log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x), z_k ~ q(z | x), averaged over the
    rows of ``x`` (nats per datapoint), with K = ``num_samples``; the data plate is kept, so each
    datapoint gets its own estimate. A small stand-in for the library's evaluation of log p(x)."""
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        posterior = vae.encode(batch)
        z = posterior.sample((num_samples,))  # (K, batch, latent_dim); a flow caches its inverse
        log_weights = vae.decode(z).log_prob(batch) + vae.prior().log_prob(z) - posterior.log_prob(z)
        total += (torch.logsumexp(log_weights, dim=0) - math.log(num_samples)).sum().item()
    return total / x.shape[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=100, help="importance samples K for log p(x)")
    parser.add_argument("--test-size", type=int, default=2000, help="test images for log p(x) (ELBO: all)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every row")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    common = [f"train.epochs={args.epochs}", f"train.eval_every={args.epochs}", "train.progress=false", *args.set]
    results = {}
    for name in tqdm(args.rows, desc="rows", unit="model"):
        run = fit(load_config("mnist", [*common, *ROWS[name]]))
        test = evaluation_split(run.dataset, "test")
        torch.manual_seed(0)
        results[name] = {
            "test_elbo": evaluate_elbo(run.vae, test, batch_size=200)["elbo"],
            "test_log_px": importance_log_likelihood(run.vae, test[: args.test_size], args.samples),
            "train_seconds": run.metrics["train_seconds"],
        }
        tqdm.write(f"{name}: {results[name]}")
    print(f"MNIST (dynamically binarized), {args.epochs} epochs each; nats per datapoint, higher is better; "
          f"log p(x) with K={args.samples} on the first {args.test_size} test images")
    print(f"| {'model':36s} | test ELBO | test log p(x) |\n| --- | --- | --- |")
    for name, numbers in results.items():
        print(f"| {name:36s} | {numbers['test_elbo']:9.2f} | {numbers['test_log_px']:13.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"mnist_parts_table_{args.epochs}epochs.json").write_text(json.dumps(
        {"units": "nats per datapoint", "epochs": args.epochs, "importance_samples": args.samples,
         "log_px_test_size": args.test_size, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
