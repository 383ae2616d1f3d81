"""The ELBO estimators against closed forms, and the exact effect of β (DESIGN's pitfalls)."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

from ppl_vae.config import ModelConfig, part
from ppl_vae.build import build_schedule, build_vae
from ppl_vae.objectives import SCHEDULES
from ppl_vae.objectives.traces import elbo_terms, trace_pair

DATA_DIM, LATENT_DIM, BATCH = 12, 3, 7


@pytest.fixture
def vae_and_data():
    config = ModelConfig(latent_dim=LATENT_DIM, encoder=part("mlp", hidden_sizes=[16]),
                         decoder=part("mlp", hidden_sizes=[16]))
    vae = build_vae(config, DATA_DIM)
    x = torch.bernoulli(torch.full((BATCH, DATA_DIM), 0.3))
    return vae, x


def loss_with_seed(elbo, vae, x, beta, seed=1):
    """The loss with a fixed RNG state, so that every call draws the same guide samples."""
    pyro.set_rng_seed(seed)
    return elbo.loss(vae.model, vae.guide, x, beta)


def terms_with_seed(vae, x, analytic, seed=1):
    pyro.set_rng_seed(seed)
    return elbo_terms(*trace_pair(vae.model, vae.guide, x), analytic_kl=analytic)


def test_analytic_kl_is_the_closed_form_for_diagonal_gaussians(vae_and_data):
    vae, x = vae_and_data
    _, kl = terms_with_seed(vae, x, analytic=True)
    posterior = vae.encode(x)
    loc, scale = posterior.base_dist.loc, posterior.base_dist.scale
    # KL(N(mu, s^2) || N(0, 1)) = 1/2 sum(mu^2 + s^2 - 1 - log s^2)
    closed_form = 0.5 * (loc**2 + scale**2 - 1 - torch.log(scale**2)).sum(-1)
    torch.testing.assert_close(kl, closed_form)


def test_monte_carlo_kl_converges_to_the_closed_form(vae_and_data):
    vae, x = vae_and_data
    posterior, prior = vae.encode(x[:1]), vae.prior()
    z = posterior.sample((200_000,))
    estimate = (posterior.log_prob(z) - prior.log_prob(z)).mean(0)
    exact = kl_divergence(posterior, prior.expand(posterior.batch_shape))
    standard_error = (posterior.log_prob(z) - prior.log_prob(z)).std(0) / 200_000**0.5
    assert torch.all((estimate - exact).abs() < 4 * standard_error)


@pytest.mark.parametrize("elbo_class, analytic", [(Trace_ELBO, False), (TraceMeanField_ELBO, True)])
@pytest.mark.parametrize("beta", [0.0, 0.25, 1.0, 3.0])
def test_beta_changes_the_loss_by_exactly_beta_minus_one_kl(vae_and_data, elbo_class, analytic, beta):
    vae, x = vae_and_data
    elbo = elbo_class()
    reconstruction, kl = terms_with_seed(vae, x, analytic)
    loss_at_one = loss_with_seed(elbo, vae, x, 1.0)
    loss_at_beta = loss_with_seed(elbo, vae, x, beta)
    # loss(β) = -E_q log p(x|z) + β KL, summed over the batch
    assert loss_at_one == pytest.approx(-(reconstruction - kl).sum().item(), rel=1e-5)
    assert loss_at_beta - loss_at_one == pytest.approx((beta - 1) * kl.sum().item(), rel=1e-4, abs=1e-3)
    if beta == 0.0:
        assert loss_at_beta == pytest.approx(-reconstruction.sum().item(), rel=1e-5)


@pytest.mark.parametrize("elbo_class", [Trace_ELBO, TraceMeanField_ELBO])
def test_beta_zero_still_trains_the_encoder_through_the_reconstruction(vae_and_data, elbo_class):
    vae, x = vae_and_data
    loss = elbo_class().differentiable_loss(vae.model, vae.guide, x, 0.0)
    loss.backward()
    first_layer = vae.encoder[0].weight
    assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0


@pytest.mark.parametrize("name, options, expected", [
    ("constant", {"value": 0.5}, [0.5, 0.5, 0.5]),
    ("linear", {"start": 0.0, "end": 1.0, "duration": 4}, [0.0, 0.5, 1.0]),
    ("cyclical", {"start": 0.0, "end": 1.0, "period": 4, "ratio": 0.5}, [0.0, 1.0, 0.0]),
])
def test_schedules_by_epoch(name, options, expected):
    schedule = build_schedule(part(name, **options))
    assert [schedule(step=1000, epoch=epoch) for epoch in (0, 2, 4)] == pytest.approx(expected)


def test_sigmoid_schedule_is_monotone_and_centred():
    schedule = build_schedule(part("sigmoid", duration=10, by="step"))
    values = [schedule(step=step, epoch=0) for step in range(11)]
    assert values == sorted(values)
    assert values[5] == pytest.approx(0.5)
    assert values[0] < 0.01 and values[10] > 0.99


def test_schedule_registry_lists_every_schedule():
    assert {"constant", "linear", "sigmoid", "cyclical"} <= set(SCHEDULES.names())
