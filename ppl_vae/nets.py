"""Encoder and decoder networks, registered by name.

A network factory takes ``in_features`` and ``out_features`` (filled in by the VAE from the data,
latent and part sizes) and keyword-only options that the config sets.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from ppl_vae.errors import ConfigError
from ppl_vae.registry import Registry

NETS: Registry[nn.Module] = Registry("network")

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus}


@NETS.register("mlp")
def mlp(
    in_features: int,
    out_features: int,
    *,
    hidden_sizes: list[int] = (500,),
    activation: Literal["tanh", "relu", "elu", "softplus"] = "tanh",
) -> nn.Sequential:
    """A multilayer perceptron: Linear layers with ``activation`` between them, linear output."""
    if any(size <= 0 for size in hidden_sizes):
        raise ConfigError(f"hidden_sizes: every size must be > 0, got {list(hidden_sizes)}.")
    sizes = [in_features, *hidden_sizes]
    layers: list[nn.Module] = []
    for size_in, size_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(size_in, size_out), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)
