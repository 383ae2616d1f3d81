"""Minibatches of in-memory tensors, and dynamic binarization.

Batching by slicing a tensor that already sits on the device is much faster than a ``DataLoader``
for data this small; the batches depend only on the generator's state, on any device.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ppl_vae.errors import ConfigError


def batches(
    x: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    shuffle: bool = True,
    binarize: bool = False,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """One epoch of minibatches of the rows of ``x``, on ``x``'s device.

    With ``shuffle`` the rows come in a random order drawn from ``generator``; with ``binarize``
    each batch is replaced by Bernoulli draws with the pixel values as probabilities (dynamic
    binarization, Burda et al. 2015). The batches depend only on ``generator``'s state: on data on
    the generator's device (a CPU run) its draws are used as they are; on data elsewhere (a GPU run
    with the CPU generator that checkpoints save) the order is drawn once per epoch and copied, and
    the binarization is drawn on the data's device by a generator seeded from ``generator`` at the
    epoch's start, so that no batch waits for a copy from the host.
    """
    if batch_size < 1:
        raise ConfigError(f"data.batch_size: must be a positive integer, got {batch_size}.")
    num_rows = x.shape[0]
    order = None
    if shuffle:
        order = torch.randperm(num_rows, generator=generator, device=generator.device).to(x.device)
    binarizer = generator if not binarize or generator.device == x.device else seeded_from(generator, x.device)
    stop = num_rows - num_rows % batch_size if drop_last else num_rows
    for start in range(0, stop, batch_size):
        rows = slice(start, start + batch_size)
        batch = x[rows] if order is None else x[order[rows]]
        yield sample_binary(batch, binarizer) if binarize else batch


def seeded_from(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with one number drawn from ``generator``."""
    seed = int(torch.randint(2**63 - 1, (), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


def sample_binary(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli(probs) draws, as 0./1. of ``probs``' dtype, from uniforms drawn on the
    generator's device (the same draws for data on any device; a generator on the data's device
    keeps them there). The comparison is written into the uniforms' memory (``lt_``), one pass over
    the batch fewer than ``(uniforms < probs).to(dtype)``, with the same draws."""
    uniforms = torch.rand(probs.shape, generator=generator, device=generator.device).to(probs.device)
    return uniforms.lt_(probs).to(probs.dtype)
