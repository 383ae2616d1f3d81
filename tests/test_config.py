"""Configs: shipped files load, bad values fail before training with the key named."""

from pathlib import Path

import pytest
import yaml

from ppl_vae.build import build_vae, check
from ppl_vae.config import Config, apply_overrides, from_dict, load_config, read_yaml, shipped_configs, to_dict
from ppl_vae.errors import ConfigError
from ppl_vae.objectives.schedules import Sigmoid
from ppl_vae.runs import fit
from ppl_vae.validation import MAX_SIZE


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
    ({"model": {"latent_dim": -3}}, "model.latent_dim", "must be in [1, 1048576]"),
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


# -- regressions of the fuzzer's findings: each ends in a ConfigError naming the key or file -------

@pytest.mark.parametrize("content", [bytes(range(256)), "seed: 1\n".encode("utf-16")], ids=["random", "utf-16"])
def test_config_file_that_is_not_utf8_is_refused(tmp_path, content):
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"config file '{path}' is not UTF-8 text.*save it as UTF-8"):
        read_yaml(path)


def test_config_path_that_is_a_folder_or_unreadable_is_refused(tmp_path, monkeypatch):
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        read_yaml(tmp_path / "folder.yaml")
    path = tmp_path / "locked.yaml"
    path.write_text("seed: 1\n")

    def refuse(self):  # chmod 000 does not stop root, who runs these tests in CI
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError, match=f"config file '{path}' cannot be read \\(Permission denied\\)"):
        read_yaml(path)


@pytest.mark.parametrize("raw", ["[1,", "{", "a: b: c", "!!python/object/apply:os.system ['true']", "*alias"])
def test_malformed_set_values_name_the_key(raw):
    with pytest.raises(ConfigError, match=r"^--set model\.latent_dim: not valid YAML .*write the value as YAML"):
        apply_overrides({}, [f"model.latent_dim={raw}"])


@pytest.mark.parametrize("part, key, hint", [
    ({"encoder": {"name": "mlp", "hidden_sizes": [-1]}}, "model.encoder.hidden_sizes[0]", "in [1, 1048576]"),
    ({"encoder": {"name": "mlp", "hidden_sizes": [0]}}, "model.encoder.hidden_sizes[0]", "in [1, 1048576]"),
    ({"encoder": {"name": "conv_encoder", "channels": [32]}}, "model.encoder.channels", "a list of 2 channel counts"),
    ({"encoder": {"name": "conv_encoder", "channels": [-1, 64]}}, "model.encoder.channels[0]", "in [1, 1048576]"),
    ({"encoder": {"name": "conv_encoder", "image_shape": [8]}}, "model.encoder.image_shape", "a list of 2 sides"),
    ({"encoder": {"name": "conv_encoder", "hidden": 0}}, "model.encoder.hidden", "in [1, 1048576]"),
    ({"likelihood": {"name": "gaussian", "sigma": 1e-50}}, "model.likelihood.sigma", "in [1e-06, 1e+06]"),
    ({"likelihood": {"name": "gaussian", "sigma": 1e-320}}, "model.likelihood.sigma", "underflow float32"),
    ({"prior": {"name": "mixture", "init_spread": 1e300}}, "model.prior.init_spread", "in [0, 1e+06]"),
    ({"prior": {"name": "flow", "num_flows": 10**6}}, "model.prior.num_flows", "in [1, 100]"),
    ({"posterior": {"name": "iaf", "hidden_sizes": []}}, "model.posterior.hidden_sizes", "at least 1 layer widths"),
    ({"prior": {"name": "flow", "hidden_sizes": []}}, "model.prior.hidden_sizes", "at least 1 layer widths"),
    ({"latent_dim": 1_000_000_000}, "model.latent_dim", "in [1, 1048576]"),
])
def test_impossible_part_options_name_the_key(part, key, hint):
    with pytest.raises(ConfigError) as error:
        build_vae(check(from_dict({"model": part})).model, 64, (8, 8))
    assert str(error.value).startswith(key + ":") and hint in str(error.value)


def test_nets_too_large_to_allocate_name_the_key():
    config = check(from_dict({"model": {"decoder": {"name": "mlp", "hidden_sizes": [MAX_SIZE, MAX_SIZE]}}}))
    with pytest.raises(ConfigError, match=r"^model\.decoder: too large to allocate .*reduce the sizes"):
        build_vae(config.model, 64, (8, 8))


@pytest.mark.parametrize("objective, hint", [
    ({"name": "iwae", "num_particles": 1_000_000}, "must be in [1, 10000]"),
    ({"name": "elbo", "num_particles": 0}, "must be in [1, 10000]"),
    ({"beta": {"name": "sigmoid", "steepness": 0}}, "must be > 0"),
])
def test_impossible_objective_options_name_the_key(objective, hint):
    with pytest.raises(ConfigError, match="^objective") as error:
        check(from_dict({"objective": objective}))
    assert hint in str(error.value)


@pytest.mark.parametrize("steepness", [10.0, 1e6, 1e300])
def test_sigmoid_schedule_never_overflows(steepness):
    schedule = check(from_dict({"objective": {"beta": {"name": "sigmoid", "steepness": steepness}}})).objective.beta
    sigmoid = Sigmoid(**schedule.options)
    values = [sigmoid(0, epoch) for epoch in range(11)]
    assert values[0] < 0.01 and values[5] == 0.5 and values[10] > 0.99 and values == sorted(values)


def test_log_likelihood_samples_is_a_count_or_null():
    assert from_dict({}).train.log_likelihood_samples is None
    assert from_dict({"train": {"log_likelihood_samples": 5000}}).train.log_likelihood_samples == 5000
    with pytest.raises(ConfigError, match=r"^train\.log_likelihood_samples: must be in \[1, 1048576\] or null"):
        from_dict({"train": {"log_likelihood_samples": 0}})


@pytest.mark.parametrize("elbo", [[], {"a": 1}, None])
def test_old_objective_spelling_with_any_value_gets_the_new_spelling(elbo):
    with pytest.raises(ConfigError, match="^objective: objectives are now chosen by name; write objective: {name: elbo"):
        from_dict({"objective": {"elbo": elbo}})


@pytest.mark.parametrize("raw, hint", [
    ("&a [1, *a]", "model.encoder.hidden_sizes[1]: contains itself"),
    ("[" * 25 + "1" + "]" * 25, "nested more than 20 levels"),
    ("[" * 5000 + "]" * 5000, "--set model.encoder.hidden_sizes: nested too deeply to read as YAML"),
])
def test_self_referencing_or_deeply_nested_values_are_refused(raw, hint):
    with pytest.raises(ConfigError) as error:
        from_dict(apply_overrides({"model": {"encoder": "mlp"}}, [f"model.encoder.hidden_sizes={raw}"]))
    assert hint in str(error.value)
