"""The conditional VAE on the 8x8 digits: masks, completions, the importance-sampled log p(y|x)."""

from dataclasses import replace

import pytest
import torch

from ppl_vae.cvae import (CVAE, Baseline, conditional_log_likelihood, observed_mask, split_pixels,
                          train_baseline, train_cvae)
from ppl_vae.data import load_dataset
from ppl_vae.errors import ConfigError


@pytest.fixture(scope="module")
def binary_digits():
    dataset = load_dataset("digits")
    return replace(dataset, train=(dataset.train > 0.5).float(), test=(dataset.test > 0.5).float(), binary=True)


def test_masks():
    right = observed_mask("right_half", (4, 4)).reshape(4, 4)
    assert right[:, 2:].all() and not right[:, :2].any()
    quadrant = observed_mask("quadrant", (4, 4)).reshape(4, 4)
    assert quadrant.sum() == 4 and quadrant[2:, :2].all()
    with pytest.raises(ConfigError, match="right_half, quadrant"):
        observed_mask("left_half", (4, 4))


@pytest.fixture(scope="module")
def trained(binary_digits):
    mask = observed_mask("right_half", binary_digits.image_shape)
    baseline = train_baseline(binary_digits, mask, epochs=15, hidden_sizes=[64], progress=False)
    cvae = train_cvae(binary_digits, mask, baseline, epochs=30, latent_dim=4, hidden_sizes=[64], progress=False)
    return mask, baseline, cvae


def test_completions_have_one_image_per_draw(trained, binary_digits):
    mask, _, cvae = trained
    x, _ = split_pixels(binary_digits.test[:5], mask)
    completions = cvae.complete(x, num_samples=3)
    assert completions.shape == (3, 5, int((~mask).sum()))
    assert ((completions >= 0) & (completions <= 1)).all()
    assert (completions[0] - completions[1]).abs().max() > 1e-3  # different draws, different completions


def test_importance_sampling_tightens_the_elbo_and_beats_untrained(trained, binary_digits):
    mask, baseline, cvae = trained
    x, y = split_pixels(binary_digits.test, mask)
    torch.manual_seed(0)
    elbo = conditional_log_likelihood(cvae, x, y, num_samples=1)
    estimates = [conditional_log_likelihood(cvae, x, y, num_samples=k) for k in (10, 300, 300)]
    assert elbo < estimates[0] < estimates[1]
    assert estimates[1] == pytest.approx(estimates[2], abs=0.1)  # converged in K
    untrained = CVAE(Baseline(x.shape[1], y.shape[1], [64]), x.shape[1], y.shape[1], 4, [64])
    assert estimates[1] > conditional_log_likelihood(untrained, x, y) + 5
    # an untrained network is near p = 1/2 for each of the 32 hidden pixels: about -32 log 2
    assert baseline.log_likelihood(x, y).mean().item() > -32 * torch.log(torch.tensor(2.0)).item()
