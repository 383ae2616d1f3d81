"""Configs: shipped files load, bad values fail before training with the key named."""

import pytest
import yaml

from ppl_vae.build import check
from ppl_vae.config import Config, apply_overrides, from_dict, load_config, shipped_configs, to_dict
from ppl_vae.errors import ConfigError
from ppl_vae.runs import fit


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_loads_and_round_trips(name):
    config = load_config(name)
    assert from_dict(yaml.safe_load(yaml.safe_dump(to_dict(config)))) == config


def test_defaults_fill_missing_keys():
    assert from_dict({}) == Config()
    assert from_dict({"model": {"latent_dim": 7}}).model.latent_dim == 7


def test_overrides_parse_yaml_values_and_part_options():
    values = apply_overrides({"model": {"likelihood": "gaussian"}},
                             ["model.latent_dim=5", "model.likelihood.sigma=0.2", "optim.lr=1e-2"])
    config = from_dict(values)
    assert config.model.latent_dim == 5
    assert config.model.likelihood.name == "gaussian"
    assert config.model.likelihood.options == {"sigma": 0.2}
    assert config.optim.lr == 0.01


@pytest.mark.parametrize("values, key, hint", [
    ({"model": {"likelihood": "bernouli"}}, "model.likelihood", "Did you mean 'bernoulli'"),
    ({"model": {"prior": {"name": "vampp"}}}, "model.prior", "Registered priors"),
    ({"model": {"latent_dim": -3}}, "model.latent_dim", "must be > 0"),
    ({"model": {"latent_dim": "ten"}}, "model.latent_dim", "expected an integer"),
    ({"model": {"laten_dim": 3}}, "model.laten_dim", "Did you mean 'latent_dim'"),
    ({"optimizer": {}}, "optimizer", "Did you mean 'optim'"),
    ({"optim": {"lr": 0}}, "optim.lr", "must be > 0"),
    ({"optim": {"name": "sgd"}}, "optim.name", "adam, adagrad"),
    ({"objective": {"name": "iwea"}}, "objective", "Did you mean 'iwae'"),
    ({"objective": {"name": "iwae", "num_particle": 5}}, "objective.num_particle", "num_particles"),
    ({"objective": {"elbo": "meanfield", "num_particles": 2}}, "objective", "{name: meanfield, num_particles: 2}"),
    ({"objective": {"elbo": "meanfield", "geco": {"tolerance": 0.1}}}, "objective",
     "{name: geco, tolerance: 0.1, wraps: meanfield}"),
    ({"model": {"encoder": {"name": "mlp", "activation": "sigmoid"}}}, "model.encoder.activation", "tanh"),
    ({"model": {"likelihood": {"name": "gaussian", "sigm": 1}}}, "model.likelihood.sigm", "Did you mean 'sigma'"),
    ({"objective": {"beta": {"name": "linear", "duration": 2.5}}}, "objective.beta.duration", "integer"),
])
def test_bad_values_name_the_key(values, key, hint):
    with pytest.raises(ConfigError) as error:
        check(from_dict(values))
    assert key in str(error.value) and hint in str(error.value)


@pytest.mark.parametrize("values, key", [
    ({"model": {"likelihood": {"name": "gaussian", "sigma": -1.0}}}, "model.likelihood.sigma"),
    ({"data": {"batch_size": 100_000}}, "data.batch_size"),
    ({"model": {"encoder": {"name": "mlp", "hidden_sizes": [0]}}}, "model.encoder.hidden_sizes"),
])
def test_impossible_values_fail_before_any_training(values, key, tmp_path):
    config = from_dict({**values, "train": {"progress": False}})
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        fit(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="Shipped configs: .*default"):
        load_config("mnits")
