"""gradient_moments against cases with a known answer: a gradient that is the noise itself (its
moments are those of the draws), a deterministic gradient (variance exactly 0), the analytic KL's
gradient (no variance at all when the likelihood ignores z, where the Monte Carlo KL's has some),
and the seeds (the same noise for two objectives, the caller's random state left alone)."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from ppl_vae.errors import EvaluationError
from ppl_vae.evaluation.gradients import gradient_moments, signal_to_noise
from ppl_vae.models.vae import VAE
from ppl_vae.objectives import OBJECTIVES
from ppl_vae.parts.likelihoods import Bernoulli
from ppl_vae.parts.nets import mlp
from ppl_vae.parts.posteriors import DiagonalNormal
from ppl_vae.parts.priors import StandardNormal

DATA_DIM, LATENT_DIM = 6, 2


def small_vae() -> VAE:
    return VAE(mlp(DATA_DIM, 2 * LATENT_DIM, hidden_sizes=[8]), mlp(LATENT_DIM, DATA_DIM, hidden_sizes=[8]),
               StandardNormal(LATENT_DIM), DiagonalNormal(LATENT_DIM), Bernoulli(DATA_DIM))


def data() -> torch.Tensor:
    return torch.bernoulli(torch.full((5, DATA_DIM), 0.5))


def test_moments_of_a_gradient_that_is_the_noise_are_the_moments_of_the_draws():
    weight = torch.ones(3, requires_grad=True)

    def noisy(model, guide, scale):  # ∂loss/∂weight = scale·ε, ε ~ N(0, I)
        return (weight * scale * torch.randn(3)).sum()

    mean, variance = gradient_moments(noisy, None, None, 2.0, parameters=[weight], num_draws=50, seed=7)
    draws = []
    for draw in range(50):
        torch.manual_seed(7 + draw)
        draws.append(2.0 * torch.randn(3, dtype=torch.float32).double())
    draws = torch.stack(draws)
    torch.testing.assert_close(mean[0], draws.mean(0))
    torch.testing.assert_close(variance[0], draws.var(0))


def test_a_deterministic_loss_has_zero_variance_and_its_gradient_as_mean():
    weight = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    unused = torch.zeros(2, requires_grad=True)
    moments = gradient_moments(lambda model, guide: (weight**2).sum(), None, None, parameters=[weight, unused],
                               num_draws=5)
    assert moments.variance[0].eq(0).all() and moments.variance[1].eq(0).all()
    torch.testing.assert_close(moments.mean[0], 2 * weight.detach().double())
    assert moments.mean[1].eq(0).all()  # not reached by the loss: 0 on every draw
    assert signal_to_noise(moments.mean[:1], moments.variance[:1], 5) == math.inf
    assert math.isnan(signal_to_noise(moments.mean[1:], moments.variance[1:], 5))


def test_signal_to_noise_is_the_mean_s_length_over_the_noise_s():
    # g = m + ε with ε ~ N(0, I) in 4 dimensions: ‖m‖ / √4. The draws' own noise in the mean (tr Cov / n)
    # is taken out, so pure noise (m = 0) reads about 0 rather than 1/√n
    weight = torch.ones(4, requires_grad=True)
    for signal in (torch.tensor([3.0, 0.0, 4.0, 0.0]), torch.zeros(4)):
        def noisy(model, guide):
            return (weight * (signal + torch.randn(4))).sum()

        moments = gradient_moments(noisy, None, None, parameters=[weight], num_draws=1000)
        # measured over 30 seeds at 1000 draws: 2.50 ± 0.04 for ‖m‖ = 5, between 0 and 0.04 for m = 0
        assert signal_to_noise(*moments, 1000) == pytest.approx(signal.norm().item() / 2, abs=0.2)


def test_analytic_kl_adds_no_variance_to_the_encoder_gradient():
    # with the decoder's output layer at 0, p(x|z) does not depend on z: the encoder's gradient is the
    # KL's alone. In closed form (meanfield) it is the same on every draw; estimated from the sample
    # (elbo, log q(z|x) - log p(z)) it varies with z.
    vae, x = small_vae(), data()
    with torch.no_grad():
        vae.decoder[-1].weight.zero_()
    encoder = list(vae.encoder.parameters())
    analytic = gradient_moments(OBJECTIVES.get("meanfield")(), vae.model, vae.guide, x, parameters=encoder,
                                num_draws=20)
    sampled = gradient_moments(OBJECTIVES.get("elbo")(), vae.model, vae.guide, x, parameters=encoder,
                               num_draws=20)
    assert all(variance.eq(0).all() for variance in analytic.variance)
    assert all(variance.sum() > 1e-3 for variance in sampled.variance)
    posterior = vae.encode(x)
    kl = torch.distributions.kl_divergence(posterior, vae.prior()).sum()
    for mean, expected in zip(analytic.mean, torch.autograd.grad(kl, encoder)):
        torch.testing.assert_close(mean, expected.double())


def test_the_same_seed_gives_two_objectives_the_same_draws_and_leaves_the_caller_s_stream_alone():
    vae, x = small_vae(), data()
    decoder = list(vae.decoder.parameters())
    state = torch.get_rng_state()
    # the decoder's gradient does not involve the KL: equal draw by draw for the two KL estimators
    sampled = gradient_moments(Trace_ELBO().differentiable_loss, vae.model, vae.guide, x, parameters=decoder,
                               num_draws=10, seed=3)
    analytic = gradient_moments(OBJECTIVES.get("meanfield")(), vae.model, vae.guide, x, parameters=decoder,
                                num_draws=10, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for first, second in zip(sampled.mean + sampled.variance, analytic.mean + analytic.variance):
        torch.testing.assert_close(first, second)
    assert all(variance.sum() > 0 for variance in sampled.variance)
    # without a seed the draws continue the global stream: fresh noise, and the stream moves on
    pyro.set_rng_seed(3)
    state = torch.get_rng_state()
    unseeded = gradient_moments(OBJECTIVES.get("meanfield")(), vae.model, vae.guide, x, parameters=decoder,
                                num_draws=10, seed=None)
    assert not torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(unseeded.variance[0], analytic.variance[0])


@pytest.mark.parametrize("options", [{"num_draws": 1}, {"num_draws": 0}, {"num_draws": 2.5}, {"parameters": []}])
def test_bad_options_are_refused(options):
    weight = torch.ones(1, requires_grad=True)
    arguments = {"parameters": [weight], "num_draws": 3, **options}
    with pytest.raises(EvaluationError):
        gradient_moments(lambda model, guide: weight.sum(), None, None, **arguments)
