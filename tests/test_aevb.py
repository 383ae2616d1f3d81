"""The pure helpers of the AEVB reproductions: the log-spaced evaluation stages, and the weight
decay that stands for AEVB's N(0, I) prior on the parameters."""

import pytest

from ppl_vae.errors import ConfigError
from ppl_vae.experiments.aevb_lower_bound import BATCH_SIZE, aevb_config, log_spaced_epochs
from ppl_vae.experiments.runner import Output


@pytest.mark.parametrize("last, count", [(1, 1), (1, 6), (3, 6), (100, 6), (2000, 8), (40, 8)])
def test_log_spaced_epochs_run_from_one_to_last_in_increasing_order(last, count):
    stages = log_spaced_epochs(last, count)
    assert stages[0] == (1 if count > 1 else last) and stages[-1] == last
    assert stages == sorted(set(stages)) and len(stages) <= count


def test_log_spaced_epochs_are_evenly_spaced_on_a_log_axis():
    stages = log_spaced_epochs(10_000, 5)
    assert stages == [1, 10, 100, 1000, 10_000]
    exact = [100 ** (stage / 5) for stage in range(6)]  # 1, 2.5, 6.3, 15.8, 39.8, 100
    assert all(abs(stage - value) <= 0.5 for stage, value in zip(log_spaced_epochs(100, 6), exact))


@pytest.mark.parametrize("last, count", [(0, 3), (5, 0)])
def test_log_spaced_epochs_refuse_an_empty_budget(last, count):
    with pytest.raises(ConfigError, match="at least"):
        log_spaced_epochs(last, count)


def test_aevb_config_adds_the_weight_decay_of_a_standard_normal_prior_on_the_weights_to_adagrad_only(tmp_path):
    output = Output(tmp_path, device="cpu", progress=False)
    adagrad = aevb_config(output, "digits", 3, 20, "bernoulli", "adagrad", train_size=500)
    assert adagrad.optim.name == "adagrad" and adagrad.optim.lr == 0.01
    assert adagrad.optim.weight_decay == pytest.approx(BATCH_SIZE / 500)  # M/N: log p(θ) per minibatch of M
    adam = aevb_config(output, "digits", 3, 20, "bernoulli", "adam", train_size=500)
    assert adam.optim.name == "adam" and adam.optim.weight_decay == 0.0


def test_aevb_config_refuses_an_optimizer_aevb_did_not_use(tmp_path):
    with pytest.raises(ConfigError, match="adagrad, adam"):
        aevb_config(Output(tmp_path, device="cpu"), "digits", 3, 20, "bernoulli", "sgd")
