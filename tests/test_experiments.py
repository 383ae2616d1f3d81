"""Every registered experiment runs in quick mode and writes only into its output folder, and
``ppl-vae reproduce`` lists, runs and refuses them (as Pyro's and NumPyro's ``test_examples.py``
run every example with a tiny budget)."""

import hashlib
import json
import math
from pathlib import Path

import pytest
from matplotlib.image import imread

from ppl_vae.cli import main
from ppl_vae.experiments import EXPERIMENTS, claim, run_experiment

FIGURES = Path(__file__).resolve().parents[1] / "figures"
ALL_EXPERIMENTS = ["autoencoder-vs-vae", "beta-phase-transitions", "cvae-completions", "geco-information-plane",
                   "geco-vs-beta", "parts-table"]


def numbers_in(value):
    """Every number in a JSON value (nested dicts and lists), booleans left out."""
    if isinstance(value, dict):
        return [number for item in value.values() for number in numbers_in(item)]
    if isinstance(value, list):
        return [number for item in value for number in numbers_in(item)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def fingerprint(folder: Path) -> dict[str, str]:
    """The SHA256 of every file under ``folder``, by relative path."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def empty_working_directory(tmp_path, monkeypatch):
    """Run from an empty folder, so that anything written relative to the working directory shows up."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_the_six_experiments_are_registered_with_their_claims():
    assert EXPERIMENTS.names() == ALL_EXPERIMENTS
    for name in ALL_EXPERIMENTS:
        assert claim(name), f"{name} has no docstring claim"
        assert getattr(EXPERIMENTS.get(name), "quick", None), f"{name} has no quick settings"


@pytest.mark.parametrize("name", EXPERIMENTS.names())
def test_experiment_runs_in_quick_mode(name, tmp_path, empty_working_directory):
    figures_before = fingerprint(FIGURES)
    out = tmp_path / "out"
    record = run_experiment(name, out, quick_mode=True, progress=False)

    written = json.loads((out / f"{name}.json").read_text())
    assert written == json.loads(json.dumps(record, default=str))
    assert written["experiment"] == name and written["mode"] == "quick" and written["claim"] == claim(name)
    assert set(written["settings"]) == set(EXPERIMENTS.options(name))
    assert written["wall_seconds"] > 0
    assert {"platform", "device", "torch"} <= set(written["machine"])
    numbers = numbers_in(written["results"])
    assert numbers, f"{name} returned no numbers"
    assert all(math.isfinite(number) for number in numbers)

    for image in out.glob("*.png"):
        pixels = imread(image)
        assert pixels.ndim == 3 and pixels.shape[0] > 10 and pixels.shape[1] > 10, image.name
        assert pixels.std() > 0, f"{image.name} is blank"
    assert fingerprint(FIGURES) == figures_before, "an experiment wrote into figures/"
    assert not any(empty_working_directory.iterdir()), "an experiment wrote into the working directory"


def test_cli_lists_every_experiment_with_its_claim(capsys):
    assert main(["reproduce", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in ALL_EXPERIMENTS:
        assert f"{name} " in listing and claim(name) in listing


def test_cli_suggests_the_experiment_meant(capsys):
    assert main(["reproduce", "parts-tabel"]) == 2
    assert "Did you mean 'parts-table'" in capsys.readouterr().err


def test_cli_runs_an_experiment_with_a_setting(tmp_path, capsys, empty_working_directory):
    out = tmp_path / "out"
    assert main(["reproduce", "autoencoder-vs-vae", "--quick", "--out", str(out), "--set", "epochs=1"]) == 0
    record = json.loads((out / "autoencoder-vs-vae.json").read_text())
    assert record["mode"] == "quick" and record["settings"] == {"dataset": "digits", "epochs": 1}
    assert (out / "autoencoder_vs_vae.png").is_file()
    assert "autoencoder-vs-vae (quick mode" in capsys.readouterr().out


@pytest.mark.parametrize("name, setting, message", [
    ("autoencoder-vs-vae", "epoch=1", "has no option 'epoch'. Did you mean 'epochs'?"),
    ("autoencoder-vs-vae", "epochs=many", "autoencoder-vs-vae.epochs: expected an integer, got 'many'"),
    ("geco-information-plane", "tolerances=0.1", "geco-information-plane.tolerances: expected a list"),
])
def test_cli_refuses_a_bad_setting_by_name(name, setting, message, tmp_path, capsys):
    assert main(["reproduce", name, "--quick", "--out", str(tmp_path), "--set", setting]) == 2
    error = capsys.readouterr().err
    assert error.startswith("ppl-vae: error:") and message in error
    assert not any(tmp_path.iterdir()), "a refused setting still ran the experiment"
