"""Every registered experiment runs in quick mode and writes only into its output folder, and
``ppl-vae reproduce`` lists, runs and refuses them (as Pyro's and NumPyro's ``test_examples.py``
run every example with a tiny budget)."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

from ppl_vae.cli import main
from ppl_vae.experiments import EXPERIMENTS, Output, Reference, check_results, claim, run_experiment
from ppl_vae.experiments.common import one_hidden_layer_config

FIGURES = Path(__file__).resolve().parents[1] / "figures"
ALL_EXPERIMENTS = ["aevb-lower-bound", "aevb-marginal-likelihood", "autoencoder-vs-vae", "beta-phase-transitions",
                   "collapse-and-annealing", "cvae-completions", "geco-information-plane", "geco-vs-beta", "iwae-table",
                   "latent-space", "priors-table", "suarez-variants"]


def numbers_in(value):
    """Every number in a JSON value (nested dicts and lists), booleans left out."""
    if isinstance(value, dict):
        return [number for item in value.values() for number in numbers_in(item)]
    if isinstance(value, list):
        return [number for item in value for number in numbers_in(item)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def fingerprint(folder: Path, skip: str | None = None) -> dict[str, str]:
    """The SHA256 of every file under ``folder``, by relative path, leaving out the subfolder ``skip``."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*"))
            if path.is_file() and (skip is None or path.relative_to(folder).parts[0] != skip)}


@pytest.fixture
def empty_working_directory(tmp_path, monkeypatch):
    """Run from an empty folder, so that anything written relative to the working directory shows up."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_every_experiment_is_registered_with_its_claim_quick_settings_and_full_mode():
    assert EXPERIMENTS.names() == ALL_EXPERIMENTS
    for name in ALL_EXPERIMENTS:
        experiment = EXPERIMENTS.get(name)
        assert claim(name), f"{name} has no docstring claim"
        assert getattr(experiment, "quick", None), f"{name} has no quick settings"
        assert getattr(experiment, "full_seconds", 0) > 0, f"{name} has no measured full-mode runtime (@full)"
        assert getattr(experiment, "references", ()), f"{name} has no reference numbers to check (@full)"
        for reference in experiment.references:
            assert reference.low < reference.high, f"{name}: empty band for {reference.result}"


@pytest.mark.parametrize("name", EXPERIMENTS.names())
def test_experiment_runs_in_quick_mode(name, tmp_path, empty_working_directory):
    figures_before = fingerprint(FIGURES, skip="runs")  # figures/runs: a full run's trained models, ignored by git
    out = tmp_path / "out"
    record = run_experiment(name, out, quick_mode=True, progress=False)

    written = json.loads((out / f"{name}.json").read_text())
    assert written == json.loads(json.dumps(record, default=str))
    assert written["experiment"] == name and written["mode"] == "quick" and written["claim"] == claim(name)
    assert set(written["settings"]) == set(EXPERIMENTS.options(name))
    assert written["wall_seconds"] > 0
    assert {"platform", "device", "torch"} <= set(written["machine"])
    assert [check["result"] for check in written["checks"]] == [
        reference.result for reference in EXPERIMENTS.get(name).references]
    numbers = numbers_in(written["results"])
    assert numbers, f"{name} returned no numbers"
    assert all(math.isfinite(number) for number in numbers)

    for image in out.glob("*.png"):
        pixels = imread(image)
        assert pixels.ndim == 3 and pixels.shape[0] > 10 and pixels.shape[1] > 10, image.name
        assert pixels.std() > 0, f"{image.name} is blank"
    assert fingerprint(FIGURES, skip="runs") == figures_before, "an experiment wrote into figures/"
    assert not any(empty_working_directory.iterdir()), "an experiment wrote into the working directory"


def test_cli_lists_every_experiment_with_its_claim_and_runtime(capsys):
    assert main(["reproduce", "--list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert "measured on 2 CPU cores" in listing[0]
    for name in ALL_EXPERIMENTS:
        line = next(line for line in listing if line.startswith(f"{name} "))
        assert claim(name) in line and (" s " in line or " min " in line)


def test_cli_suggests_the_experiment_meant(capsys):
    assert main(["reproduce", "geco-vs-bta"]) == 2
    assert "Did you mean 'geco-vs-beta'" in capsys.readouterr().err


def test_check_results_finds_each_reference_and_says_whether_it_is_in_its_band(monkeypatch):
    references = (Reference("VAE.kl", 1.0, 2.0, published=1.5, source="a paper"), Reference("VAE.kl", 3.0, 4.0),
                  Reference("VAE.missing", 0.0, 1.0))
    monkeypatch.setattr(EXPERIMENTS.get("autoencoder-vs-vae"), "references", references)
    checks = check_results("autoencoder-vs-vae", {"VAE": {"kl": 1.25}})
    assert [(check["value"], check["within"]) for check in checks] == [(1.25, True), (1.25, False), (None, False)]
    assert checks[0]["published"] == 1.5 and checks[0]["source"] == "a paper"


@pytest.mark.parametrize("band, status", [((0.0, 1e6), 0), ((1e5, 1e6), 1)])
def test_cli_check_exits_non_zero_when_a_result_leaves_its_band(band, status, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(EXPERIMENTS.get("autoencoder-vs-vae"), "references",
                        (Reference("VAE (β = 1).kl", *band, published=25.0, source="somewhere"),))
    settings = ["--set", "dataset=digits", "--set", "epochs=1"]
    assert main(["reproduce", "autoencoder-vs-vae", "--check", "--out", str(tmp_path), *settings]) == status
    printed = capsys.readouterr()
    assert ("FAIL" if status else "ok") in printed.out and "published 25.0 (somewhere)" in printed.out
    assert ("--set changed them" in printed.err) == bool(status)


def test_cli_check_refuses_quick_mode(tmp_path, capsys):
    assert main(["reproduce", "autoencoder-vs-vae", "--check", "--quick", "--out", str(tmp_path)]) == 2
    assert "drop --quick" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_running_an_experiment_again_reuses_its_finished_runs(tmp_path):
    first = run_experiment("autoencoder-vs-vae", tmp_path, quick_mode=True, progress=False)
    checkpoints = fingerprint(tmp_path / "runs")
    again = run_experiment("autoencoder-vs-vae", tmp_path, quick_mode=True, progress=False)
    assert again["results"] == first["results"]
    assert {path: digest for path, digest in fingerprint(tmp_path / "runs").items() if path.endswith(".pt")} == {
        path: digest for path, digest in checkpoints.items() if path.endswith(".pt")}, "a finished run was retrained"
    assert again["wall_seconds"] < first["wall_seconds"]


def test_fitting_with_more_epochs_continues_the_run_with_that_label(tmp_path):
    def config(output: Output, epochs: int, latent_dim: int = 10):
        config = one_hidden_layer_config(output, "digits", epochs, {"name": "elbo"}, latent_dim=latent_dim)
        config.train.eval_every = 1  # the same evaluations (and random draws) in one run as in two stages
        return config

    output = Output(tmp_path, torch.device("cpu"), progress=False)
    one_epoch = output.fit(config(output, 1), "staged")
    two_epochs = output.fit(config(output, 2), "staged")
    fresh = Output(tmp_path / "fresh", torch.device("cpu"), progress=False)
    straight = fresh.fit(config(fresh, 2), "staged")
    assert [entry["epoch"] for entry in two_epochs.history] == [1, 2]
    assert two_epochs.history[0] == one_epoch.history[0]
    for continued, uninterrupted in zip(two_epochs.vae.parameters(), straight.vae.parameters()):
        assert torch.equal(continued, uninterrupted), "training in two stages differs from one run"
    other = output.fit(config(output, 1, latent_dim=3), "staged")
    assert len(other.history) == 1 and len(list((tmp_path / "runs").iterdir())) == 2


def test_training_in_stages_again_reloads_every_stage(tmp_path):
    output = Output(tmp_path, torch.device("cpu"), progress=False)
    config = one_hidden_layer_config(output, "digits", 1, {"name": "elbo"})
    first = [(len(run.history), run.metrics["test_elbo"]) for run in output.fit_in_stages(config, "staged", [1, 3])]
    run_dir = next((tmp_path / "runs").iterdir())
    trained = fingerprint(run_dir, skip="stages")
    again = [(len(run.history), run.metrics["test_elbo"]) for run in output.fit_in_stages(config, "staged", [1, 3])]
    assert [epochs for epochs, _ in first] == [1, 3] and again == first
    assert {path: digest for path, digest in fingerprint(run_dir, skip="stages").items() if path.endswith(".pt")} == {
        path: digest for path, digest in trained.items() if path.endswith(".pt")}, "a stage was trained again"
