"""Faults during training lose no run: NaN/Inf stops at the step with the last checkpoint intact,
gradient clipping, checkpoints that survive SIGKILL and refuse foreign files, Ctrl-C saves and resumes
exactly (CPU, one thread: bit-for-bit the same parameters as an uninterrupted run)."""

from __future__ import annotations

import functools
import itertools
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from ppl_vae.training.checkpoint import load_checkpoint
from ppl_vae.cli import main
from ppl_vae.config import from_dict, load_config
from ppl_vae.data import DATASETS, load_digits
from ppl_vae.errors import CheckpointError, TrainingError, TrainingInterrupted
from ppl_vae.parts.nets import NETS, mlp
from ppl_vae.build import build_optimizer as make_optimizer
from ppl_vae.runs import fit
from ppl_vae import runs
from ppl_vae.build import build
from ppl_vae.data import batches as data_batches
from ppl_vae.runs import save_run_state
from ppl_vae.training import loop
from ppl_vae.training.callbacks import NonFiniteGuard, non_finite_parameters
from ppl_vae.training.state import TrainingState

QUICK = {"device": "cpu", "train": {"epochs": 3, "eval_every": 1, "checkpoint_every": 1, "progress": False},
         "optim": {"lr": 0.003}}  # exact resume is promised on CPU


def faulty_mlp(
    in_features: int, out_features: int, *, at_call: int, fault: Literal["nan_output", "inf_gradient"]
) -> torch.nn.Sequential:
    """The default MLP (same parameters, same initialization), whose training forward passes from
    number ``at_call`` on output NaN or send Inf gradients back."""
    net = mlp(in_features, out_features, hidden_sizes=[200])
    calls = itertools.count(1)

    def inject(module, inputs, output):
        if torch.is_grad_enabled() and next(calls) >= at_call:
            if fault == "nan_output":
                return output * float("nan")
            output.register_hook(lambda grad: torch.full_like(grad, float("inf")))
        return output

    net.register_forward_hook(inject)
    return net


@pytest.fixture
def faulty_net(monkeypatch):
    """Registers ``faulty_mlp`` as the network "test-faulty" for one test only."""
    monkeypatch.setattr(NETS, "_factories", {**NETS._factories, "test-faulty": faulty_mlp})


def same_parameters(state: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> bool:
    return state.keys() == other.keys() and all(torch.equal(state[name], other[name]) for name in state)


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in ("seconds", "epoch_seconds")} for record in history]


# -- NaN / Inf -----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("fault, message", [
    ("nan_output", r"the loss became nan at step 20 \(epoch 2, batch 5\)\. Likely causes: a learning rate"),
    ("inf_gradient", r"a gradient became NaN or Inf at step 20 \(epoch 2, batch 5\): the loss was finite "
                     r"\(-?[0-9.]+\) but the update made .*decoder\.0\.weight.* non-finite\. Likely cause: exploding"),
])
@pytest.mark.parametrize("check_every", [None, 4])  # the default (every step's loss, on the CPU) and a GPU's
def test_non_finite_loss_or_gradient_stops_at_its_step_and_keeps_the_checkpoint(
    fault, message, check_every, faulty_net, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(runs, "NonFiniteGuard", functools.partial(NonFiniteGuard, check_every=check_every))
    faulty = {**QUICK, "model": {"decoder": {"name": "test-faulty", "at_call": 20, "fault": fault}}}
    with pytest.raises(TrainingError, match=message):
        fit(from_dict(faulty), tmp_path / "run")  # 15 steps per epoch: step 20 is in epoch 2
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (saved["training"]["epoch"], saved["training"]["step"]) == (1, 15)
    one_epoch = fit(from_dict({**QUICK, "train": {**QUICK["train"], "epochs": 1}}))
    assert same_parameters(saved["module"], one_epoch.vae.state_dict())  # the good state of epoch 1, intact
    assert main(["train", "--out", str(tmp_path / "cli"), "--set", "train.progress=false",
                 "--set", f"model.decoder={{name: test-faulty, at_call: 3, fault: {fault}}}"]) == 2
    assert "at step 3 (epoch 1, batch 3)" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("fault, at_step, message", [
    ("nan_output", 20, "the loss became nan at step 20 (epoch 2, batch 5)"),
    ("inf_gradient", 20, "a gradient became NaN or Inf at step 20 (epoch 2, batch 5)"),
    ("inf_gradient", 15, "a gradient became NaN or Inf at step 15 (epoch 1, batch 15)"),  # an epoch's last update
])
def test_a_non_finite_step_leaves_the_parameters_as_the_guard_found_them(fault, at_step, message, faulty_net):
    """On the CPU the loss is read before its update: a NaN loss never reaches the parameters, and the
    update that made them non-finite is named exactly, also when it was an epoch's last."""
    config = from_dict({**QUICK, "model": {"decoder": {"name": "test-faulty", "at_call": at_step, "fault": fault}}})
    setup = build(config)
    svi = SVI(setup.vae.model, setup.vae.guide, setup.optimizer, loss=setup.objective,
              loss_and_grads=setup.objective.loss_and_grads)
    state = TrainingState(torch.Generator().manual_seed(config.seed))
    batches = lambda generator: ((batch,) for batch in data_batches(setup.dataset.train, 100, generator))  # noqa: E731
    with pytest.raises(TrainingError) as raised:
        loop.train(svi, setup.objective, setup.schedule, batches, 3, state, [NonFiniteGuard(setup.vae)])
    assert message in str(raised.value)
    broken = non_finite_parameters(setup.vae)
    assert broken == [] if fault == "nan_output" else "decoder.0.weight" in broken


def test_a_checkpoint_never_holds_a_non_finite_parameter(tmp_path):
    run = fit(from_dict({**QUICK, "train": {**QUICK["train"], "epochs": 1}}), tmp_path)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        run.vae.decoder[0].bias[3] = float("inf")
    setup = replace(build(run.config), vae=run.vae)
    with pytest.raises(TrainingError, match=r"made decoder\.0\.bias non-finite .* no checkpoint was saved"):
        save_run_state(tmp_path, setup, TrainingState(torch.Generator()))
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved


@pytest.mark.parametrize("clip_norm, clipped", [(None, [30.0, 40.0]), (100.0, [30.0, 40.0]), (5.0, [3.0, 4.0])])
def test_clip_norm_clips_the_gradient_the_optimizer_sees(clip_norm, clipped):
    weights = torch.tensor([30.0, 40.0])  # the gradient of the loss p·weights, of norm 50

    def model():
        pyro.factor("loss", -(pyro.param("p", torch.zeros(2)) * weights).sum())

    optimizer = make_optimizer(from_dict({"optim": {"lr": 0.1, "clip_norm": clip_norm}}).optim)
    SVI(model, lambda: None, optimizer, Trace_ELBO()).step()
    first_moment = optimizer.get_state()["p"]["state"][0]["exp_avg"]  # Adam: (1 - 0.9) · gradient
    torch.testing.assert_close(first_moment, 0.1 * torch.tensor(clipped))


# -- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    fit(from_dict({**QUICK, "train": {**QUICK["train"], "epochs": 1}}), out)
    return out


def test_truncated_checkpoint_is_refused(finished_run, tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes((finished_run / "checkpoint.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="is truncated or corrupted"):
        fit(from_dict(QUICK), tmp_path, resume=True)
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert f"checkpoint '{tmp_path / 'checkpoint.pt'}' is truncated or corrupted" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").stat().st_size == 5000  # refused, left as it was


@pytest.mark.parametrize("foreign", ["state_dict", "text"])
def test_foreign_checkpoint_is_refused(foreign, tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    if foreign == "state_dict":  # a plain torch file, written by something else
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    else:
        path.write_text("epoch: 3\n")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    expected = "is not a ppl_vae checkpoint" if foreign == "state_dict" else "is truncated or corrupted, or not"
    assert f"'{path}' {expected}" in capsys.readouterr().err


def test_checkpoint_of_another_model_is_refused(finished_run, capsys):
    assert main(["train", "--resume", str(finished_run), "--set", "model.latent_dim=3"]) == 2
    err = capsys.readouterr().err
    assert "model.latent_dim: 2 -> 3" in err and "must match the checkpoint" in err


# -- Ctrl-C, in process --------------------------------------------------------------------------


def interrupt_at(call: int):
    """The training loop's loss and gradients, sending this process SIGINT (Ctrl-C) as its ``call``-th step begins."""
    step, calls = loop.SVIStep.loss_and_grads, itertools.count(1)

    def interrupted_step(self, *args, **kwargs):
        if next(calls) == call:
            signal.raise_signal(signal.SIGINT)
        return step(self, *args, **kwargs)

    return interrupted_step


@pytest.mark.parametrize("dataset", ["digits", "digits-binarized"])
def test_ctrl_c_saves_mid_epoch_and_resumes_exactly(dataset, monkeypatch, tmp_path):
    monkeypatch.setitem(DATASETS._factories, "digits-binarized", lambda data_dir, download=True: replace(
        load_digits(data_dir), name="digits-binarized", dynamic_binarization=True))  # batches draw from the generator
    config = from_dict({**QUICK, "data": {"name": dataset}, "objective": {"name": "elbo"},
                        "train": {**QUICK["train"], "checkpoint_every": 3}})
    straight = fit(config)
    with monkeypatch.context() as patch:
        patch.setattr(loop.SVIStep, "loss_and_grads", interrupt_at(20))
        with pytest.raises(TrainingInterrupted) as stop:
            fit(config, tmp_path)
    assert stop.value.checkpoint == str(tmp_path / "checkpoint.pt")
    assert f"checkpoint saved to {tmp_path / 'checkpoint.pt'}" in str(stop.value)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (saved["training"]["epoch"], saved["training"]["step"], saved["training"]["epoch_step"]) == (1, 20, 5)  # the 20th step completed
    resumed = fit(config, tmp_path, resume=True)
    assert same_parameters(resumed.vae.state_dict(), straight.vae.state_dict())
    assert without_timings(resumed.history) == without_timings(straight.history)


# -- killed and interrupted processes ------------------------------------------------------------

SLOW = ["--set", "device=cpu", "--set", "train.epochs=3", "--set", "data.batch_size=20",
        "--set", "train.eval_every=100", "--set", "train.progress=false"]  # 75 steps per epoch


def start_training(out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads as the tests: the same sums
    return subprocess.Popen([sys.executable, "-m", "ppl_vae.cli", "train", "--out", str(out), *SLOW, *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def straight_slow_run() -> dict[str, torch.Tensor]:
    """The parameters of the subprocess tests' run, trained without interruption."""
    return fit(load_config("default", [arg for arg in SLOW if arg != "--set"])).vae.state_dict()


def test_sigkill_mid_run_then_resume_loses_only_the_work_since_the_checkpoint(straight_slow_run, tmp_path, capsys):
    process = start_training(tmp_path, "--set", "train.checkpoint_every=1")
    wait_for(tmp_path / "checkpoint.pt", process)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (saved["training"]["epoch"], saved["training"]["step"]) == (1, 75) and not (tmp_path / "metrics.json").exists()
    assert main(["train", "--resume", str(tmp_path)]) == 0
    assert "3 epochs, 225 steps" in capsys.readouterr().out
    final = load_checkpoint(tmp_path / "checkpoint.pt")
    assert final["training"]["history"][:1] == saved["training"]["history"]  # the checkpointed epochs are kept, not redone
    assert same_parameters(final["module"], straight_slow_run)


def test_sigint_saves_a_checkpoint_exits_130_and_resumes_exactly(straight_slow_run, tmp_path, capsys):
    process = start_training(tmp_path, "--set", "train.checkpoint_every=3")
    wait_for(tmp_path / "config.yaml", process)
    time.sleep(0.2)  # into the first epoch
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert f"checkpoint saved to {tmp_path / 'checkpoint.pt'}" in err and f"--resume {tmp_path}" in err
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert 0 < saved["training"]["step"] < 225
    assert main(["train", "--resume", str(tmp_path)]) == 0
    assert "3 epochs, 225 steps" in capsys.readouterr().out
    assert same_parameters(load_checkpoint(tmp_path / "checkpoint.pt")["module"], straight_slow_run)
