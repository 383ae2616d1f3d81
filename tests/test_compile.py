"""``train.compile``: the objective's loss as TorchScript graphs gives the same loss, terms and
gradients as the eager objective on the same draws, and falls back to eager (with a warning) when
it cannot or should not compile."""

import pyro
import pytest
import torch

from ppl_vae.build import build
from ppl_vae.config import from_dict
from ppl_vae.objectives import OBJECTIVES
from ppl_vae.objectives.compiled import MAX_COMPILED_GRAPHS
from ppl_vae.runs import fit


def digits_vae(objective: str | dict = "elbo", compile: bool = False):
    spec = {"name": objective} if isinstance(objective, str) else objective
    config = from_dict({"device": "cpu", "objective": spec, "train": {"compile": compile},
                        "model": {"latent_dim": 4}})
    return build(config)


def loss_terms_and_gradients(objective, vae, x, kl_weight=1.0):
    pyro.set_rng_seed(3)
    loss = objective.loss_and_grads(vae.model, vae.guide, x, kl_weight=kl_weight)
    gradients = {name: parameter.grad.clone() for name, parameter in vae.named_parameters()}
    vae.zero_grad(set_to_none=True)
    return loss.detach(), {name: value.clone() for name, value in objective.terms().items()}, gradients


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no fallback: the compiled path is the one compared
@pytest.mark.parametrize("name", ["elbo", "meanfield", "iwae"])
def test_compiled_loss_terms_and_gradients_equal_the_eager_ones(name):
    setup = digits_vae(name)
    x = setup.dataset.train[:64]
    eager, compiled = OBJECTIVES.get(name)(), OBJECTIVES.get(name)()
    assert compiled.compile()
    for kl_weight in (1.0, 0.5):
        loss_terms_and_gradients(compiled, setup.vae, x, kl_weight)  # traces the graph (drawing twice)
        expected = loss_terms_and_gradients(eager, setup.vae, x, kl_weight)
        loss, terms, gradients = loss_terms_and_gradients(compiled, setup.vae, x, kl_weight)
        torch.testing.assert_close(loss, expected[0], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(terms, expected[1], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(gradients, expected[2], rtol=1e-4, atol=1e-5)
    assert compiled.compiled is not None and len(compiled.compiled) == 2  # one graph per β


def test_too_many_graphs_fall_back_to_eager_with_a_warning():
    setup = digits_vae("elbo")
    x = setup.dataset.train[:32]
    eager, compiled = OBJECTIVES.get("elbo")(), OBJECTIVES.get("elbo")()
    compiled.compile()
    for step in range(MAX_COMPILED_GRAPHS):
        loss_terms_and_gradients(compiled, setup.vae, x, kl_weight=1.0 / (step + 1))
    with pytest.warns(RuntimeWarning, match="runs eagerly from now on: more than 4 batch shapes"):
        loss, terms, _ = loss_terms_and_gradients(compiled, setup.vae, x, kl_weight=0.1)
    expected, expected_terms, _ = loss_terms_and_gradients(eager, setup.vae, x, kl_weight=0.1)
    assert compiled.compiled is None
    torch.testing.assert_close((loss, terms), (expected, expected_terms))  # the same draws: eager on both sides


@pytest.mark.parametrize("objective", [{"name": "geco", "tolerance": 0.1}, {"name": "iwae", "gradient": "dreg"}])
def test_objective_without_a_compiled_loss_warns_and_trains_eagerly(objective):
    with pytest.warns(RuntimeWarning, match=f"objective '{objective['name']}' has no compiled loss"):
        setup = digits_vae(objective, compile=True)
    assert setup.objective.compile() is False
    assert not setup.objective.needs_parameter_sites()  # eager: the training step keeps them out of the traces


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no fallback
def test_training_with_compile_runs_through_fit():
    config = from_dict({"device": "cpu", "train": {"epochs": 1, "progress": False, "compile": True},
                        "model": {"latent_dim": 4}, "data": {"batch_size": 128}})
    run = fit(config)
    assert len(run.objective.compiled) == 2  # 1500 digits: full batches of 128 and the last one of 92
    assert -200 < run.history[0]["train_elbo"] < 0
