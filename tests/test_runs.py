"""The run directory and the command line refuse bad input with ppl_vae's own errors: resuming with
changed settings, overwriting a run, damaged checkpoints (a property test), evaluation edge cases,
GECO's warnings, the two train ELBOs, the version, allocation failures."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ppl_vae
from ppl_vae import runs
from ppl_vae.cli import main
from ppl_vae.config import from_dict
from ppl_vae.data import DATASETS, load_digits
from ppl_vae.errors import ConfigError, TrainingError
from ppl_vae.objectives.geco import GECO, RELATIVE_RATE
from ppl_vae.runs import evaluate_run, fit
from ppl_vae.training import loop
from ppl_vae.training.checkpoint import load_checkpoint

TINY = {"device": "cpu", "train": {"epochs": 1, "checkpoint_every": 1, "progress": False}}
FAST = ["--set", "train.progress=false", "--set", "device=cpu"]


def tiny(**sections) -> dict:
    return {**TINY, **sections, "train": {**TINY["train"], **sections.get("train", {})}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A one-epoch digits run; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("finished") / "run"
    fit(from_dict(tiny()), out)
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def error_of(capsys, argv: list[str]) -> str:
    """The stderr of a ppl-vae command that must end in ppl_vae's own error (exit 2, no traceback)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppl-vae: error: ") and "Traceback" not in err
    return err


# -- resuming ------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, named", [
    ("model.encoder.activation=relu", "model.encoder.activation: 'tanh' -> 'relu'"),
    ("model.latent_dim=3", "model.latent_dim: 2 -> 3"),
    ("optim.name=adagrad", "optim.name: 'adam' -> 'adagrad'"),
    ("objective.name=iwae", "objective.name: 'elbo' -> 'iwae'"),
    ("objective.beta.value=0.5", "objective.beta.value: 1.0 -> 0.5"),
    ("data.batch_size=50", "data.batch_size: 100 -> 50"),
    ("seed=1", "seed: 0 -> 1"),
    ("objective.tolerance=0.1", "objective.tolerance: objective 'elbo' has no option 'tolerance'"),
])
def test_resume_with_changed_model_data_objective_or_optimizer_is_refused(override, named, run_copy, capsys):
    before = (run_copy / "checkpoint.pt").read_bytes()
    err = error_of(capsys, ["train", "--resume", str(run_copy), "--set", override])
    assert named in err
    assert (run_copy / "checkpoint.pt").read_bytes() == before


def test_resume_with_a_new_learning_rate_and_more_epochs_uses_them(run_copy):
    config = runs.resume_config(run_copy, ["train.epochs=2", "optim.lr=0.0001"])
    run = fit(config, run_copy, resume=True)
    assert [record["epoch"] for record in run.history] == [1, 2]
    states = load_checkpoint(run_copy / "checkpoint.pt")["optimizer"].values()
    groups = [state["param_groups"][0]["lr"] for state in states]
    assert groups and set(groups) == {0.0001}


@pytest.mark.parametrize("argv, named", [
    (["--out", "OTHER"], "--out"),
    (["mnist"], "the config 'mnist'"),
    (["--overwrite"], "--overwrite"),
])
def test_resume_refuses_options_it_would_ignore(argv, named, run_copy, capsys, tmp_path):
    argv = [str(tmp_path / "other") if arg == "OTHER" else arg for arg in argv]
    assert named in error_of(capsys, ["train", "--resume", str(run_copy), *argv])
    assert not (tmp_path / "other").exists()


def test_a_fresh_run_never_replaces_a_run_without_overwrite(run_copy, capsys):
    before = (run_copy / "checkpoint.pt").read_bytes()
    err = error_of(capsys, ["train", "--out", str(run_copy), *FAST])
    assert "already holds a run (checkpoint.pt" in err and "--overwrite" in err and "--resume" in err
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(from_dict(tiny()), run_copy)
    assert (run_copy / "checkpoint.pt").read_bytes() == before
    (run_copy / "eval.json").write_text("{}")  # a file of the old run that the new one would not write
    assert main(["train", "--out", str(run_copy), "--overwrite", *FAST, "--set", "train.epochs=1"]) == 0
    assert not (run_copy / "eval.json").exists() and (run_copy / "checkpoint.pt").read_bytes() != before


def test_a_run_that_stopped_before_its_first_checkpoint_can_be_started_again(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("seed: 1\n")  # e.g. out of memory at step 1
    fit(from_dict(tiny()), tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert "is a file, not a folder" in error_of(capsys, ["train", "--out", str(tmp_path / "file"), *FAST])
    inside_a_file = str(tmp_path / "file" / "run")
    assert "cannot create the run directory" in error_of(capsys, ["train", "--out", inside_a_file, *FAST])


# -- evaluating ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:PSIS")
def test_eval_with_one_sample_skips_psis(run_copy, capsys):
    assert main(["eval", str(run_copy), "--num-samples", "1"]) == 0
    results = json.loads((run_copy / "eval.json").read_text())
    assert results["num_samples"] == 1 and results["psis_khat_max"] is None
    assert results["log_likelihood"] == pytest.approx(results["elbo"])  # one sample: the estimate is its log-weight
    assert "latent diagnostics on 297 datapoints" in capsys.readouterr().err  # said before the slow part


def test_eval_refuses_a_config_that_does_not_describe_the_checkpoint(run_copy, capsys, tmp_path):
    config = run_copy / "config.yaml"
    config.write_text(config.read_text().replace("latent_dim: 2", "latent_dim: 3"))
    before = sorted(path.name for path in tmp_path.rglob("*"))
    err = error_of(capsys, ["eval", str(run_copy), "--num-samples", "2"])
    assert "does not describe the model in its checkpoint.pt (model.latent_dim: 2 -> 3" in err
    assert sorted(path.name for path in tmp_path.rglob("*")) == before  # nothing created


def test_eval_of_a_missing_run_creates_nothing(tmp_path, capsys):
    assert "is not a run directory" in error_of(capsys, ["eval", str(tmp_path / "nothing" / "run")])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:PSIS")
def test_eval_reads_the_data_folder_training_used(monkeypatch, tmp_path):
    asked = []

    def digits_from_files(data_dir, download=True):  # a dataset read from files (not marked built in)
        asked.append(data_dir)
        return replace(load_digits(data_dir), name="digits-files")

    monkeypatch.setitem(DATASETS._factories, "digits-files", digits_from_files)
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("PPL_VAE_DATA", str(folder))
    run = fit(from_dict(tiny(data={"name": "digits-files"})), tmp_path / "run")
    assert run.metrics["data_dir"] == str(folder.resolve())
    monkeypatch.setenv("PPL_VAE_DATA", str(tmp_path / "elsewhere"))  # a fresh shell
    asked.clear()
    evaluate_run(tmp_path / "run", num_samples=2, progress=False)
    evaluate_run(tmp_path / "run", num_samples=2, progress=False, data_dir=str(tmp_path / "explicit"))
    folder.rmdir()
    evaluate_run(tmp_path / "run", num_samples=2, progress=False)
    # the recorded folder, --data-dir before it, then (recorded folder gone) as training would: $PPL_VAE_DATA
    assert asked == [folder.resolve(), tmp_path / "explicit", tmp_path / "elsewhere"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]  # no folder created


# -- the numbers a run reports -------------------------------------------------------------------


def test_metrics_agree_with_the_history_and_say_which_train_elbo_is_which(finished):
    metrics = json.loads((finished / "metrics.json").read_text())
    last = json.loads((finished / "history.json").read_text())[-1]
    for name in ("test_elbo", "test_reconstruction", "test_kl"):
        assert metrics[name] == last[name]
    assert metrics["train_elbo_epoch_mean"] == last["train_elbo"]
    assert "running mean" in metrics["notes"]["train_elbo"] and "final weights" in metrics["notes"]["train_elbo"]
    assert metrics["warnings"] == []


def test_test_log_likelihood_when_asked(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), *FAST, "--set", "train.epochs=1",
                 "--set", "train.log_likelihood_samples=20"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_log_likelihood_samples"] == 20
    assert metrics["test_elbo"] - 1 < metrics["test_log_likelihood"] < 0
    assert f"test log p(x) {metrics['test_log_likelihood']:7.2f}  (importance sampled, K=20" in out
    assert "running mean" in out and "final weights" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"ppl-vae {ppl_vae.__version__}"
    assert ppl_vae.__version__[0].isdigit()


def test_a_dataset_name_points_to_its_config(capsys):
    assert "the shipped config 'default' trains on it: 'ppl-vae train default'" in error_of(capsys, ["train", "digits"])


# -- GECO says when it went wrong ----------------------------------------------------------------


def test_geco_at_its_clamp_warns_in_metrics_and_on_the_command_line(tmp_path, capsys):
    geco = ["train.epochs=1", "objective.name=geco", "objective.tolerance=0.01", "objective.rate=1",
            "objective.lambda_max=100"]
    assert main(["train", "--out", str(tmp_path / "run"), *FAST, *[arg for s in geco for arg in ("--set", s)]]) == 0
    err = capsys.readouterr().err
    assert "ppl-vae: warning: GECO: λ ended at its clamp lambda_max=100" in err
    assert "ppl-vae: warning: GECO: the constraint is still unmet" in err
    assert len(json.loads((tmp_path / "run" / "metrics.json").read_text())["warnings"]) == 2


def test_geco_default_rate_is_calibrated_on_the_first_step():
    assert GECO(tolerance=0.1).rate is None
    run = fit(from_dict(tiny(objective={"name": "geco", "tolerance": 0.1})))
    history = run.objective.history
    first = history["constraint"][0]
    assert run.objective.rate == pytest.approx(RELATIVE_RATE / abs(first))
    assert math.log(history["lambda"][1]) == pytest.approx(math.copysign(RELATIVE_RATE, first))  # λ starts at 1


# -- allocation failures -------------------------------------------------------------------------


@pytest.mark.parametrize("error, becomes", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 25600000000 bytes."), TrainingError),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), TrainingError),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), RuntimeError),  # not an allocation failure: as it was
])
def test_a_step_out_of_memory_names_the_settings_that_size_it(error, becomes, monkeypatch):
    def step(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(loop.SVIStep, "loss_and_grads", step)
    with pytest.raises(becomes) as raised:
        fit(from_dict(tiny(objective={"name": "elbo", "num_particles": 7})))
    if becomes is TrainingError:
        assert "ran out of memory" in str(raised.value)
        assert "objective.num_particles=7, data.batch_size=100, model.latent_dim=2" in str(raised.value)


# -- damaged checkpoints: a property test --------------------------------------------------------


class Foreign:
    """A class no checkpoint holds; unpickling it would create the file ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def paths(value, prefix=()) -> list[tuple]:
    """Every key path into the nested dicts and lists of a checkpoint (tensors and tuples are leaves)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        return found + [p for key, child in value.items() for p in paths(child, (*prefix, key))]
    if isinstance(value, list) and len(value) < 20:
        return found + [p for index, child in enumerate(value) for p in paths(child, (*prefix, index))]
    return found


def damaged(checkpoint: dict, path: tuple, action: str, replacement):
    """A copy of ``checkpoint`` with the value at ``path`` deleted or replaced."""
    copy = _copy(checkpoint)
    *parents, last = path
    target = copy
    for key in parents:
        target = target[key]
    if action == "delete" and isinstance(target, dict):
        del target[last]
    elif action == "delete":
        target.pop(last)
    else:
        target[last] = replacement
    return copy


def _copy(value):
    if isinstance(value, dict):
        return {key: _copy(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_copy(child) for child in value]
    return value


OUTCOMES = {"examples": 0, "our error": 0, "worked": 0}
WRONG_VALUES = st.sampled_from([None, "x", -1, 2.5, True, [], {}, torch.zeros(3), torch.zeros(2, 2, dtype=torch.int64)])


@pytest.mark.filterwarnings("ignore:PSIS")  # two samples per datapoint: too few for PSIS
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), kind=st.sampled_from(["delete", "replace", "replace", "truncate", "foreign"]))
def test_damaged_checkpoints_resume_and_evaluate_or_end_in_our_error(finished, data, kind, capsys):
    checkpoint = torch.load(finished / "checkpoint.pt", weights_only=False)
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        shutil.copytree(finished, run)
        marker = Path(folder) / "executed"
        if kind == "truncate":
            raw = (finished / "checkpoint.pt").read_bytes()
            (run / "checkpoint.pt").write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
        elif kind == "foreign":
            where = data.draw(st.sampled_from([(), *paths(checkpoint)]))
            damage = Foreign(str(marker)) if not where else damaged(checkpoint, where, "replace", Foreign(str(marker)))
            torch.save(damage, run / "checkpoint.pt")
        else:
            where = data.draw(st.sampled_from(paths(checkpoint)))
            torch.save(damaged(checkpoint, where, kind, data.draw(WRONG_VALUES)), run / "checkpoint.pt")
        codes = [main(["train", "--resume", str(run), "--set", "train.epochs=2"]),
                 main(["eval", str(run), "--num-samples", "2", "--device", "cpu"])]
        err = capsys.readouterr().err
        assert set(codes) <= {0, 2} and "Traceback" not in err
        assert not marker.exists()  # nothing in the file ran
        if kind in ("truncate", "foreign"):
            assert codes == [2, 2] and "checkpoint" in err
    OUTCOMES["examples"] += 1
    OUTCOMES["our error"] += 2 in codes
    OUTCOMES["worked"] += codes == [0, 0]


def test_report_fuzz_counts():
    """Prints how many damaged checkpoints the property test made and how they ended (run with -s)."""
    print(f"\ndamaged checkpoints: {OUTCOMES}")
    assert OUTCOMES["examples"] == 0 or OUTCOMES["our error"] > 0
