"""A user registers a new part, or a new objective, from a notebook (the README's worked examples)
and trains with it."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn
from torch.distributions import constraints

from ppl_vae.build import check
from ppl_vae.config import from_dict
from ppl_vae.errors import ConfigError
from ppl_vae.objectives import OBJECTIVES, Objective
from ppl_vae.objectives.traces import elbo_terms
from ppl_vae.parts.likelihoods import LIKELIHOODS
from ppl_vae.runs import fit


@pytest.fixture
def registry_snapshot(monkeypatch):
    """Registrations made by a test disappear after it."""
    monkeypatch.setattr(LIKELIHOODS, "_factories", dict(LIKELIHOODS._factories))
    monkeypatch.setattr(OBJECTIVES, "_factories", dict(OBJECTIVES._factories))


def test_a_part_registered_from_a_notebook_trains(registry_snapshot):
    @LIKELIHOODS.register("student_t")
    class StudentT(nn.Module):
        """p(x|z) = prod_i StudentT(x_i; df, mu_i(z), scale): a Gaussian with heavy tails."""

        support = constraints.real

        def __init__(self, data_dim: int, *, df: float = 3.0, scale: float = 0.1) -> None:
            super().__init__()
            self.num_params, self.df, self.scale = data_dim, df, scale

        def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
            return dist.StudentT(self.df, self.mean(params), self.scale).to_event(1)

        def mean(self, params: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(params)

    config = from_dict({"model": {"likelihood": {"name": "student_t", "df": 4}},
                        "train": {"epochs": 2, "progress": False}})
    run = fit(config)
    assert isinstance(run.vae.likelihood, StudentT) and run.vae.likelihood.df == 4.0
    assert run.history[-1]["train_elbo"] > run.history[0]["train_elbo"]
    with pytest.raises(ConfigError, match="model.likelihood.dof: .*Did you mean 'df'"):
        check(from_dict({"model": {"likelihood": {"name": "student_t", "dof": 4}}}))
    with pytest.raises(ConfigError, match="model.likelihood.df: expected a number"):
        check(from_dict({"model": {"likelihood": {"name": "student_t", "df": "four"}}}))


def test_registrations_do_not_leak_between_tests():
    assert "student_t" not in LIKELIHOODS


def register_free_bits():
    """The README's example objective, as written there."""

    @OBJECTIVES.register("free_bits")
    class FreeBitsELBO(Objective):
        """The ELBO, but a datapoint's KL below `nats` costs nothing ("free bits", Kingma et al. 2016)."""

        def __init__(self, *, nats: float = 0.5) -> None:
            super().__init__()
            self.nats = nats

        def __call__(self, model, guide, *args, **kwargs):
            model, guide = poutine.trace(model), poutine.trace(guide)  # to read this step's terms
            loss = Trace_ELBO().differentiable_loss(model, guide, *args, **kwargs)  # -ELBO, summed over the batch
            reconstruction, kl = elbo_terms(model.trace, guide.trace, analytic_kl=False)  # per datapoint
            self._terms = {"elbo": (reconstruction - kl).sum().detach(), "reconstruction": reconstruction.sum().detach(),
                           "kl": kl.sum().detach()}
            return loss + (self.nats - kl).clamp(min=0).sum()  # the KL term becomes max(KL, nats)

    return FreeBitsELBO


def test_an_objective_registered_from_a_notebook_trains(registry_snapshot):
    free_bits = register_free_bits()
    run = fit(from_dict({"objective": {"name": "free_bits", "nats": 1.0}, "train": {"epochs": 2, "progress": False}}))
    assert isinstance(run.objective, free_bits) and run.objective.nats == 1.0
    assert run.history[-1]["train_elbo"] > run.history[0]["train_elbo"]
    # the same draws: the loss exceeds the ELBO's by exactly Σ max(nats - KL, 0)
    vae, x = run.vae, run.dataset.test[:50]
    pyro.set_rng_seed(4)
    elbo_loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(4)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    _, kl = elbo_terms(model_trace, guide_trace, analytic_kl=False)
    pyro.set_rng_seed(4)
    with torch.no_grad():
        loss = free_bits(nats=1.0)(vae.model, vae.guide, x).item()
    assert loss - elbo_loss == pytest.approx((1.0 - kl).clamp(min=0).sum().item(), rel=1e-4, abs=1e-3)
    with pytest.raises(ConfigError, match="objective.nat: .*Did you mean 'nats'"):
        check(from_dict({"objective": {"name": "free_bits", "nat": 1}}))
