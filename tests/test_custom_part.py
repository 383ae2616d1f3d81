"""A user registers a new part from a notebook (the README's worked example) and trains with it."""

import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.distributions import constraints

from ppl_vae.build import check
from ppl_vae.config import from_dict
from ppl_vae.errors import ConfigError
from ppl_vae.parts.likelihoods import LIKELIHOODS
from ppl_vae.runs import fit


@pytest.fixture
def registry_snapshot(monkeypatch):
    """Registrations made by a test disappear after it."""
    monkeypatch.setattr(LIKELIHOODS, "_factories", dict(LIKELIHOODS._factories))


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
