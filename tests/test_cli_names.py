"""Part names read from the source: the command line answers a mistyped name before importing torch,
with the error the registry itself gives, and the names it knows are exactly the registries'."""

import importlib
import pkgutil
import subprocess
import sys

import pytest
from torch import nn

import ppl_vae
from ppl_vae.build import REGISTRIES, check
from ppl_vae.cli import PART_REGISTRIES, check_part_names
from ppl_vae.config import from_dict
from ppl_vae.data import DATASETS
from ppl_vae.errors import ConfigError
from ppl_vae.experiments import EXPERIMENTS
from ppl_vae.objectives import OBJECTIVES
from ppl_vae.parts.likelihoods import LIKELIHOODS
from ppl_vae.registry import Registry, registered_names, source_index


def live(variable):
    """The registry object that the source index's ``variable`` is."""
    entry = source_index()[variable]
    return getattr(importlib.import_module(entry.module), entry.variable)


def test_the_source_index_holds_every_registry_with_its_kind_and_names():
    for module in pkgutil.walk_packages(ppl_vae.__path__, "ppl_vae."):
        importlib.import_module(module.name)
    registries = {id(value) for name, module in list(sys.modules.items()) if name.startswith("ppl_vae.")
                  for value in vars(module).values() if isinstance(value, Registry)}
    assert {id(live(variable)) for variable in source_index()} == registries
    for variable, entry in source_index().items():
        assert (entry.kind, list(entry.names)) == (live(variable).kind, live(variable).names()), variable


def test_the_part_keys_are_those_build_checks_with_their_registries():
    assert {key: live(variable) for key, variable in PART_REGISTRIES.items()} == {
        "data.name": DATASETS, **REGISTRIES, "objective": OBJECTIVES}


def answer_without_torch(argv):
    """The exit status, stderr and whether torch was imported, of the command line run on ``argv``
    in a fresh Python."""
    probe = (f"import sys; from ppl_vae.cli import main; status = main({argv!r}); "
             "print(status, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    status, torch_imported = result.stdout.split()
    return int(status), result.stderr, torch_imported == "True"


@pytest.mark.parametrize("argv, registry, name, key", [
    (["train", "--set", "model.likelihood=bernouli"], LIKELIHOODS, "bernouli", "model.likelihood"),
    (["train", "mnist", "--set", "data.name=mnst"], DATASETS, "mnst", "data.name"),
    (["train", "--set", "objective.name=iwea"], OBJECTIVES, "iwea", "objective"),
    (["train", "--set", "objective.beta=linaer"], REGISTRIES["objective.beta"], "linaer", "objective.beta"),
    (["reproduce", "iwae-tabel"], EXPERIMENTS, "iwae-tabel", "experiment"),
])
def test_a_mistyped_name_is_answered_without_importing_torch(argv, registry, name, key):
    with pytest.raises(ConfigError) as refused:
        registry.get(name, key)
    assert answer_without_torch(argv) == (2, f"ppl-vae: error: {refused.value}\n", False)


def test_the_likelihood_typo_error_says_what_was_wrong_and_the_choices():
    assert answer_without_torch(["train", "--set", "model.likelihood=bernouli"]) == (
        2, "ppl-vae: error: model.likelihood: unknown likelihood 'bernouli'. Did you mean 'bernoulli'? Registered "
           "likelihoods: bernoulli, beta, continuous_bernoulli, discretized_logistic, gaussian, gaussian_per_pixel, "
           "laplace.\n", False)


def test_a_dataset_given_as_the_config_is_answered_without_importing_torch():
    status, error, torch_imported = answer_without_torch(["train", "digits"])
    assert (status, torch_imported) == (2, False)
    assert "'digits' is a dataset, not a config; the shipped config 'default' trains on it" in error


def test_names_registered_from_python_are_accepted(monkeypatch):
    monkeypatch.setattr(LIKELIHOODS, "_factories", dict(LIKELIHOODS._factories))

    @LIKELIHOODS.register("student_t")
    class StudentT(nn.Module):
        """A likelihood whose name is all this test needs."""

    config = from_dict({"model": {"likelihood": "student_t"}})
    assert check_part_names(config) is config
    assert "student_t" in registered_names("LIKELIHOODS").names
    assert "student_t" not in source_index()["LIKELIHOODS"].names


def test_the_names_check_and_the_full_check_refuse_alike():
    config = from_dict({"model": {"prior": "vampp"}})
    with pytest.raises(ConfigError) as refused:
        check(config)
    with pytest.raises(ConfigError) as refused_fast:
        check_part_names(config)
    assert str(refused_fast.value) == str(refused.value)
