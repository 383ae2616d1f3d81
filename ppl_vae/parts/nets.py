"""Encoder and decoder networks, registered by name.

A network factory takes ``in_features`` and ``out_features`` (filled in by the VAE from the data,
latent and part sizes) and keyword-only options that the config sets. Networks for images also take
an ``image_shape`` option, which :func:`~ppl_vae.models.vae.build_vae` fills from the dataset.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import nn

from ppl_vae.errors import ConfigError
from ppl_vae.registry import Registry
from ppl_vae.validation import Length, Size

NETS: Registry[nn.Module] = Registry("network")

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus}
Activation = Literal["tanh", "relu", "elu", "softplus"]
Channels = Annotated[list[Size], Length(2, 2, "channel counts (one per convolution)")]
ImageShape = Annotated[list[Size], Length(2, 2, "sides (height, width)")]


@NETS.register("mlp")
def mlp(
    in_features: int,
    out_features: int,
    *,
    hidden_sizes: list[Size] = (500,),
    activation: Activation = "tanh",
) -> nn.Sequential:
    """A multilayer perceptron: Linear layers with ``activation`` between them, linear output
    (``hidden_sizes: []`` is a single linear map)."""
    sizes = [in_features, *hidden_sizes]
    layers: list[nn.Module] = []
    for size_in, size_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(size_in, size_out), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], out_features))
    return nn.Sequential(*layers)


def _check_image_shape(image_shape: list[int] | None, pixels: int | None, key: str) -> tuple[int, int]:
    """(height, width), checked: ``pixels`` (if given) of them, each side a multiple of 4."""
    if image_shape is None:
        raise ConfigError(
            f"image_shape: the {key} needs the image height and width; build_vae fills it from the "
            "dataset, or set it, e.g. image_shape: [28, 28]."
        )
    height, width = image_shape
    if (pixels is not None and height * width != pixels) or height % 4 or width % 4:
        raise ConfigError(
            f"image_shape: {list(image_shape)} must hold the {pixels} pixels of the data and both "
            "sides must be multiples of 4 (two stride-2 convolutions)."
        )
    return height, width


class ConvEncoder(nn.Module):
    """Two stride-2 4x4 convolutions (``channels``), then an MLP head: an image row -> numbers.

    Takes flattened rows ``(..., height * width)``, as every part of the VAE does."""

    def __init__(self, image_shape: tuple[int, int], out_features: int, channels: list[int], hidden: int,
                 activation: type[nn.Module]) -> None:
        super().__init__()
        self.image_shape = image_shape
        height, width = image_shape
        self.net = nn.Sequential(
            nn.Conv2d(1, channels[0], 4, stride=2, padding=1), activation(),
            nn.Conv2d(channels[0], channels[1], 4, stride=2, padding=1), activation(),
            nn.Flatten(),
            nn.Linear(channels[1] * (height // 4) * (width // 4), hidden), activation(),
            nn.Linear(hidden, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(-1, 1, *self.image_shape)
        return self.net(images).reshape(*x.shape[:-1], -1)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: an MLP, then two stride-2 transposed convolutions to
    ``out_features / (height * width)`` maps, flattened map after map (so a likelihood that needs
    two numbers per pixel gets all the first ones, then all the second ones)."""

    def __init__(self, in_features: int, image_shape: tuple[int, int], out_maps: int, channels: list[int],
                 hidden: int, activation: type[nn.Module]) -> None:
        super().__init__()
        height, width = image_shape
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), activation(),
            nn.Linear(hidden, channels[1] * (height // 4) * (width // 4)), activation(),
            nn.Unflatten(-1, (channels[1], height // 4, width // 4)),
            nn.ConvTranspose2d(channels[1], channels[0], 4, stride=2, padding=1), activation(),
            nn.ConvTranspose2d(channels[0], out_maps, 4, stride=2, padding=1),
            nn.Flatten(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:-1], -1)


@NETS.register("conv_encoder")
def conv_encoder(
    in_features: int,
    out_features: int,
    *,
    image_shape: ImageShape | None = None,
    channels: Channels = (32, 64),
    hidden: Size = 256,
    activation: Activation = "relu",
) -> ConvEncoder:
    """A small convolutional encoder for grayscale images (28x28 MNIST, 28x20 Frey, 8x8 digits).

    ``image_shape`` (height, width) is filled by :func:`~ppl_vae.models.vae.build_vae` from the dataset."""
    shape = _check_image_shape(image_shape, in_features, "conv_encoder")
    return ConvEncoder(shape, out_features, list(channels), hidden, ACTIVATIONS[activation])


@NETS.register("conv_decoder")
def conv_decoder(
    in_features: int,
    out_features: int,
    *,
    image_shape: ImageShape | None = None,
    channels: Channels = (32, 64),
    hidden: Size = 256,
    activation: Activation = "relu",
) -> ConvDecoder:
    """The convolutional decoder matching :func:`conv_encoder`; it gives ``out_features / (height *
    width)`` numbers per pixel (1 for Bernoulli, 2 for a per-pixel mean and scale)."""
    height, width = _check_image_shape(image_shape, None, "conv_decoder")
    if out_features % (height * width):
        raise ConfigError(f"image_shape: {out_features} outputs are not a whole number of {height}x{width} maps.")
    return ConvDecoder(in_features, (height, width), out_features // (height * width), list(channels), hidden,
                       ACTIVATIONS[activation])
