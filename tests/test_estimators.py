"""The on-device estimators against Pyro's own: the same loss value and the same gradients on the
same draws, without reading a number off the device."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ppl_vae.build import build_vae
from ppl_vae.config import ModelConfig, part
from ppl_vae.objectives.estimators import DeviceTraceELBO, DeviceTraceMeanFieldELBO
from ppl_vae.objectives.traces import elbo_terms

DATA_DIM, LATENT_DIM, BATCH = 12, 3, 7
PAIRS = [(Trace_ELBO, DeviceTraceELBO), (TraceMeanField_ELBO, DeviceTraceMeanFieldELBO)]


@pytest.fixture
def vae_and_data():
    config = ModelConfig(latent_dim=LATENT_DIM, encoder=part("mlp", hidden_sizes=[16]),
                         decoder=part("mlp", hidden_sizes=[16]))
    return build_vae(config, DATA_DIM), torch.bernoulli(torch.full((BATCH, DATA_DIM), 0.3))


def loss_and_grads(elbo, model, guide, parameters, *args, seed=3, **kwargs):
    """The loss and its gradients with a fixed RNG state (every call draws the same samples)."""
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide, *args, **kwargs)
    return loss.detach(), torch.autograd.grad(loss, parameters, allow_unused=True)


def assert_same(pyro_elbo, ours, model, guide, parameters, *args, **kwargs):
    expected_loss, expected_grads = loss_and_grads(pyro_elbo, model, guide, parameters, *args, **kwargs)
    loss, grads = loss_and_grads(ours, model, guide, parameters, *args, **kwargs)
    torch.testing.assert_close(loss, torch.as_tensor(expected_loss, dtype=loss.dtype))
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("pyro_class, our_class", PAIRS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("num_particles", [1, 3])
def test_same_loss_and_gradients_as_pyro(vae_and_data, pyro_class, our_class, beta, num_particles):
    vae, x = vae_and_data
    options = {"num_particles": num_particles, "vectorize_particles": num_particles > 1}
    assert_same(pyro_class(**options), our_class(**options), vae.model, vae.guide, list(vae.parameters()), x,
                kl_weight=beta)


def test_score_function_terms_as_pyro():
    """A discrete latent has no rsample: Trace_ELBO's surrogate adds log r times the score, whose
    value is not the loss's; ours must give Pyro's value and Pyro's gradient."""
    logits = torch.tensor([0.3, -0.2], requires_grad=True)
    loc = torch.tensor([0.5, -1.0], requires_grad=True)
    x = torch.tensor([1.2, -0.4, 0.3])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(logits=torch.zeros(())))
            pyro.sample("x", dist.Normal(loc[z.long()], 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=logits[:1].expand(x.shape[0])))

    assert_same(Trace_ELBO(), DeviceTraceELBO(), model, guide, [logits, loc], x)


def test_auxiliary_guide_site_as_pyro():
    scale = torch.tensor(0.7, requires_grad=True)

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        pyro.sample("u", dist.Normal(0.0, scale), infer={"is_auxiliary": True})
        pyro.sample("z", dist.Normal(0.2, scale))

    assert_same(TraceMeanField_ELBO(), DeviceTraceMeanFieldELBO(), model, guide, [scale])


@pytest.mark.parametrize("our_class", [DeviceTraceELBO, DeviceTraceMeanFieldELBO])
def test_no_value_is_read_off_the_device(vae_and_data, host_reads, our_class):
    vae, x = vae_and_data
    elbo = our_class()
    with pyro.validation_enabled(False), host_reads() as reads:
        elbo.differentiable_loss(vae.model, vae.guide, x).backward()
    assert reads == []
    with pyro.validation_enabled(False), host_reads() as reads:  # what ours avoids
        Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).backward()
    assert "item" in reads


def test_meanfield_terms_reuse_its_closed_form_kl(vae_and_data):
    """The closed-form KL the loss computed is the one the terms report: KL(N(mu, s^2) || N(0, 1))."""
    vae, x = vae_and_data
    elbo = DeviceTraceMeanFieldELBO()
    elbo.differentiable_loss(vae.model, vae.guide, x, kl_weight=0.5)
    model_trace, guide_trace = elbo.last_traces
    posterior = vae.encode(x)
    loc, scale = posterior.base_dist.loc, posterior.base_dist.scale
    closed_form = 0.5 * (loc**2 + scale**2 - 1 - torch.log(scale**2)).sum(-1)  # unscaled by β
    torch.testing.assert_close(guide_trace.nodes["z"]["analytic_kl"], closed_form)
    torch.testing.assert_close(elbo_terms(model_trace, guide_trace, analytic_kl=True)[1], closed_form)
