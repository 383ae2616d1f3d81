"""Property-based tests: random values for every config key and every option of every registered
part, random ``--set`` strings, and random damage to config and dataset files. Each input either
loads (a config then passes :func:`ppl_vae.build.check` and builds a VAE for small data) or raises
the project's own error (:class:`~ppl_vae.errors.PplVaeError`) naming the key or file; anything
else fails the test. ``test_zz_report`` prints how many inputs ran and how each ended."""

from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import refuse_reading
from ppl_vae.build import REGISTRIES, build_vae, check
from ppl_vae.config import Config, ObjectiveConfig, PartSpec, apply_overrides, from_dict, read_yaml, to_dict
from ppl_vae.data import DATASETS, load_dataset
from ppl_vae.data.datasets import FREY_FACE, MNIST_FILES
from ppl_vae.errors import PplVaeError
from ppl_vae.objectives import OBJECTIVES
from ppl_vae.validation import MAX_SIZE

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
OUTCOMES: collections.Counter = collections.Counter()  # (test, "loaded" | "our error")
DATA_DIM, IMAGE_SHAPE = 64, (8, 8)  # the digits' size: small enough to build any valid VAE quickly

# sizes a config may hold: small ones, and ones past every limit (never a valid size so large that
# building it would allocate gigabytes: that is what MAX_SIZE is for)
INTEGERS = (st.integers(-3, 40) | st.sampled_from([0, MAX_SIZE + 1, 2**31, 2**63, -(2**63)])
            | st.integers(MAX_SIZE + 1, 2**70))
FLOATS = st.floats() | st.sampled_from([0.0, -0.0, 1e-320, 1e-50, 1e-7, 0.5, 1.0, 1e308, -1.0])
WORDS = st.sampled_from(["tanh", "relu", "step", "epoch", "sigmoid", "none", "elbo", "meanfield", "standard",
                         "dreg", "nll", "affine_coupling", "spline_coupling", "cpu", "adam", "digits", ""])
SCALARS = (st.none() | st.booleans() | INTEGERS | FLOATS | WORDS | st.text(max_size=6)
           | st.sampled_from(["1e-3", "nan", "1e400"]))
PLAUSIBLE = st.sampled_from([1, 2, 3, 5, 0.1, 0.5, 0.99, [16], [16, 16], [4, 8], [8, 8], [], True, False, None])
VALUES = PLAUSIBLE | st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                                  | st.dictionaries(WORDS, inner, max_size=2), max_leaves=6)


def leaf_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every key path of the config dataclasses whose value is not a section (a part is a leaf)."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint) and hint not in (PartSpec, ObjectiveConfig):
            keys += leaf_keys(hint, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def part_options() -> list[tuple[str, str, str]]:
    """(config key, part name, option) for every option of every registered part: the objectives and
    the registries of :data:`ppl_vae.build.REGISTRIES` (the datasets take no options: see below)."""
    registries = {**REGISTRIES, "objective": OBJECTIVES}
    return [(key, name, option) for key, registry in registries.items() for name in registry.names()
            for option in registry.options(name)]


KEYS = leaf_keys() + ["objective.name", "objective.num_particles", "objective.beta"]
OPTIONS = part_options()


def set_path(values: dict, key: str, value: object) -> dict:
    *parents, leaf = key.split(".")
    target = values
    for name in parents:
        target = target.setdefault(name, {})
    target[leaf] = value
    return values


def prefixes(*keys: str) -> set[str]:
    """Each key path and the paths above it: an error about ``model.encoder.hidden_sizes`` may
    name ``model.encoder`` (the part) or ``model`` (a section that is not a mapping)."""
    return {".".join(key.split(".")[:depth]) for key in keys for depth in range(1, key.count(".") + 2)}


def loads_or_raises_ours(test: str, values: dict, *names: str) -> None:
    """``values`` load, pass check() and build a small VAE, or raise a PplVaeError naming one of
    ``names``; counts which."""
    try:
        config = check(from_dict(values))
        build_vae(config.model, DATA_DIM, IMAGE_SHAPE)
    except PplVaeError as error:
        assert any(name in str(error) for name in names), f"{error!r} names none of {names}"
        OUTCOMES[test, "our error"] += 1
        return
    OUTCOMES[test, "loaded"] += 1


@FUZZ
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_every_config_key_takes_random_values(key, value):
    loads_or_raises_ours("config keys", set_path({}, key, value), *prefixes(key))


def test_datasets_take_no_options():
    """A dataset is chosen by name alone (``data.name``, fuzzed above): its loader's only inputs are
    the data folder and the download switch, so there are no options to fuzz."""
    assert {name: list(DATASETS.options(name)) for name in DATASETS.names()} == {name: [] for name in DATASETS.names()}


@FUZZ
@given(part=st.sampled_from(OPTIONS), value=VALUES, latent_dim=st.sampled_from([1, 2, 4]))
def test_every_part_option_takes_random_values(part, value, latent_dim):
    key, name, option = part
    spec = {"name": name, option: value}
    values = {"model": {"latent_dim": latent_dim}}
    if key == "objective":
        values["objective"] = {**spec, "tolerance": 0.1} if name == "geco" and option != "tolerance" else spec
    else:
        set_path(values, key, spec)
    loads_or_raises_ours("part options", values, key, "model.latent_dim")


OVERRIDE_KEYS = st.sampled_from(KEYS + [f"{key}.{option}" for key, _, option in OPTIONS]) | st.text(max_size=8)
RAW = st.sampled_from(["2", "0.5", "[16, 16]", "null", "true", "tanh"]) | st.text(max_size=12) | st.sampled_from([
    "[1,", "{", "a: b: c", "!!python/object/apply:os.system ['ls']", "*a", "&a 1", "!!binary x", "'", "\t", "%", "@",
    "- -", "{a: [}", "&a [*a]", "{name: mlp, hidden_sizes: &a [1, *a]}", "&a {x: *a}", "[" * 400 + "]" * 400,
    "[" * 30 + "]" * 30])


@FUZZ
@given(overrides=st.lists(st.tuples(OVERRIDE_KEYS, RAW), min_size=1, max_size=3))
def test_random_set_strings(overrides):
    strings = [f"{key}={raw}" for key, raw in overrides]
    try:
        values = apply_overrides({}, strings)
    except PplVaeError as error:
        assert "--set" in str(error)
        OUTCOMES["--set strings", "our error"] += 1
        return
    loads_or_raises_ours("--set strings", values, *prefixes(*(string.partition("=")[0] for string in strings)))


@pytest.fixture(scope="module")
def config_text() -> bytes:
    return yaml.safe_dump(to_dict(Config()), sort_keys=False).encode()


DAMAGE = st.sampled_from(["truncate", "flip", "random", "utf-16", "latin-1", "folder", "unreadable"])


@FUZZ
@given(damage=DAMAGE, where=st.floats(0, 1), noise=st.binary(min_size=1, max_size=64))
def test_damaged_config_files(config_text, tmp_path_factory, monkeypatch, damage, where, noise):
    path = tmp_path_factory.mktemp("config") / "run.yaml"
    with monkeypatch.context() as patches:
        damage_file(path, config_text, damage, where, noise, patches)
        try:
            values = read_yaml(path)
        except PplVaeError as error:
            assert str(path) in str(error)
            OUTCOMES["config files", "our error"] += 1
            return
    loads_or_raises_ours("config files", values, *prefixes(*leaf_keys()), "config")


def damage_file(path: Path, good: bytes, damage: str, where: float, noise: bytes, monkeypatch) -> None:
    """Write a damaged copy of ``good`` at ``path``: cut at ``where``, a byte flipped there, random
    bytes, other encodings, a folder in its place, or unreadable (simulated when running as root,
    whom chmod does not stop)."""
    at = int(where * len(good))
    if damage == "folder":
        path.mkdir()
        return
    content = {
        "truncate": good[:at],
        "flip": good[:at] + bytes([good[at % len(good)] ^ noise[0]]) + good[at + 1:],
        "random": noise,
        "utf-16": good.decode("latin-1").encode("utf-16"),
        "latin-1": good + "# é".encode("latin-1"),
        "unreadable": good,
    }[damage]
    path.write_bytes(content)
    if damage == "unreadable":
        refuse_reading(path, monkeypatch)


DATA_FILES = {"frey": [FREY_FACE.relpath], "mnist": [file.relpath for file in MNIST_FILES.values()]}


@pytest.fixture(scope="module")
def data_copy(tmp_path_factory) -> Path:
    """A data folder holding copies of the Frey Face and MNIST files, to damage one at a time."""
    source = Path(os.environ.get("PPL_VAE_DATA", ""))
    relpaths = [relpath for group in DATA_FILES.values() for relpath in group]
    if not all((source / relpath).is_file() for relpath in relpaths):
        pytest.skip("PPL_VAE_DATA does not hold the Frey Face and MNIST files")
    folder = tmp_path_factory.mktemp("data")
    for relpath in relpaths:
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relpath, folder / relpath)
    return folder


@settings(FUZZ, max_examples=60)
@given(dataset=st.sampled_from(sorted(DATA_FILES)), which=st.integers(0, 3), damage=DAMAGE, where=st.floats(0, 1),
       noise=st.binary(min_size=1, max_size=64))
def test_damaged_data_files(data_copy, monkeypatch, dataset, which, damage, where, noise):
    relpath = DATA_FILES[dataset][which % len(DATA_FILES[dataset])]
    path = data_copy / relpath
    good = path.read_bytes()
    path.unlink()
    try:
        with monkeypatch.context() as patches:
            damage_file(path, good, damage, where, noise, patches)
            try:
                load_dataset(dataset, data_copy, download=False)
            except PplVaeError as error:
                assert str(path) in str(error)
                OUTCOMES["data files", "our error"] += 1
                return
            OUTCOMES["data files", "loaded"] += 1
    finally:
        if path.is_dir():
            path.rmdir()
        path.unlink(missing_ok=True)
        path.write_bytes(good)


def test_zz_report():
    """How many generated inputs ran, and how they ended (printed; run with -s to see it)."""
    tests = sorted({test for test, _ in OUTCOMES})
    lines = [f"{test:>14}: {OUTCOMES[test, 'loaded'] + OUTCOMES[test, 'our error']:4d} inputs, "
             f"{OUTCOMES[test, 'our error']:4d} ended in our error, {OUTCOMES[test, 'loaded']:4d} loaded"
             for test in tests]
    print("\nfuzz inputs:\n" + "\n".join(lines))
