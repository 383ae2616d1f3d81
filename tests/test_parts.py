"""Every registered part: shapes, finite log-probabilities, a training step that lowers the loss,
the config round trip and the support check; richer posteriors against a correlated exact posterior."""

import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
import yaml
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from ppl_vae.config import from_dict, to_dict
from ppl_vae.data import Dataset, load_dataset
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation import evaluate_elbo, log_likelihood
from ppl_vae.objectives.traces import trace_pair
from ppl_vae.parts.posteriors import POSTERIORS
from ppl_vae.parts.likelihoods import LIKELIHOODS
from ppl_vae.models.vae import VAE
from ppl_vae.parts.nets import NETS
from ppl_vae.parts.priors import PRIORS
from ppl_vae.build import build_vae, check, check_support
from ppl_vae.runs import fit

LATENT_DIM = 3
# small options for parts whose defaults are sized for MNIST
SMALL = {
    "mixture": {"num_components": 3},
    "vamp": {"num_pseudo": 5},
    "flow": {"num_flows": 2, "hidden_sizes": [16]},
    "iaf": {"num_flows": 2},
}
# the role each network plays in the test VAE (the other role is the default MLP)
NET_ROLES = {"mlp": "encoder", "conv_encoder": "encoder", "conv_decoder": "decoder"}
CASES = (
    [("prior", name) for name in PRIORS.names()]
    + [("posterior", name) for name in POSTERIORS.names()]
    + [("likelihood", name) for name in LIKELIHOODS.names()]
    + [(NET_ROLES[name], name) for name in NETS.names()]
)
# one value outside each likelihood's support
OUTSIDE = {
    "bernoulli": 1.5,
    "continuous_bernoulli": -0.1,
    "gaussian": math.nan,
    "gaussian_per_pixel": math.nan,
    "laplace": math.nan,
    "beta": 0.0,
    "discretized_logistic": 0.5 / 255,
}


def model_values(role: str, name: str) -> dict:
    return {"latent_dim": LATENT_DIM, role: {"name": name, **SMALL.get(name, {})}}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    """The 8x8 digits as 8-bit values strictly inside (0, 1): in the support of every likelihood."""
    dataset = load_dataset("digits")
    quantized = (dataset.train[:64] * 255).round().clamp(1, 254) / 255
    return Dataset("digits-8bit", train=quantized, test=quantized[:16], image_shape=dataset.image_shape)


def build(role: str, name: str, dataset: Dataset) -> VAE:
    config = from_dict({"model": model_values(role, name)})
    return build_vae(config.model, dataset.data_dim, dataset.image_shape)


def test_every_registered_part_is_tested():
    assert set(NET_ROLES) == set(NETS.names())
    assert set(OUTSIDE) == set(LIKELIHOODS.names())


@pytest.mark.parametrize("role,name", CASES)
def test_shapes_and_finite_log_probabilities(role, name, digits):
    vae = build(role, name, digits)
    x = digits.train[:10]
    model_trace, guide_trace = trace_pair(vae.model, vae.guide, x)
    assert guide_trace.nodes["z"]["value"].shape == (10, LATENT_DIM)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    for trace, site in ((model_trace, "z"), (model_trace, "x"), (guide_trace, "z")):
        log_prob = trace.nodes[site]["log_prob"]
        assert log_prob.shape == (10,) and torch.isfinite(log_prob).all(), (site, log_prob)
    assert vae.reconstruct(x).shape == x.shape
    assert vae.sample(4).shape == (4, digits.data_dim)
    assert vae.latent_dim == LATENT_DIM
    assert torch.isfinite(log_likelihood(vae.model, vae.guide, x, num_samples=7)).all()


@pytest.mark.parametrize("role,name", CASES)
@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO])
def test_training_steps_lower_the_loss(role, name, elbo, digits):
    vae = build(role, name, digits)
    x = digits.train

    def loss() -> float:
        pyro.set_rng_seed(1)  # the same noise for both evaluations
        return -evaluate_elbo(vae.model, vae.guide, x, num_particles=4)["elbo"]

    before = loss()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), elbo(max_plate_nesting=1))
    for _ in range(15):
        assert math.isfinite(svi.step(x))
    assert loss() < before


@pytest.mark.parametrize("role,name", CASES)
def test_config_round_trip(role, name, digits, tmp_path):
    text = yaml.safe_dump({"model": model_values(role, name)})
    config = from_dict(yaml.safe_load(text))
    vae = build_vae(config.model, digits.data_dim, digits.image_shape)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))
    again = from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert to_dict(again) == to_dict(config)
    spec = getattr(again.model, role)
    assert (spec.name, spec.options) == (name, SMALL.get(name, {}))
    rebuilt = build_vae(again.model, digits.data_dim, digits.image_shape)
    rebuilt.load_state_dict(vae.state_dict())
    x = digits.test
    pyro.set_rng_seed(2)
    first = evaluate_elbo(vae.model, vae.guide, x)
    pyro.set_rng_seed(2)
    assert evaluate_elbo(rebuilt.model, rebuilt.guide, x) == pytest.approx(first)


@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_support_check_rejects_data_outside_the_likelihood_support(name, digits):
    vae = build("likelihood", name, digits)
    check_support(vae, digits)  # inside: accepted
    bad = digits.train.clone()
    bad[3, 5] = OUTSIDE[name]
    with pytest.raises(ConfigError, match=f"model.likelihood: .*needs data in {re.escape(str(vae.likelihood.support))}"):
        check_support(vae, Dataset("bad", train=bad, test=digits.test, image_shape=digits.image_shape))


@pytest.mark.parametrize("likelihood", ["beta", "discretized_logistic"])
def test_fit_refuses_data_outside_the_support_before_training(likelihood):
    # the 8x8 digits are multiples of 1/16 with exact 0s: outside (0, 1) and off the 8-bit grid
    with pytest.raises(ConfigError, match="model.likelihood: .* 'digits' has values outside it"):
        fit(from_dict({"model": {"likelihood": likelihood}, "train": {"progress": False}}))


def test_eight_bit_support_and_discretized_logistic_mass():
    likelihood = LIKELIHOODS.get("discretized_logistic")(3)
    grid = torch.arange(256.0) / 255
    assert likelihood.support.check(grid).all()
    assert not likelihood.support.check(grid[1:] - 0.3 / 255).any()
    params = torch.tensor([[0.0, 3.0, -2.0, -1.0, -4.0, 0.5]])
    probs = likelihood(params).base_dist.log_prob(grid.reshape(-1, 1, 1)).exp()
    torch.testing.assert_close(probs.sum(0), torch.ones(1, 3))  # a probability mass over the 256 levels


def test_unknown_part_names_list_the_registered_ones():
    with pytest.raises(ConfigError, match="model.prior: unknown prior 'vampp'. Did you mean 'vamp'.*normal"):
        check(from_dict({"model": {"prior": "vampp"}}))
    with pytest.raises(ConfigError, match="model.prior.num_pseudo_inputs: .*Did you mean 'num_pseudo'"):
        check(from_dict({"model": {"prior": {"name": "vamp", "num_pseudo_inputs": 5}}}))


def test_vamp_prior_is_the_mean_posterior_at_its_pseudo_inputs(digits):
    vae = build("prior", "vamp", digits)
    z = torch.randn(7, LATENT_DIM)
    components = vae.encode(vae.prior.pseudo_inputs)
    expected = torch.logsumexp(components.log_prob(z.unsqueeze(1)), dim=1) - math.log(5)
    torch.testing.assert_close(vae.prior().log_prob(z), expected)
    # the encoder's weights are registered once (by the guide), the pseudo-inputs by the prior
    assert [n for n, _ in vae.prior.named_parameters()] == ["pseudo_inputs"]


def test_conv_nets_need_an_image_shape():
    config = from_dict({"model": {"encoder": "conv_encoder"}})
    with pytest.raises(ConfigError, match="model.encoder.image_shape"):
        build_vae(config.model, 64)
    with pytest.raises(ConfigError, match="multiples of 4"):
        build_vae(config.model, 60, (6, 10))


# -- richer posteriors on a posterior correlated by construction ---------------------------------

SIGMA = 0.3
W = torch.tensor([[1.0, 1.0], [0.0, 0.3]])


def linear_gaussian_vae(posterior: str) -> VAE:
    """x | z ~ N(W z, SIGMA^2 I), z ~ N(0, I) in 2-D: the exact posterior has precision
    I + W^T W / SIGMA^2, whose correlation is -0.83; the decoder is W (fixed), the encoder linear."""
    config = from_dict({"model": {
        "latent_dim": 2, "prior": "normal", "posterior": {"name": posterior, **SMALL.get(posterior, {})},
        "encoder": {"name": "mlp", "hidden_sizes": []},
        "likelihood": {"name": "gaussian", "sigma": SIGMA, "squash": "none"},
    }})
    vae = build_vae(config.model, 2)
    vae.decoder = nn.Linear(2, 2, bias=False)
    vae.decoder.weight.data = W.clone()
    return vae


def test_correlated_posteriors_beat_the_diagonal_one():
    precision = torch.eye(2) + W.T @ W / SIGMA**2
    # the best diagonal Normal falls short of log p(x) by KL(q || posterior) = 1/2 log(prod_i Λ_ii / det Λ)
    mean_field_gap = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)).item()
    assert mean_field_gap > 0.6
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(200, 2, generator=generator)
    x = z @ W.T + SIGMA * torch.randn(200, 2, generator=generator)
    log_px = dist.MultivariateNormal(torch.zeros(2), W @ W.T + SIGMA**2 * torch.eye(2)).log_prob(x).mean().item()

    elbos, estimates = {}, {}
    for posterior in ("diagonal_normal", "full_normal", "lowrank_normal", "iaf"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = linear_gaussian_vae(posterior)
        optimizer = torch.optim.Adam([*vae.encoder.parameters(), *vae.posterior.parameters()], lr=0.03)
        elbo = Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1)
        for _ in range(300):
            optimizer.zero_grad()
            (elbo.differentiable_loss(vae.model, vae.guide, x) / len(x)).backward()
            optimizer.step()
        elbos[posterior] = evaluate_elbo(vae.model, vae.guide, x, num_particles=200)["elbo"]
        estimates[posterior] = log_likelihood(vae.model, vae.guide, x, num_samples=500, batch_size=200).mean().item()
    assert elbos["diagonal_normal"] < log_px - 0.9 * mean_field_gap
    for posterior in ("full_normal", "lowrank_normal", "iaf"):
        assert elbos["diagonal_normal"] + 0.5 * mean_field_gap < elbos[posterior] < log_px + 0.05, elbos
    assert elbos["full_normal"] > log_px - 0.05
    # importance sampling closes the gap: fully with a proposal near the posterior
    assert elbos["diagonal_normal"] + 0.5 * mean_field_gap < estimates["diagonal_normal"] < log_px + 0.02
    for posterior in ("full_normal", "lowrank_normal", "iaf"):
        assert estimates[posterior] == pytest.approx(log_px, abs=0.02)
