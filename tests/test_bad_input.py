"""Bad input fails early and clearly: random configs and random arrays either work or raise the
project's own error (with a message), never a raw traceback from deep inside Python, torch or Pyro."""

from __future__ import annotations

import dataclasses
import io
import urllib.request

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.distributions import constraints

from ppl_vae.build import check
from ppl_vae.config import Config, from_dict, to_dict
from ppl_vae.data import DATASETS, Dataset, check_dataset, load_dataset
from ppl_vae.errors import ConfigError, DataError, PplVaeError
from ppl_vae.parts.likelihoods import LIKELIHOODS, Bernoulli
from ppl_vae.runs import fit

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def config_keys(cls: type = Config) -> set[str]:
    """Every key name of the config dataclasses, at any depth."""
    keys = set()
    for f in dataclasses.fields(cls):
        keys.add(f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys |= config_keys(type(default))
    return keys


NAMES = ["mlp", "normal", "diagonal_normal", "bernoulli", "gaussian", "constant", "linear", "sigmoid",
         "cyclical", "digits", "mnist", "adam", "adagrad", "trace", "meanfield", "cpu", "auto", "tanh"]
OPTIONS = ["name", "hidden_sizes", "activation", "sigma", "learn_sigma", "squash", "value", "start",
           "end", "duration", "by", "period", "ratio", "steepness"]
KEYS = st.sampled_from(sorted(config_keys()) + OPTIONS) | st.text(max_size=6) | st.integers(-3, 3)
LEAVES = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
    | st.sampled_from(NAMES) | st.sampled_from(["1e-3", "1e400", "nan", "-0"])
)
VALUES = st.recursive(
    LEAVES, lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_configs(draw) -> dict:
    """The default config with a few values at random paths replaced by random values."""
    values = to_dict(Config())
    for _ in range(draw(st.integers(1, 3))):
        target = values
        while (inner := sorted((k for k, v in target.items() if isinstance(v, dict) and v), key=str)) \
                and draw(st.booleans()):
            target = target[draw(st.sampled_from(inner))]
        keys = st.sampled_from(sorted(target, key=str)) | KEYS if target else KEYS
        target[draw(keys)] = draw(VALUES)
    return values


@FUZZ
@given(st.one_of(mutated_configs(), st.dictionaries(KEYS, VALUES, max_size=5), VALUES))
def test_random_configs_load_or_raise_a_config_error(values):
    try:
        config = check(from_dict(values))
    except PplVaeError as error:
        assert isinstance(error, ConfigError) and len(str(error)) > 10
        return
    assert isinstance(config, Config)
    assert check(from_dict(yaml.safe_load(yaml.safe_dump(to_dict(config))))) == config  # what loads, saves


@pytest.mark.parametrize("values, key, hint", [
    ({"data": [1, 2]}, "data", "expected a mapping"),
    ({"model": {"encoder": {"name": "mlp", "hidden_sizes": {"a": 1}}}}, "model.encoder.hidden_sizes", "list"),
    ({"model": {"latent_dim": {"value": 2}}}, "model.latent_dim", "expected an integer"),
    ({"model": {"latent_dim": None}}, "model.latent_dim", "expected an integer"),
    ({"model": None}, "model", "expected a mapping"),
    ({"optim": {"lr": float("nan")}}, "optim.lr", "finite"),
    ({"optim": {"lr": "1e400"}}, "optim.lr", "finite"),
    ({"optim": {"clip_norm": 0}}, "optim.clip_norm", "> 0 or null"),
    ({"model": {"likelihood": {"name": "gaussian", 3: 1}}}, "model.likelihood.3", "has no option"),
    ({"model": {"likelihood": ["gaussian"]}}, "model.likelihood", "part name or a mapping"),
    ({"seed": -1}, "seed", "2**32"),
    ({"data": {"name": "mnits"}}, "data.name", "Did you mean 'mnist'"),
    ({"objective": {"beta": {"name": "constant", "value": -1}}}, "objective.beta.value", "must be >= 0"),
])
def test_wrong_types_anywhere_raise_a_config_error(values, key, hint):
    with pytest.raises(ConfigError) as error:
        check(from_dict(values))
    assert str(error.value).startswith(key + ":") and hint in str(error.value)


class PositiveOnly(Bernoulli):
    """A likelihood whose support (x > 0) does not hold the digits' zero pixels."""

    support = constraints.positive


def test_likelihood_support_is_checked_before_training(monkeypatch, tmp_path):
    monkeypatch.setattr(LIKELIHOODS, "_factories", {**LIKELIHOODS._factories, "test-positive": PositiveOnly})
    config = from_dict({"model": {"likelihood": "test-positive"}, "train": {"progress": False}})
    with pytest.raises(ConfigError, match=r"^model\.likelihood: PositiveOnly needs data in .*digits"):
        fit(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- dataset checks ------------------------------------------------------------------------------

TORCH_DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_, np.complex64]


@st.composite
def arrays_with_specials(draw) -> np.ndarray:
    """Random arrays of every dtype and shape, float ones sprinkled with NaN, Inf and values
    outside [0, 1]."""
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    if np.issubdtype(dtype, np.floating):
        elements = st.floats(allow_nan=True, allow_infinity=True, width=16) | st.floats(0, 1, width=16)
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


@FUZZ
@given(train=arrays_with_specials(), test=arrays_with_specials(),
       image_shape=st.tuples(st.integers(0, 4), st.integers(0, 4)), as_tensor=st.booleans())
def test_random_arrays_pass_the_dataset_checks_or_raise_a_data_error(train, test, image_shape, as_tensor):
    convert = torch.from_numpy if as_tensor else (lambda array: array)
    dataset = Dataset("random", train=convert(train), test=convert(test), image_shape=image_shape)
    try:
        checked = check_dataset(dataset)
    except PplVaeError as error:
        assert isinstance(error, DataError) and "'random'" in str(error)
        return
    for x in (checked.train, checked.test):  # what passes is what the model needs
        assert x.dtype == torch.float32 and x.ndim == 2 and x.shape[0] > 0
        assert x.shape[1] == image_shape[0] * image_shape[1] > 0
        assert bool(((x >= 0) & (x <= 1)).all())


@pytest.mark.parametrize("train, hint", [
    (torch.full((4, 4), float("nan")), "finite values in [0, 1]"),
    (torch.tensor([[0.5, float("inf"), 0.0, 1.0]]), "finite values in [0, 1]"),
    (torch.rand(4, 5), "got shape (4, 5)"),
    (torch.rand(4, 2, 2), "got shape (4, 2, 2)"),
    (torch.rand(0, 4), "non-empty"),
    (torch.rand(4, 4, dtype=torch.float64), "float32"),
    (np.random.rand(4, 4).astype(np.float32), "torch tensor"),
])
def test_bad_arrays_are_refused_with_a_data_error(train, hint, monkeypatch):
    monkeypatch.setitem(DATASETS._factories, "bad", lambda data_dir, download=True: Dataset(
        "bad", train=train, test=torch.rand(3, 4), image_shape=(2, 2)))
    with pytest.raises(DataError) as error:
        fit(from_dict({"data": {"name": "bad", "batch_size": 1}, "train": {"progress": False}}))
    assert "Dataset 'bad', split 'train'" in str(error.value) and hint in str(error.value)


def test_batch_larger_than_the_data_fails_before_training(tmp_path):
    config = from_dict({"data": {"batch_size": 1501}, "train": {"progress": False}})
    with pytest.raises(ConfigError, match=r"^data\.batch_size: 1501 is larger than the 1500 training examples"):
        fit(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


class DroppedConnection(io.BytesIO):
    """A response whose connection drops after ``size`` bytes of a bigger file."""

    def __init__(self, size: int) -> None:
        super().__init__(b"\0" * size)
        self.headers = {"Content-Length": str(10 * size)}

    def read(self, *args) -> bytes:
        if chunk := super().read(*args):
            return chunk
        raise ConnectionResetError("[Errno 104] Connection reset by peer")


def test_partial_download_leaves_no_file(monkeypatch, tmp_path):
    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout=None: DroppedConnection(4096))
    with pytest.raises(DataError) as error:
        load_dataset("frey", tmp_path)
    message = str(error.value)
    assert f"Missing dataset files in {tmp_path}" in message and "Connection reset by peer" in message
    assert list(tmp_path.iterdir()) == []  # neither the file nor the partial download
