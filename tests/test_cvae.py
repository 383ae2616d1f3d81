"""The conditional VAE on the 8x8 digits: masks, training on the shared loop, completions, the
importance-sampled log p(y|x), and the baseline's exact one."""

import math
from dataclasses import replace

import pyro
import pytest
import torch
import torch.nn.functional as F

from ppl_vae.data import load_dataset
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation import evaluate_elbo, log_likelihood
from ppl_vae.experiments.cvae_completions import train_baseline, train_conditional, train_cvae
from ppl_vae.models.cvae import CVAE, Baseline, observed_mask, split_pixels
from ppl_vae.objectives import OBJECTIVES


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


def mean_log_likelihood(module, x, y, num_samples=100):
    """log p(y|x) in nats, averaged over the datapoints, by the generic importance sampler (exact for
    the baseline, which has no latent)."""
    return log_likelihood(module.model, module.guide, x, y, num_samples=num_samples).mean().item()


def test_importance_sampling_tightens_the_elbo_and_beats_untrained(trained, binary_digits):
    mask, baseline, cvae = trained
    # all 1797 digits: the Monte Carlo spread of the means (about 0.003 nats at K = 10) is far below the
    # gaps between K = 1, 10 and 300 (about 0.12 and 0.02 nats); on the 297 test digits it is not
    x, y = split_pixels(torch.cat([binary_digits.train, binary_digits.test]), mask)
    torch.manual_seed(0)
    elbo = mean_log_likelihood(cvae, x, y, num_samples=1)
    estimates = [mean_log_likelihood(cvae, x, y, num_samples=k) for k in (10, 300, 300)]
    assert elbo < estimates[0] < estimates[1]
    assert estimates[1] == pytest.approx(estimates[2], abs=0.1)  # converged in K
    untrained = CVAE(Baseline(x.shape[1], y.shape[1], [64]), x.shape[1], y.shape[1], 4, [64])
    assert estimates[1] > mean_log_likelihood(untrained, x, y) + 5
    # an untrained network is near p = 1/2 for each of the 32 hidden pixels: about -32 log 2
    assert mean_log_likelihood(baseline, x, y, num_samples=1) > -32 * torch.log(torch.tensor(2.0)).item()


def test_baseline_elbo_is_its_exact_log_likelihood(trained, binary_digits):
    """No latent, an empty guide: the ELBO and every importance-sampled estimate are log p(y|x) itself,
    the Bernoulli log-likelihood of the hidden pixels at the network's predictions."""
    mask, baseline, _ = trained
    x, y = split_pixels(binary_digits.test, mask)
    with torch.no_grad():
        exact = -F.binary_cross_entropy_with_logits(baseline(x), y, reduction="none").sum(-1)
    torch.testing.assert_close(log_likelihood(baseline.model, baseline.guide, x, y, num_samples=3), exact)
    elbo = evaluate_elbo(baseline.model, baseline.guide, x, y)
    assert elbo["kl"] == 0
    assert elbo["elbo"] == pytest.approx(exact.mean().item(), abs=1e-4)


def test_training_runs_on_the_shared_loop_and_lowers_the_loss(binary_digits):
    """train_baseline and train_cvae take their steps through ppl_vae.training.loop.train (one
    history record per epoch), and both bounds improve over training; the CVAE's leaves the baseline alone."""
    mask = observed_mask("quadrant", binary_digits.image_shape)
    baseline = Baseline(int(mask.sum()), int((~mask).sum()), [32])
    history = train_conditional(baseline, binary_digits, mask, 4, progress=False).history
    assert [record["epoch"] for record in history] == [1, 2, 3, 4]
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]
    assert all(record["train_kl"] == 0 for record in history)  # no latent, no KL
    cvae = CVAE(baseline, int(mask.sum()), int((~mask).sum()), 2, [32])
    frozen = [parameter.clone() for parameter in baseline.parameters()]
    history = train_conditional(cvae, binary_digits, mask, 4, progress=False).history
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]
    assert all(torch.equal(before, after) for before, after in zip(frozen, baseline.parameters()))


def test_kl_weight_scales_the_cvae_kl_only(trained, binary_digits):
    """β on the latent site in model and guide: the loss changes by exactly (β - 1)·KL (DESIGN's pitfalls)."""
    mask, _, cvae = trained
    x, y = split_pixels(binary_digits.test[:20], mask)
    objective = OBJECTIVES.get("meanfield")()
    losses = {}
    for beta in (1.0, 3.0):
        pyro.set_rng_seed(0)  # the same z for both
        losses[beta] = objective(cvae.model, cvae.guide, x, y, kl_weight=beta).item()
    assert losses[3.0] - losses[1.0] == pytest.approx(2 * objective.terms()["kl"].item(), rel=1e-4)


def normal_log_density(z, loc, log_scale):
    """Σ_u log N(z_u; loc_u, exp(log_scale_u)²), written out."""
    return (-0.5 * ((z - loc) / log_scale.exp()) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)


def plain_torch_log_p_y_given_x(cvae, x, y, num_samples):
    """log (1/K) Σ_k p(y|z_k,x) p(z_k|x) / q(z_k|x,y), z_k ~ q(z|x,y), from the CVAE's networks alone."""
    with torch.no_grad():
        q_loc, q_log_scale = cvae.recognition_net(torch.cat([x, y], -1)).chunk(2, dim=-1)
        z = q_loc + q_log_scale.exp() * torch.randn(num_samples, *q_loc.shape)
        baseline_guess = torch.sigmoid(cvae.baseline(x))
        p_loc, p_log_scale = cvae.prior_net(torch.cat([x, baseline_guess], -1)).chunk(2, dim=-1)
        logits = cvae.generation_net(torch.cat([z, x.expand(num_samples, *x.shape)], -1))
        log_p_y = -F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none").sum(-1)
        weights = log_p_y + normal_log_density(z, p_loc, p_log_scale) - normal_log_density(z, q_loc, q_log_scale)
    return torch.logsumexp(weights, dim=0) - math.log(num_samples)


def test_generic_log_likelihood_is_the_plain_torch_importance_sampler(trained, binary_digits):
    mask, _, cvae = trained
    x, y = split_pixels(binary_digits.test[:50], mask)
    pyro.set_rng_seed(5)  # one chunk of datapoints and of particles: the same draws as one torch.randn
    generic = log_likelihood(cvae.model, cvae.guide, x, y, num_samples=200, batch_size=50, particle_batch_size=200)
    pyro.set_rng_seed(5)
    torch.testing.assert_close(generic, plain_torch_log_p_y_given_x(cvae, x, y, 200), rtol=1e-5, atol=1e-4)
