"""The IWAE objective against ground truth: Trace_ELBO at k = 1, a plain-torch computation of the
bound, the exact log p(x) of probabilistic PCA, its growth with k, scales and β outside the
logsumexp (DESIGN's pitfalls), and DReG's gradient against the standard one.

Float tolerances: losses are float32 sums of a few dozen terms of order 1-10 nats computed in a
different order than the reference, so agreement is to a few float32 ulps of the sum; rel=1e-5
(about 100 ulps) leaves room for that and nothing else. Monte Carlo checks compare with standard
errors measured from the draws themselves.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import MultivariateNormal, Normal

from ppl_vae.errors import ConfigError, EvaluationError
from ppl_vae.models.vae import VAE
from ppl_vae.objectives import OBJECTIVES
from ppl_vae.objectives.iwae import IWAE
from ppl_vae.parts.likelihoods import Bernoulli, Gaussian
from ppl_vae.parts.nets import mlp
from ppl_vae.parts.posteriors import DiagonalNormal, InverseAutoregressiveFlow
from ppl_vae.parts.priors import StandardNormal

DATA_DIM, LATENT_DIM = 8, 2
REL = 1e-5  # float32 sums computed in another order (module docstring)
PROTOTYPES = torch.tensor([[0.9] * 4 + [0.1] * 4, [0.1] * 4 + [0.9] * 4, [0.9, 0.1] * 4, [0.1, 0.9] * 4])


def small_vae(posterior: nn.Module | None = None) -> VAE:
    return VAE(mlp(DATA_DIM, 2 * LATENT_DIM, hidden_sizes=[16]), mlp(LATENT_DIM, DATA_DIM, hidden_sizes=[16]),
               StandardNormal(LATENT_DIM), posterior or DiagonalNormal(LATENT_DIM), Bernoulli(DATA_DIM))


def binary_data(num_points: int) -> torch.Tensor:
    """Four noisy binary prototypes, so that the latent code has something to explain."""
    return torch.bernoulli(PROTOTYPES[torch.arange(num_points) % len(PROTOTYPES)])


@pytest.fixture(scope="module")
def trained():
    """A small VAE fitted with 300 SVI steps of the ELBO on 32 binary points (about 2 s)."""
    pyro.set_rng_seed(0)
    vae, x = small_vae(), binary_data(32)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), loss=Trace_ELBO())
    for _ in range(300):
        svi.step(x)
    return vae, x


def with_seed(seed: int, function, *args, **kwargs):
    """``function(*args, **kwargs)`` from a fixed RNG state, so that every call draws the same z."""
    pyro.set_rng_seed(seed)
    return function(*args, **kwargs)


class ConditionalVAE(nn.Module):
    """p(z|x) p(y|z, x), guide q(z|x, y): a model taking (x, y) with a learned prior."""

    def __init__(self) -> None:
        super().__init__()
        self.prior_net = nn.Linear(DATA_DIM, 2 * LATENT_DIM)
        self.recognition_net = nn.Linear(2 * DATA_DIM, 2 * LATENT_DIM)
        self.generation_net = nn.Linear(LATENT_DIM + DATA_DIM, DATA_DIM)

    @staticmethod
    def normal(params: torch.Tensor) -> dist.TorchDistribution:
        loc, log_scale = params.split(LATENT_DIM, dim=-1)
        return dist.Normal(loc, log_scale.exp()).to_event(1)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("conditional", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.normal(self.prior_net(x)))
            inputs = torch.cat([z, x.expand(*z.shape[:-1], DATA_DIM)], dim=-1)
            pyro.sample("y", dist.Bernoulli(logits=self.generation_net(inputs)).to_event(1), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("conditional", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.normal(self.recognition_net(torch.cat([x, y], dim=-1))))


# k = 1 is the ELBO


@pytest.mark.parametrize("gradient", ["standard", "dreg"])
@pytest.mark.parametrize("beta", [1.0, 0.5, 2.0, 0.0])
def test_one_particle_is_trace_elbo_on_the_same_draws(beta, gradient):
    vae, x = small_vae(), binary_data(5)
    objective = IWAE(num_particles=1, gradient=gradient)
    loss = with_seed(1, objective, vae.model, vae.guide, x, beta)
    expected = with_seed(1, Trace_ELBO().differentiable_loss, vae.model, vae.guide, x, beta)
    assert loss.item() == pytest.approx(expected.item(), rel=REL)
    assert objective.terms()["iwae"].item() == pytest.approx(objective.terms()["elbo"].item(), rel=REL)
    if gradient == "standard":  # the same draws and the same maths: the same gradient, to rounding
        parameters = list(vae.parameters())
        for ours, pyros in zip(torch.autograd.grad(loss, parameters), torch.autograd.grad(expected, parameters)):
            torch.testing.assert_close(ours, pyros)


def test_one_particle_is_trace_elbo_for_a_conditional_model():
    cvae, x, y = ConditionalVAE(), binary_data(6), binary_data(6).flip(-1)
    loss = with_seed(2, IWAE(num_particles=1), cvae.model, cvae.guide, x, y)
    expected = with_seed(2, Trace_ELBO().differentiable_loss, cvae.model, cvae.guide, x, y)
    assert loss.item() == pytest.approx(expected.item(), rel=REL)


# the bound against independent computations


def test_bound_is_the_per_datapoint_logsumexp_of_the_log_weights():
    vae, x, k = small_vae(), binary_data(5), 7
    guide = poutine.trace(vae.guide)  # its last run is the objective's vectorized one: z of shape (k, N, d)
    objective = IWAE(num_particles=k)
    loss = objective(vae.model, guide, x)
    z = guide.trace.nodes["z"]["value"].detach()
    assert z.shape == (k, len(x), LATENT_DIM)

    with torch.no_grad():
        loc, log_var = vae.encoder(x).split(LATENT_DIM, dim=-1)
        log_q = Normal(loc, (0.5 * log_var).exp()).log_prob(z).sum(-1)
        log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_likelihood = TorchBernoulli(logits=vae.decoder(z)).log_prob(x).sum(-1)
    log_weights = log_likelihood + log_p - log_q  # (k, N)
    bound = (log_weights.logsumexp(0) - math.log(k)).sum()

    terms = objective.terms()
    assert terms["iwae"].item() == pytest.approx(bound.item(), rel=REL)
    assert loss.item() == pytest.approx(-bound.item(), rel=REL)
    assert terms["reconstruction"].item() == pytest.approx(log_likelihood.mean(0).sum().item(), rel=REL)
    assert terms["kl"].item() == pytest.approx((log_q - log_p).mean(0).sum().item(), rel=REL)
    assert terms["elbo"].item() == pytest.approx(log_weights.mean(0).sum().item(), rel=REL)
    # the pitfall this guards against (one logsumexp over the batch's summed weights) is another
    # number, far outside the tolerance (measured: 0.35 nats apart, even for this untrained q ≈ p(z))
    joint = log_weights.sum(1).logsumexp(0) - math.log(k)
    assert abs(joint.item() - bound.item()) > 1000 * REL * abs(bound.item())


def ppca(sigma: float = 0.5) -> tuple[VAE, torch.Tensor, float, torch.Tensor, torch.Tensor]:
    """Probabilistic PCA as a linear-Gaussian VAE: z ~ N(0, I), x|z ~ N(Wz + b, σ²I), with W's columns
    orthogonal so that the exact posterior N(A(x - b), σ²M⁻¹), M = WᵀW + σ²I, A = M⁻¹Wᵀ, is a
    diagonal Normal. Returns the VAE (encoder unset), 16 points x drawn from it, the exact
    Σ log p(x) = Σ log N(x; b, WWᵀ + σ²I), A and diag(σ²M⁻¹)."""
    data_dim, latent_dim = 5, 2
    orthonormal, _ = torch.linalg.qr(torch.randn(data_dim, latent_dim))
    weight, bias = orthonormal * torch.tensor([2.0, 1.0]), torch.randn(data_dim)
    decoder, encoder = nn.Linear(latent_dim, data_dim), nn.Linear(data_dim, 2 * latent_dim)
    with torch.no_grad():
        decoder.weight.copy_(weight)
        decoder.bias.copy_(bias)
    precision = weight.T @ weight + sigma**2 * torch.eye(latent_dim)
    vae = VAE(encoder, decoder, StandardNormal(latent_dim), DiagonalNormal(latent_dim),
              Gaussian(data_dim, sigma=sigma, squash="none"))
    marginal = MultivariateNormal(bias, weight @ weight.T + sigma**2 * torch.eye(data_dim))
    x = marginal.sample((16,))
    gain, variance = torch.linalg.solve(precision, weight.T), sigma**2 * torch.linalg.inv(precision).diagonal()
    return vae, x, marginal.log_prob(x).sum().item(), gain, variance


def set_encoder(vae: VAE, gain: torch.Tensor, variance: torch.Tensor, shift: float = 0.0) -> None:
    """q(z|x) = N(gain·(x - b) + shift, diag(variance)) through the linear encoder."""
    latent_dim = len(variance)
    with torch.no_grad():
        vae.encoder.weight.zero_()
        vae.encoder.weight[:latent_dim] = gain
        vae.encoder.bias[:latent_dim] = shift - gain @ vae.decoder.bias
        vae.encoder.bias[latent_dim:] = variance.log()


def test_exact_posterior_gives_the_exact_log_likelihood_for_every_k():
    vae, x, exact_log_px, gain, variance = ppca()
    set_encoder(vae, gain, variance)
    for k in (1, 10, 1000):  # every weight is p(x): the bound is log p(x) whatever the draws
        objective = IWAE(num_particles=k)
        with torch.no_grad():
            objective(vae.model, vae.guide, x)
        assert objective.terms()["iwae"].item() == pytest.approx(exact_log_px, rel=REL)


def test_nested_plates_keep_one_bound_per_datapoint():
    # z_nf ~ N(0, 1), x_nf | z_nf ~ N(z_nf, 1) over a feature plate inside the data plate (the data
    # plate at dim -2), guide at the exact posterior N(x/2, 1/2): the bound is Σ log N(x; 0, 2) for every k
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", x.shape[1], dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        gain = pyro.param("gain", torch.tensor(0.5))
        log_scale = pyro.param("log_scale", torch.tensor(-0.5 * math.log(2.0)))
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", x.shape[1], dim=-1):
            pyro.sample("z", dist.Normal(gain * x, log_scale.exp()))

    x = torch.randn(6, 3)
    exact = Normal(0.0, math.sqrt(2.0)).log_prob(x).sum().item()
    objective = IWAE(num_particles=10, gradient="dreg")
    loss = objective(model, guide, x)
    assert objective.terms()["iwae"].item() == pytest.approx(exact, rel=REL)
    parameters = [pyro.param("gain").unconstrained(), pyro.param("log_scale").unconstrained()]
    for gradient in torch.autograd.grad(loss, parameters):  # DReG at the exact posterior: 0 (see below)
        assert gradient.abs().item() < 1e-4


# the bound tightens with k


def mean_bound(objective: IWAE, model, guide, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """The bound per datapoint averaged over ``repeats`` batches of draws, and its standard error."""
    with torch.no_grad():
        values = []
        for _ in range(repeats):
            objective(model, guide, x)
            values.append(objective.terms()["iwae"].item() / len(x))
    values = torch.tensor(values)
    return values.mean().item(), values.std().item() / math.sqrt(repeats)


def test_bound_increases_with_the_number_of_particles(trained):
    vae, x = trained
    bounds = {k: mean_bound(IWAE(num_particles=k), vae.model, vae.guide, x, repeats=50) for k in (1, 5, 50)}
    # measured: -3.866 ± 0.018, -3.745 ± 0.006, -3.705 ± 0.002 nats per datapoint
    for small, large in [(1, 5), (5, 50)]:
        (low, low_error), (high, high_error) = bounds[small], bounds[large]
        assert high - low > 4 * math.hypot(low_error, high_error), bounds
    assert bounds[50][0] < 0  # Bernoulli data: a log-probability


def test_gap_to_the_exact_log_likelihood_shrinks_with_k():
    vae, x, exact_log_px, gain, variance = ppca()
    set_encoder(vae, gain, 2 * variance, shift=0.3)  # too wide and off-centre: KL(q || posterior) ≈ 1.3 nats
    exact = exact_log_px / len(x)
    gaps = {}
    for k in (1, 10, 100, 1000):
        bound, error = mean_bound(IWAE(num_particles=k), vae.model, vae.guide, x, repeats=50)
        gaps[k] = (exact - bound, error)
    # measured (nats per datapoint): 1.29 ± 0.08, 0.068 ± 0.016, 0.002 ± 0.004, 0.002 ± 0.001
    for k, (gap, error) in gaps.items():
        assert gap > -3 * error, gaps  # a lower bound, up to noise
    for small, large in [(1, 10), (10, 100)]:
        assert gaps[small][0] - gaps[large][0] > 3 * math.hypot(gaps[small][1], gaps[large][1]), gaps
    assert gaps[1000][0] < gaps[100][0] + 2 * math.hypot(gaps[100][1], gaps[1000][1]), gaps
    assert abs(gaps[1000][0]) < 0.02, gaps  # about 1% of the k = 1 gap


# scales and β outside the logsumexp


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_subsample_scale_multiplies_the_loss_and_beta_adds_beta_minus_one_kl(beta):
    vae, x, k, scale = small_vae(), binary_data(6), 5, 1000 / 6
    model, guide = poutine.scale(vae.model, scale=scale), poutine.scale(vae.guide, scale=scale)
    objective = IWAE(num_particles=k)
    unscaled = with_seed(3, objective, vae.model, vae.guide, x, beta).item()
    scaled = with_seed(3, objective, model, guide, x, beta).item()
    assert scaled == pytest.approx(scale * unscaled, rel=REL)

    at_one = with_seed(3, objective, model, guide, x, 1.0).item()
    bound, kl = objective.terms()["iwae"].item(), objective.terms()["kl"].item()
    assert at_one == pytest.approx(-scale * bound, rel=REL)  # β = 1: the bound alone
    # same draws: loss(β) - loss(1) = s·(β - 1)·KL; the difference of two sums of ~5e3 loses ~1e-2
    assert scaled - at_one == pytest.approx(scale * (beta - 1) * kl, rel=1e-4, abs=1e-2)


def test_unequal_observed_scales_are_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("a", dist.Normal(z, 1.0), obs=x[:, 0])
            with poutine.scale(scale=2.0):
                pyro.sample("b", dist.Normal(z, 1.0), obs=x[:, 1])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x[:, 0], 1.0))

    with pytest.raises(EvaluationError, match="different scales"):
        IWAE()(model, guide, torch.zeros(4, 2))


# DReG: the same expectation, less variance for the guide


@pytest.mark.parametrize("k", [1, 10])
def test_dreg_gradient_of_the_guide_vanishes_at_the_exact_posterior(k):
    # log w = log p(x) for every z, so ∂log w/∂z = 0: DReG's guide gradient is 0 on every draw (the
    # property of Roeder et al.'s "sticking the landing", which DReG is at k = 1); the standard one
    # keeps the score term, zero only in expectation
    vae, x, _, gain, variance = ppca()
    set_encoder(vae, gain, variance)
    encoder = list(vae.encoder.parameters())
    for gradient, vanishes in (("dreg", True), ("standard", False)):
        loss = with_seed(4, IWAE(num_particles=k, gradient=gradient), vae.model, vae.guide, x)
        norm = torch.cat([g.flatten() for g in torch.autograd.grad(loss, encoder)]).norm().item()
        # float32 rounding of ∂log w/∂z ≈ 0 summed over 16 points; the score term is O(1) per point
        assert (norm < 1e-3) if vanishes else (norm > 1.0), (gradient, norm)


def gradient_draws(vae: VAE, x: torch.Tensor, gradient: str, k: int, draws: int, beta: float = 1.0):
    """(draws, parameters) gradients of the guide's parameters (encoder and posterior, a flow's
    included) and of the decoder's, draw r from seed r."""
    objective = IWAE(num_particles=k, gradient=gradient)
    guide, decoder = [*vae.encoder.parameters(), *vae.posterior.parameters()], list(vae.decoder.parameters())
    guide_draws, decoder_draws = [], []
    for seed in range(draws):
        loss = with_seed(seed, objective, vae.model, vae.guide, x, beta)
        gradients = torch.autograd.grad(loss, guide + decoder)
        guide_draws.append(torch.cat([g.flatten() for g in gradients[:len(guide)]]))
        decoder_draws.append(torch.cat([g.flatten() for g in gradients[len(guide):]]))
    return torch.stack(guide_draws), torch.stack(decoder_draws)


def paired_z_scores(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per parameter, the mean of the paired differences over its standard error; parameters that
    agree on every draw (a flow's masked weights, with no gradient in either) are left out."""
    difference = first - second
    difference = difference[:, difference.std(0) > 0]
    return difference.mean(0) / (difference.std(0) / math.sqrt(len(difference)))


def test_dreg_has_the_standard_expectation_and_less_guide_variance(trained):
    vae, x = trained
    draws = 200
    standard_guide, standard_decoder = gradient_draws(vae, x, "standard", k=10, draws=draws)
    dreg_guide, dreg_decoder = gradient_draws(vae, x, "dreg", k=10, draws=draws)
    # the model's gradient is Σ_j w̃_j ∇θ log w_j in both: equal on the same draws
    torch.testing.assert_close(dreg_decoder, standard_decoder)
    # the guide's: different per draw, the same on average. Paired over the same draws (measured:
    # mean z² 0.65, max |z| 1.9 over 212 parameters; dropping the second w̃ factor gives mean z² 123)
    z = paired_z_scores(standard_guide, dreg_guide)
    assert (z**2).mean() < 2 and z.abs().max() < 4.5, z
    # measured: summed variance 408 (standard) against 32 (DReG)
    standard_variance, dreg_variance = standard_guide.var(0).sum(), dreg_guide.var(0).sum()
    assert dreg_variance < 0.25 * standard_variance, (standard_variance, dreg_variance)


def test_dreg_leaves_the_gradient_of_the_beta_term_standard(trained):
    vae, x = trained
    # same draws: β's contribution (β - 1)·KL to the gradient is the standard one under either estimator
    beta_term = {}
    for gradient in ("standard", "dreg"):
        at_beta = gradient_draws(vae, x, gradient, k=5, draws=1, beta=0.3)
        at_one = gradient_draws(vae, x, gradient, k=5, draws=1, beta=1.0)
        beta_term[gradient] = [b - a for b, a in zip(at_beta, at_one)]
    for standard, dreg in zip(beta_term["standard"], beta_term["dreg"]):
        torch.testing.assert_close(dreg, standard, rtol=1e-4, atol=1e-4)  # differences of O(1) gradients


def test_dreg_has_the_standard_expectation_with_a_flow_posterior():
    vae, x = small_vae(InverseAutoregressiveFlow(LATENT_DIM)), binary_data(8)
    draws = 200
    standard_guide, _ = gradient_draws(vae, x, "standard", k=5, draws=draws)
    dreg_guide, _ = gradient_draws(vae, x, "dreg", k=5, draws=draws)
    # measured: mean z² 0.60, max |z| 1.9 over 272 parameters; reading log q off the flow's cached
    # noise (so that the pathwise term bypasses the hook on z) gives mean z² 95
    z = paired_z_scores(standard_guide, dreg_guide)
    assert (z**2).mean() < 2 and z.abs().max() < 4.5, z


# configuration and model errors


def test_registered_with_its_options():
    assert OBJECTIVES.get("iwae") is IWAE
    assert set(OBJECTIVES.options("iwae")) == {"num_particles", "gradient"}
    assert IWAE.bound == "iwae"


@pytest.mark.parametrize("options, option", [
    ({"num_particles": 0}, "num_particles"), ({"gradient": "drep"}, "gradient"),
])
def test_constructor_errors_name_the_option(options, option):
    with pytest.raises(ConfigError, match=f"^{option}: "):
        IWAE(**options)


def test_global_latent_is_refused():
    def model(x):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(shift, 1.0), obs=x)

    def guide(x):
        pyro.sample("shift", dist.Normal(x.mean(), 1.0))

    with pytest.raises(EvaluationError, match="outside the 'data' plate"):
        IWAE()(model, guide, torch.zeros(4))


def test_non_reparameterized_latent_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(torch.sigmoid(x)))

    with pytest.raises(EvaluationError, match="'z'.*rsample"):
        IWAE(gradient="dreg")(model, guide, torch.zeros(4))


# training


@pytest.mark.parametrize("gradient", ["standard", "dreg"])
def test_svi_lowers_the_loss(gradient):
    vae, x = small_vae(), binary_data(32)
    objective = IWAE(num_particles=5, gradient=gradient)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), loss=objective,
              loss_and_grads=objective.loss_and_grads)
    losses = [svi.step(x) / len(x) for _ in range(150)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    # nats per datapoint; measured: 5.54 -> 3.73 (standard), 5.54 -> 3.70 (dreg)
    assert last < first - 1.0, (first, last)
