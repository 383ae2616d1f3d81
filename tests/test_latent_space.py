"""The pure pieces of the latent-space and Suarez experiments: the manifold grids (AEVB's equal prior
mass per cell, Suarez's equal steps in z), the order in which the grid's codes are drawn, the share of
codes inside a grid, and the sizes of Suarez's networks."""

import pytest
import torch
from torch.distributions import Normal

from ppl_vae.build import build_vae
from ppl_vae.errors import ConfigError
from ppl_vae.experiments import run_experiment
from ppl_vae.experiments.latent_space import linear_grid, share_inside
from ppl_vae.experiments.runner import Output
from ppl_vae.experiments.suarez_variants import VARIANTS, variant_config
from ppl_vae.plots import manifold_grid


def test_the_inverse_cdf_grid_puts_equal_prior_mass_between_neighbours():
    values = manifold_grid(9)[0]
    probabilities = Normal(0.0, 1.0).cdf(values)
    assert torch.allclose(probabilities, torch.linspace(0.05, 0.95, 9), atol=1e-5)
    assert torch.allclose(values, -values.flip(0), atol=1e-5)
    assert values[-1].item() == pytest.approx(1.6449, abs=1e-3)  # the prior's 95 % quantile


def test_the_linear_grid_has_equal_steps_from_minus_five_to_five():
    values = linear_grid(11)
    assert values.tolist() == pytest.approx([-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5])
    assert torch.diff(linear_grid(20)).std().item() < 1e-6


def test_share_inside_counts_codes_within_the_grids_square_edges_included():
    codes = torch.tensor([[0.0, 0.0], [1.0, -1.0], [1.5, 0.0], [0.0, -3.0]])
    assert share_inside(codes, torch.tensor([-1.0, 0.0, 1.0])) == pytest.approx(0.5)
    assert share_inside(codes, linear_grid(5)) == pytest.approx(1.0)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda variant: variant.key)
def test_each_suarez_variant_has_his_layer_sizes(variant):
    config = variant_config(variant, Output(folder=None, device=torch.device("cpu"), progress=False), "mnist", 1)
    vae = build_vae(config.model, 784, (28, 28))
    encoder = 784 * variant.encoder + variant.encoder + variant.encoder * 2 * variant.latent + 2 * variant.latent
    decoder = variant.latent * variant.decoder + variant.decoder + variant.decoder * 784 + 784
    assert sum(p.numel() for p in vae.parameters()) == encoder + decoder  # one encoder net: means and log scales
    assert config.model.encoder.options["activation"] == variant.activation
    assert (config.optim.name, config.optim.lr) == (variant.optimizer, variant.lr)


def test_each_suarez_variant_changes_one_thing_from_the_last():
    fields = ("encoder", "latent", "decoder", "activation", "optimizer", "lr")
    for before, after in zip(VARIANTS, VARIANTS[1:]):
        changed = {name for name in fields if getattr(before, name) != getattr(after, name)}
        assert changed in ({"optimizer", "lr"}, {"activation"}, {"encoder", "decoder"}, {"latent"}), changed


def test_latent_space_refuses_latent_dims_without_two(tmp_path):
    with pytest.raises(ConfigError, match="latent_dims: must include 2"):
        run_experiment("latent-space", tmp_path, quick_mode=True, overrides={"latent_dims": [5, 10]}, progress=False)
