"""What several experiments share: configs that train on the runner's device with its progress
setting, the one-hidden-layer VAE of the Taming VAEs experiments, and the reconstruction error
those experiments measure."""

from __future__ import annotations

from typing import Any

import torch

from ppl_vae.config import Config, from_dict, load_config
from ppl_vae.experiments.runner import Output
from ppl_vae.models.vae import VAE


def shipped_config(name: str, output: Output, overrides: list[str]) -> Config:
    """The shipped config ``name`` with ``--set`` style ``overrides``, training on ``output``'s device
    with its progress setting."""
    return load_config(name, [*overrides, f"device={output.device}", f"train.progress={output.progress}"])


def one_hidden_layer_config(
    output: Output, dataset: str, epochs: int, objective: dict[str, Any], *, latent_dim: int = 10, hidden: int = 200,
    likelihood: str | dict[str, Any] = "bernoulli", lr: float = 1e-3, seed: int = 0,
) -> Config:
    """A VAE with one hidden layer of ``hidden`` tanh units in encoder and decoder, trained with Adam
    (batch 100) for ``epochs`` on ``output``'s device, with the given ``objective`` section (e.g.
    ``{"name": "geco", "wraps": "meanfield", "tolerance": 0.1}``)."""
    net = {"name": "mlp", "hidden_sizes": [hidden], "activation": "tanh"}
    return from_dict({
        "seed": seed,
        "device": str(output.device),
        "data": {"name": dataset, "batch_size": 100},
        "model": {"latent_dim": latent_dim, "encoder": net, "decoder": net, "likelihood": likelihood},
        "objective": objective,
        "optim": {"name": "adam", "lr": lr},
        "train": {"epochs": epochs, "eval_every": epochs, "checkpoint_every": epochs, "progress": output.progress},
    })


@torch.no_grad()
def squared_error(vae: VAE, x: torch.Tensor) -> float:
    """E_q(z|x) ||x - E[x|z]||² / D averaged over ``x`` (one z per datapoint), in squared data units."""
    return ((x - vae.decoded_mean(vae.encode(x).sample())) ** 2).mean().item()
