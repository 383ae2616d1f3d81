"""ppl_vae.models.ppca: the exact log p(x) of probabilistic PCA against an independent computation,
and importance sampling with the exact-posterior guide, where every log-weight is log p(x)."""

import math

import pytest
import torch

from ppl_vae.evaluation import importance_sample
from ppl_vae.models.ppca import PPCA

TIGHT = 1e-8


def independent_log_likelihood(weight, bias, sigma, x):
    """log N(x; b, C), C = W Wᵀ + σ² I, by hand: -(D log 2π + log det C + rᵀ C⁻¹ r) / 2."""
    data_dim = weight.shape[0]
    covariance = weight @ weight.T + sigma**2 * torch.eye(data_dim, dtype=torch.float64)
    residual = x - bias
    _, log_det = torch.linalg.slogdet(covariance)
    mahalanobis = (residual * torch.linalg.solve(covariance, residual.T).T).sum(-1)
    return -0.5 * (data_dim * math.log(2 * math.pi) + log_det + mahalanobis)


def test_exact_log_likelihood_matches_an_independent_computation():
    ppca = PPCA.random(data_dim=6, scales=[2.0, 0.7, 0.1], sigma=0.4, seed=3)
    x = ppca.sample(50, seed=4)
    expected = independent_log_likelihood(ppca.weight, ppca.bias, ppca.sigma, x)
    torch.testing.assert_close(ppca.exact_log_likelihood(x), expected, rtol=0, atol=TIGHT)
    # Bayes: log p(x) = log p(z) + log p(x|z) - log p(z|x) at any z
    z = torch.randn(50, 3, dtype=torch.float64)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    likelihood = torch.distributions.Normal(z @ ppca.weight.T + ppca.bias, ppca.sigma).log_prob(x).sum(-1)
    torch.testing.assert_close(prior + likelihood - ppca.exact_posterior(x).log_prob(z), expected, rtol=0, atol=TIGHT)


def test_importance_sampling_with_the_exact_posterior_gives_log_px_for_every_sample():
    ppca = PPCA.random(data_dim=5, scales=[2.0, 0.03], sigma=0.5, seed=1)
    x = ppca.sample(12, seed=2)
    exact = ppca.exact_log_likelihood(x)
    estimate = importance_sample(ppca.model, ppca.guide, x, num_samples=64, psis=False)
    # the mean log-weight (elbo) and the log-mean-exp agree with log p(x), and all K weights are equal
    torch.testing.assert_close(estimate.elbo, exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(estimate.log_likelihood, exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(estimate.ess, torch.full_like(exact, 64.0), rtol=1e-6, atol=0)


def test_a_displaced_guide_puts_the_elbo_below_log_px():
    ppca = PPCA.random(data_dim=5, scales=[2.0, 0.5], sigma=0.5, seed=1, guide_shift=0.5, guide_variance_factor=2.0)
    x = ppca.sample(10, seed=2)
    estimate = importance_sample(ppca.model, ppca.guide, x, num_samples=500, psis=False)
    assert bool((estimate.elbo < ppca.exact_log_likelihood(x) - 0.05).all())


def test_non_orthogonal_columns_are_refused():
    with pytest.raises(ValueError, match="orthogonal"):
        PPCA(torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]), torch.zeros(3), 0.5)
