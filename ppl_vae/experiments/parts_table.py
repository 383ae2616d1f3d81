"""The MNIST table of parts: test ELBO and log p(x) of the same VAE (the shipped ``mnist`` config:
dynamically binarized MNIST, 784-200-200-50 tanh MLPs, Adam) with the standard, mixture and
VampPrior priors, and with the diagonal and the IAF posterior, every row trained for the same
number of epochs. Nats per datapoint, log-probabilities (higher is better)::

    python -m ppl_vae.experiments.parts_table --epochs 15 --out figures
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ppl_vae.config import load_config
from ppl_vae.evaluate import evaluate_elbo, log_likelihood
from ppl_vae.train import evaluation_split, fit

ROWS = {
    "standard prior, diagonal posterior": [],
    "mixture prior (10 components)": ["model.prior={name: mixture, num_components: 10}"],
    "VampPrior (500 pseudo-inputs)": ["model.prior={name: vamp, num_pseudo: 500}"],
    "flow prior (4 affine couplings)": ["model.prior={name: flow, num_flows: 4}"],
    "IAF posterior (2 flows)": ["model.posterior={name: iaf, num_flows: 2}"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=100, help="importance samples K for log p(x)")
    parser.add_argument("--test-size", type=int, default=2000, help="test images for log p(x) (ELBO: all)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every row")
    parser.add_argument("--out", type=Path, default=Path("figures"))
    args = parser.parse_args(argv)
    common = [f"train.epochs={args.epochs}", f"train.eval_every={args.epochs}", "train.progress=false", *args.set]
    results = {}
    for name in tqdm(args.rows, desc="rows", unit="model"):
        run = fit(load_config("mnist", [*common, *ROWS[name]]))
        test = evaluation_split(run.dataset, "test")
        torch.manual_seed(0)
        results[name] = {
            "test_elbo": evaluate_elbo(run.vae, test, batch_size=200)["elbo"],
            "test_log_px": log_likelihood(run.vae, test[: args.test_size], args.samples).mean().item(),
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
