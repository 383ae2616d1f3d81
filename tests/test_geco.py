"""GECO (Taming VAEs, Algorithm 1): the loss by hand, the λ update, the constraint met, resume."""

import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import Normal

from ppl_vae.config import ModelConfig, from_dict, part
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation import marginal_kl
from ppl_vae.objectives.geco import GECO, RELATIVE_RATE
from ppl_vae.build import build_vae, check
from ppl_vae.runs import fit

DATA_DIM, LATENT_DIM, BATCH = 12, 3, 7
QUICK = {"train": {"epochs": 4, "eval_every": 2, "checkpoint_every": 2, "progress": False},
         "optim": {"lr": 0.003}}


def geco_config(epochs, **geco):
    return from_dict({**QUICK, "train": {**QUICK["train"], "epochs": epochs},
                      "objective": {"name": "geco", "wraps": "meanfield", **geco}})


@pytest.fixture
def vae_and_data():
    config = ModelConfig(latent_dim=LATENT_DIM, encoder=part("mlp", hidden_sizes=[16]),
                         decoder=part("mlp", hidden_sizes=[16]))
    vae = build_vae(config, DATA_DIM)
    x = torch.bernoulli(torch.full((BATCH, DATA_DIM), 0.3))
    return vae, x


def by_hand(vae, x, z, tolerance, analytic_kl):
    """Per-datapoint KL(q(z|x) || N(0, I)) and ||x - sigmoid(decoder(z))||² - D·κ², from the nets."""
    loc, log_var = vae.encoder(x).split(LATENT_DIM, dim=-1)
    scale = torch.exp(0.5 * log_var)
    if analytic_kl:
        kl = 0.5 * (loc**2 + scale**2 - 1 - log_var).sum(-1)
    else:
        kl = (Normal(loc, scale).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)
    constraint = ((x - torch.sigmoid(vae.decoder(z))) ** 2).sum(-1) - DATA_DIM * tolerance**2
    return kl, constraint


@pytest.mark.parametrize("wraps, analytic", [("elbo", False), ("meanfield", True)])
def test_loss_is_kl_plus_lambda_times_constraint_by_hand(vae_and_data, wraps, analytic):
    vae, x = vae_and_data
    geco = GECO(wraps=wraps, tolerance=0.2, lambda_init=3.7, alpha=0.9, rate=0.05)
    model = poutine.trace(vae.model)  # to read back the z the guide drew
    pyro.set_rng_seed(3)
    loss = geco(model, vae.guide, x)
    z = model.trace.nodes["z"]["value"]
    kl, constraint = by_hand(vae, x, z, 0.2, analytic)
    torch.testing.assert_close(loss, kl.sum() + 3.7 * constraint.sum())
    assert geco.c_ma == pytest.approx(constraint.mean().item(), rel=1e-5)  # the first batch initialises C_ma
    assert geco.lam == pytest.approx(3.7 * math.exp(0.05 * geco.c_ma))

    # second step: the value uses the moving average, the gradient the current batch (straight-through)
    lam, c_ma = geco.lam, geco.c_ma
    loss = geco(model, vae.guide, x)
    z = model.trace.nodes["z"]["value"]
    kl, constraint = by_hand(vae, x, z, 0.2, analytic)
    expected_c_ma = 0.9 * c_ma + 0.1 * constraint.mean().item()
    torch.testing.assert_close(loss, kl.sum() + lam * BATCH * torch.tensor(expected_c_ma), rtol=1e-5, atol=1e-4)
    weight = vae.decoder[0].weight
    (gradient,) = torch.autograd.grad(loss, weight)
    (expected,) = torch.autograd.grad(kl.sum() + lam * constraint.sum(), weight)
    torch.testing.assert_close(gradient, expected)


def test_nll_constraint_is_minus_log_likelihood_minus_tolerance(vae_and_data):
    vae, x = vae_and_data
    geco = GECO(wraps="meanfield", constraint="nll", tolerance=5.0)
    model = poutine.trace(vae.model)
    geco(model, vae.guide, x)
    z = model.trace.nodes["z"]["value"]
    logits = vae.decoder(z)
    log_likelihood = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    assert geco.c_ma == pytest.approx((-log_likelihood - 5.0).mean().item(), rel=1e-5)


def test_satisfied_constraint_lowers_lambda_by_the_update_rule(vae_and_data):
    vae, x = vae_and_data
    # pixels and means both lie in [0, 1]: a tolerance of 1 per pixel is met by any decoder
    geco = GECO(wraps="meanfield", tolerance=1.0, rate=0.01, lambda_init=2.0, warmup=3)
    optimizer = pyro.optim.Adam({"lr": 1e-3})
    svi = pyro.infer.SVI(vae.model, vae.guide, optimizer, geco)
    for _ in range(20):
        svi.step(x)
    lambdas, c_ma = geco.history["lambda"], geco.history["c_ma"]
    assert all(value < 0 for value in c_ma)
    assert lambdas[:4] == [2.0] * 4  # warm-up: λ holds for 3 steps
    assert all(later < earlier for earlier, later in zip(lambdas[3:], lambdas[4:]))
    expected = 2.0 * math.exp(0.01 * sum(c_ma[3:]))  # λ <- λ·exp(ν·C_ma) after each step past the warm-up
    assert geco.lam == pytest.approx(expected)
    before = geco.state_dict()
    svi.evaluate_loss(x)  # evaluating under no_grad leaves the state alone
    assert geco.state_dict() == before


def test_lambda_is_clamped(vae_and_data):
    vae, x = vae_and_data
    geco = GECO(wraps="meanfield", tolerance=1.0, rate=100.0, lambda_min=0.5)
    for _ in range(3):
        geco(vae.model, vae.guide, x)
    assert geco.lam == 0.5
    (warning,) = geco.warnings()  # the constraint is met: only the clamp is reported
    assert "λ ended at its clamp lambda_min=0.5 (at it for the last 2 of 3 steps)" in warning


def test_a_huge_violation_clamps_lambda_at_its_maximum_without_overflow(vae_and_data):
    vae, x = vae_and_data
    geco = GECO(wraps="meanfield", tolerance=1e-3, rate=1e4, lambda_max=1e3)
    for _ in range(3):  # ν·C_ma is about 1e5: exp of it overflows a float
        geco(vae.model, vae.guide, x)
    assert geco.lam == pytest.approx(1e3)
    clamp, unmet = geco.warnings()
    assert "clamp lambda_max=1000" in clamp and "raise objective.tolerance" in clamp
    assert "the constraint is still unmet" in unmet


@pytest.mark.parametrize("wraps", ["elbo", "meanfield"])
def test_a_training_step_reads_nothing_off_the_device(vae_and_data, host_reads, wraps):
    vae, x = vae_and_data
    geco = GECO(wraps=wraps, tolerance=0.2, alpha=0.9, warmup=2)  # ν calibrated on the first step
    geco.loss_and_grads(vae.model, vae.guide, x)
    with pyro.validation_enabled(False), host_reads() as reads:
        for _ in range(3):  # the warm-up's last step, then two λ updates
            geco.loss_and_grads(vae.model, vae.guide, x)
    assert reads == []
    lambdas, c_ma = geco.history["lambda"], geco.history["c_ma"]  # the four steps, read in one go
    assert lambdas[:3] == [1.0, 1.0, 1.0]
    assert geco.lam == pytest.approx(math.exp(geco.rate * sum(c_ma[2:])))  # λ <- λ·exp(ν·C_ma), twice
    assert geco.rate == pytest.approx(RELATIVE_RATE / abs(geco.history["constraint"][0]))


def test_the_state_is_plain_numbers_and_a_loaded_state_steps_on_identically(vae_and_data):
    vae, x = vae_and_data
    geco = GECO(wraps="meanfield", tolerance=0.2, alpha=0.9)
    for _ in range(3):
        geco(vae.model, vae.guide, x)
    state = geco.state_dict()
    assert [type(state[name]) for name in ("lambda", "c_ma", "rate", "step")] == [float, float, float, int]
    assert all(type(value) is float for values in state["history"].values() for value in values)
    assert geco.status() == {"geco_lambda": state["lambda"], "geco_c_ma": state["c_ma"]}
    loaded = GECO(wraps="meanfield", tolerance=0.2, alpha=0.9)
    loaded.load_state_dict(json.loads(json.dumps(state)))  # as objective.json saves it
    assert loaded.state_dict() == state
    for objective in (geco, loaded):
        pyro.set_rng_seed(5)
        objective(vae.model, vae.guide, x)
    assert loaded.state_dict() == geco.state_dict() and loaded.step == 4


def test_constraint_is_met_and_lambda_settles():
    tolerance = 0.25
    run = fit(geco_config(40, tolerance=tolerance, rate=0.01, alpha=0.9))
    history = run.objective.history
    assert max(history["lambda"]) > 3  # the constraint was violated at first: λ rose
    assert run.objective.c_ma < 0.1  # met at the end, within the noise of the average (D·κ² = 4)
    late = history["lambda"][-100:]
    assert max(late) / min(late) < 1.1  # λ has settled
    # independent check on the whole training set: the squared error per image is at the tolerance
    x = run.dataset.train
    with torch.no_grad():
        z = run.vae.encode(x).sample()
        error = ((x - run.vae.decoded_mean(z)) ** 2).sum(-1).mean().item()
    assert error == pytest.approx(x.shape[1] * tolerance**2, rel=0.1)
    assert run.objective.warnings() == [] and run.metrics["warnings"] == []  # a settled run says nothing


def test_geco_state_survives_a_checkpoint_round_trip(tmp_path):
    geco = {"tolerance": 0.25, "rate": 0.01, "alpha": 0.9}
    straight = fit(geco_config(4, **geco))
    fit(geco_config(2, **geco), tmp_path / "run")
    resumed = fit(geco_config(4, **geco), tmp_path / "run", resume=True)
    assert resumed.objective.state_dict() == straight.objective.state_dict()
    assert len(resumed.objective.history["lambda"]) == resumed.metrics["steps"]
    saved = json.loads((tmp_path / "run" / "objective.json").read_text())["history"]
    assert saved == straight.objective.history
    assert [r["geco_lambda"] for r in resumed.history] == [r["geco_lambda"] for r in straight.history]
    assert (tmp_path / "run" / "training_curves.png").is_file()


@pytest.mark.parametrize("objective, key", [
    ({"name": "geco"}, "objective.tolerance"),
    ({"name": "geco", "tolerance": 0.1, "alpha": 1.0}, "objective.alpha"),
    ({"name": "geco", "tolerance": 0.1, "constraint": "mse"}, "objective.constraint"),
    ({"name": "geco", "tolerance": 0.1, "lambda_min": 2.0}, "objective.lambda_init"),
    ({"name": "geco", "tolerance": 0.1, "warm_up": 5}, "objective.warm_up"),
    ({"name": "geco", "tolerance": 0.1, "wraps": "iwae"}, "objective.wraps"),
    ({"name": "geco", "tolerance": 0.1, "beta": {"name": "linear"}}, "objective.beta"),
])
def test_config_errors_name_the_key(objective, key):
    with pytest.raises(ConfigError, match=key):
        check(from_dict({"objective": objective}))


@pytest.mark.parametrize("damage", [{"lambda": "1"}, {"lambda": 1e9}, {"step": 2}, {"c_ma": [1.0]}, {"rate": -1.0},
                                    {"history": {"lambda": []}}])
def test_a_damaged_state_is_refused(damage):
    geco = GECO(tolerance=0.1)
    state = {"lambda": 1.0, "c_ma": None, "rate": None, "step": 0,
             "history": {name: [] for name in ("lambda", "c_ma", "constraint", "kl")}}
    geco.load_state_dict(state)
    with pytest.raises((TypeError, ValueError)):
        geco.load_state_dict({**state, **damage})


def test_marginal_kl_of_identical_posteriors_is_their_kl(vae_and_data):
    vae, x = vae_and_data
    copies = x[:1].expand(4000, DATA_DIM)  # the aggregate posterior of one repeated x is q(z|x) itself
    posterior = vae.encode(x[:1])
    exact = torch.distributions.kl_divergence(posterior, vae.prior()).item()
    assert marginal_kl(vae.model, vae.guide, copies) == pytest.approx(exact, abs=0.1)
