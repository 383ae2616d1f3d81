"""Training on the embedded digits: it learns, it is reproducible, the run directory is complete."""

import json
import math

import pytest
import torch

from ppl_vae.cli import main
from ppl_vae.config import from_dict
from ppl_vae.runs import fit
from ppl_vae.training import Callback

QUICK = {"train": {"epochs": 6, "eval_every": 3, "checkpoint_every": 3, "progress": False},
         "model": {"latent_dim": 2}, "optim": {"lr": 0.003}}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return fit(from_dict(QUICK), tmp_path_factory.mktemp("run"))


def test_training_improves_the_test_elbo(quick_run):
    tested = [record["test_elbo"] for record in quick_run.history if "test_elbo" in record]
    assert len(tested) == 2
    assert tested[-1] > tested[0]
    # an untrained VAE scores far worse: the Bernoulli cross-entropy of 64 pixels at p = 1/2 is 64 log 2
    assert quick_run.metrics["test_elbo"] > -64 * torch.log(torch.tensor(2.0)).item() / 1.5


def test_same_seed_gives_the_same_numbers(quick_run, tmp_path):
    again = fit(from_dict(QUICK), tmp_path / "again")
    assert again.history == [
        {**record, "seconds": again_record["seconds"], "epoch_seconds": again_record["epoch_seconds"]}
        for record, again_record in zip(quick_run.history, again.history)
    ]
    for name, tensor in quick_run.vae.state_dict().items():
        torch.testing.assert_close(again.vae.state_dict()[name], tensor, rtol=0, atol=0)


def test_fit_tells_extra_callbacks_of_every_step_and_epoch(tmp_path):
    class Recorder(Callback):
        def __init__(self):
            self.losses, self.epochs = [], []

        def on_step(self, state, loss):
            self.losses.append((state.step, float(loss)))

        def on_epoch_end(self, state):
            self.epochs.append((state.epoch, dict(state.history[-1])))

    recorder = Recorder()
    run = fit(from_dict({**QUICK, "train": {**QUICK["train"], "epochs": 2}}), callbacks=[recorder])
    steps_per_epoch = -(-run.dataset.train.shape[0] // run.config.data.batch_size)
    assert [step for step, _ in recorder.losses] == list(range(1, 2 * steps_per_epoch + 1))
    assert all(math.isfinite(loss) for _, loss in recorder.losses)
    # told after the run's own callbacks: the evaluation's numbers are already in the epoch's record
    assert recorder.epochs == [(1, run.history[0]), (2, run.history[1])]
    assert "test_elbo" in recorder.epochs[-1][1]


def test_history_terms_add_up(quick_run):
    for record in quick_run.history:
        assert record["train_elbo"] == pytest.approx(record["train_reconstruction"] - record["train_kl"])
        assert record["train_kl"] >= 0


def test_run_directory_holds_every_artifact(quick_run):
    names = {path.name for path in quick_run.out_dir.iterdir()}
    assert {"config.yaml", "history.json", "checkpoint.pt", "metrics.json", "reconstructions.png",
            "samples.png", "training_curves.png", "latent_scatter.png", "manifold.png"} <= names
    metrics = json.loads((quick_run.out_dir / "metrics.json").read_text())
    assert {"train_elbo", "test_elbo", "seconds"} <= set(metrics)
    assert metrics["test_elbo"] < 0  # a log-probability of binary-like data


def test_resume_trains_on_from_the_checkpoint(tmp_path):
    first = fit(from_dict(QUICK), tmp_path / "run")
    longer = from_dict({**QUICK, "train": {**QUICK["train"], "epochs": 9}})
    resumed = fit(longer, tmp_path / "run", resume=True)
    assert [r["epoch"] for r in resumed.history] == list(range(1, 10))
    assert resumed.history[:6] == first.history


def test_meanfield_and_particles_train(tmp_path):
    config = from_dict({**QUICK, "objective": {"name": "meanfield", "num_particles": 3,
                                               "beta": {"name": "linear", "duration": 3}},
                        "optim": {"name": "adagrad", "lr": 0.05, "weight_decay": 1e-4}})
    run = fit(config)
    assert [round(r["beta"], 3) for r in run.history] == [0.0, 0.333, 0.667, 1.0, 1.0, 1.0]
    assert run.metrics["test_elbo"] > -60


def test_cli_train_and_configs(tmp_path, capsys):
    assert main(["configs"]) == 0
    assert "default" in capsys.readouterr().out
    code = main(["train", "--out", str(tmp_path / "cli"), "--set", "train.epochs=2", "--set", "train.progress=false"])
    assert code == 0
    out = capsys.readouterr().out
    assert "test ELBO" in out and "nats per datapoint" in out
    assert main(["train", "--set", "model.latent_dim=0"]) == 2
    assert "model.latent_dim" in capsys.readouterr().err


def test_cli_parts_lists_every_registry_with_options(capsys):
    assert main(["parts"]) == 0
    out = capsys.readouterr().out
    for section in ("data.name", "model.encoder, model.decoder", "model.prior", "model.posterior", "model.likelihood",
                    "objective.beta", "objective (objectives)"):
        assert section in out
    assert "num_particles=5, gradient='standard'" in out  # iwae's options, from its signature
    assert "mnist-binarized        MNIST with dynamic binarization (Burda et al. 2015), on" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("objective", [{"name": "elbo"}, {"name": "meanfield"}, {"name": "iwae"},
                                       {"name": "geco", "tolerance": 0.1}])
def test_training_steps_on_cuda_never_wait_for_the_host(objective):
    """After the first, validated step, a training step (batch, loss, gradients, update, terms) makes
    no host sync: torch raises on any under ``set_sync_debug_mode("error")``."""
    import pyro
    from pyro.infer import SVI

    from ppl_vae.build import build
    from ppl_vae.data import batches
    from ppl_vae.training.loop import SVIStep

    setup = build(from_dict({**QUICK, "device": "cuda", "objective": objective}))
    svi_step = SVIStep(SVI(setup.vae.model, setup.vae.guide, setup.optimizer, loss=setup.objective,
                           loss_and_grads=setup.objective.loss_and_grads))
    epoch = batches(setup.dataset.train, 64, torch.Generator().manual_seed(0), binarize=True)
    beta = 0.5 if setup.objective.supports_beta else 1.0  # GECO refuses a β: its λ weighs the terms
    svi_step(next(epoch), kl_weight=beta)
    with pyro.validation_enabled(False):
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _, x in zip(range(5), epoch):
                svi_step(x, kl_weight=beta)
                setup.objective.terms()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("objective, compile", [({"name": "elbo"}, False), ({"name": "elbo"}, True),
                                                ({"name": "iwae"}, False), ({"name": "iwae"}, True),
                                                ({"name": "geco", "tolerance": 0.1}, False)])
def test_training_step_updates_exactly_as_pyros_svi_step(objective, compile):
    """``SVIStep`` collects the parameters around the model and the guide and keeps them out of the
    ELBO's traces (around the whole loss where it is compiled); Pyro's ``SVI.step`` collects them
    from the traces. The same draws give the same parameters after each step, to the bit."""
    import pyro
    from pyro.infer import SVI

    from ppl_vae.build import build
    from ppl_vae.data import batches
    from ppl_vae.training.loop import SVIStep

    config = from_dict({**QUICK, "objective": objective, "train": {**QUICK["train"], "compile": compile}})
    runs = []
    for ours in (True, False):
        pyro.clear_param_store()
        setup = build(config)
        svi = SVI(setup.vae.model, setup.vae.guide, pyro.optim.Adam({"lr": 0.01}), loss=setup.objective,
                  loss_and_grads=setup.objective.loss_and_grads)
        step = SVIStep(svi) if ours else svi.step
        pyro.set_rng_seed(0)
        states = []
        for _, x in zip(range(3), batches(setup.dataset.train, 32, torch.Generator().manual_seed(0), binarize=True)):
            step(x)
            states.append({name: value.clone() for name, value in setup.vae.state_dict().items()})
        runs.append((states, setup.objective))
    (ours, objective_ours), (pyros, _) = runs
    assert [state.keys() for state in ours] == [state.keys() for state in pyros]
    for state, expected in zip(ours, pyros):
        torch.testing.assert_close(state, expected, rtol=0, atol=0)
    assert not all(torch.equal(ours[0][name], ours[-1][name]) for name in ours[0])  # they did train
    if objective["name"] == "elbo" and not compile:
        model_trace, guide_trace = objective_ours.elbo.last_traces
        assert not [name for trace in (model_trace, guide_trace) for name, site in trace.nodes.items()
                    if site["type"] == "param"]
