"""The helpers of the iwae-table and priors-table experiments: standard errors, the scaled warm-up,
and the bounds every row is scored by."""

import math

import pytest
import torch

from ppl_vae.build import build_vae
from ppl_vae.config import ModelConfig, part
from ppl_vae.experiments.iwae_table import bounds_on, epochs_text, mean_with_error
from ppl_vae.experiments.priors_table import WARMUP_FRACTION, warmup_duration


def test_mean_with_error_is_the_mean_and_the_standard_deviation_over_root_n():
    values = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3, sample variance (4 + 1 + 0 + 9) / 3 = 14 / 3
    summary = mean_with_error(values)
    assert summary["mean"] == pytest.approx(3.0)
    assert summary["standard_error"] == pytest.approx(math.sqrt(14 / 3) / 2)


def test_mean_with_error_of_one_value_has_no_error():
    assert mean_with_error(torch.tensor([-86.5])) == {"mean": -86.5, "standard_error": 0.0}


def test_warmup_keeps_tomczak_and_wellings_fraction_of_the_training_steps():
    assert WARMUP_FRACTION == 100 / 2000
    assert warmup_duration(2000, 600, WARMUP_FRACTION) == 100 * 600  # their 100 epochs of 2000
    assert warmup_duration(6, 600, WARMUP_FRACTION) == 180
    assert warmup_duration(1, 3, WARMUP_FRACTION) == 1  # never shorter than one step


def test_epochs_text_says_epoch_once():
    assert epochs_text(1) == "1 epoch"
    assert epochs_text(3) == "3 epochs"


def test_bounds_rise_from_the_elbo_to_log_px():
    torch.manual_seed(0)
    net = part("mlp", hidden_sizes=[16], activation="tanh")
    vae = build_vae(ModelConfig(latent_dim=4, encoder=net, decoder=net, likelihood=part("bernoulli")), data_dim=20)
    x = torch.bernoulli(torch.full((200, 20), 0.3))
    bounds = bounds_on(vae, x, (5, 50), importance_samples=1000, seed=0)
    assert set(bounds) == {"elbo", "log_px", "log_px_ess", "bound_L5", "bound_L50"}
    assert all(values.shape == (200,) for values in bounds.values())
    assert ((bounds["log_px_ess"] >= 1) & (bounds["log_px_ess"] <= 1000)).all()
    means = [bounds[name].mean().item() for name in ("elbo", "bound_L5", "bound_L50", "log_px")]
    assert means == sorted(means) and means[0] < means[-1]  # L_1 <= L_5 <= L_50 <= log p(x) (Burda et al., Thm 1)
    again = bounds_on(vae, x, (5, 50), importance_samples=1000, seed=0)
    assert all(torch.equal(bounds[name], again[name]) for name in bounds)  # seeded
