"""Data-parallel training: two gloo processes on CPU train as one process does on the same global batch.

The comparison with one process needs the sampling noise out of the way (each process draws its own;
a single process draws other numbers for the same rows): the processes and the reference train a VAE
whose posterior is a point mass up to a standard deviation of 1e-6, so z = mu(x) to 1e-6 and the
gradients are those of the data alone.
"""

import os
import subprocess
import sys
from pathlib import Path

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae.cli import main
from ppl_vae.config import from_dict
from ppl_vae.errors import ConfigError
from ppl_vae.parts.posteriors import POSTERIORS
from ppl_vae.training.checkpoint import load_checkpoint
from ppl_vae.training.distributed import Processes, launch, shard_rows

ROWS, BATCH = 1500, 99  # digits' training rows; batches of 99 (and a last one of 15) split unevenly over 2 processes
CONFIG = {
    "data": {"name": "digits", "batch_size": BATCH},
    "model": {"latent_dim": 2, "posterior": "nearly_point", "encoder": {"name": "mlp", "hidden_sizes": [32]},
              "decoder": {"name": "mlp", "hidden_sizes": [32]}},
    "objective": {"name": "geco", "tolerance": 0.3, "wraps": "meanfield"},
    "optim": {"lr": 0.003},
    "train": {"epochs": 2, "eval_every": 1, "checkpoint_every": 1, "progress": False},
}


class NearlyPoint(nn.Module):
    """q(z|x) = N(mu(x), (1e-6)^2 I): the encoder gives mu."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.num_params = latent_dim

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(params, 1e-6).to_event(1)


def config(epochs: int):
    return from_dict({**CONFIG, "train": {**CONFIG["train"], "epochs": epochs}})


def outcome(run) -> dict:
    return {"parameters": {name: value.detach().clone() for name, value in run.vae.state_dict().items()},
            "lambda": run.objective.lam, "history": run.history}


def train_as_one_of_two(root: str) -> None:
    """One of the two processes: an uninterrupted run, and the same run stopped after its first epoch
    and resumed; writes its outcomes and the paths it wrote under the run directories to rank<r>.pt."""
    import torch.distributed

    from ppl_vae.runs import fit

    torch.set_num_threads(1)
    POSTERIORS.register("nearly_point")(NearlyPoint)
    runs, written = Path(root) / "runs", []
    sys.addaudithook(lambda event, args: written.append((event, str(args[0]))) if (
        event in ("os.mkdir", "os.rename", "os.remove") or (event == "open" and any(mode in str(args[1]) for mode in "wax"))
    ) and str(args[0]).startswith(str(runs)) else None)
    torch.distributed.init_process_group("gloo")  # fit uses a group it finds, and leaves it
    whole = fit(config(2), runs / "whole", figures=False)
    first_epoch = fit(config(1), runs / "resumed", figures=False)
    resumed = fit(config(2), runs / "resumed", resume=True, figures=False)
    rank = torch.distributed.get_rank()
    torch.distributed.destroy_process_group()
    torch.save({"whole": outcome(whole), "first_epoch_metrics": first_epoch.metrics, "resumed": outcome(resumed),
                "written": written}, Path(root) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    assert launch(2, train_as_one_of_two, str(root)) == 0
    return root, [torch.load(root / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.fixture
def nearly_point(monkeypatch):
    monkeypatch.setattr(POSTERIORS, "_factories", dict(POSTERIORS._factories))
    POSTERIORS.register("nearly_point")(NearlyPoint)


def test_parameters_and_geco_lambda_are_identical_in_every_process(two_processes):
    _, (rank0, rank1) = two_processes
    for name, value in rank0["whole"]["parameters"].items():
        assert torch.equal(value, rank1["whole"]["parameters"][name]), name
    assert rank0["whole"]["lambda"] == rank1["whole"]["lambda"] != CONFIG["objective"].get("lambda_init", 1.0)
    train_terms = [{key: value for key, value in record.items() if key.startswith(("train_", "geco_"))}
                   for record in rank0["whole"]["history"]]
    assert train_terms == [{key: value for key, value in record.items() if key.startswith(("train_", "geco_"))}
                           for record in rank1["whole"]["history"]]


def test_two_processes_train_as_one_process_on_the_same_global_batch(two_processes, nearly_point):
    from ppl_vae.runs import fit

    _, (rank0, _) = two_processes
    single = fit(config(2), figures=False)
    for name, value in single.vae.state_dict().items():
        torch.testing.assert_close(rank0["whole"]["parameters"][name], value, rtol=0, atol=1e-5, msg=name)
    assert rank0["whole"]["lambda"] == pytest.approx(single.objective.lam, rel=1e-5)
    for distributed, alone in zip(rank0["whole"]["history"], single.history, strict=True):
        for key in ("train_elbo", "train_reconstruction", "train_kl", "train_constraint", "geco_c_ma", "test_elbo"):
            assert distributed[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-5), key
    assert rank0["whole"]["history"][-1]["step"] == single.history[-1]["step"] == 2 * -(-ROWS // BATCH)


def test_only_rank_0_writes_and_reports(two_processes):
    root, (rank0, rank1) = two_processes
    assert rank1["written"] == [] and rank1["first_epoch_metrics"] == {}
    names = {Path(path).name for _, path in rank0["written"]}
    assert {"config.yaml", "checkpoint.pt.tmp", "history.json", "objective.json", "metrics.json"} <= names
    assert "test_elbo" in rank0["first_epoch_metrics"]


def test_a_resumed_data_parallel_run_ends_where_an_uninterrupted_one_does(two_processes):
    root, ranks = two_processes
    for rank in ranks:
        for name, value in rank["whole"]["parameters"].items():
            assert torch.equal(rank["resumed"]["parameters"][name], value), name
        assert rank["resumed"]["lambda"] == rank["whole"]["lambda"]
    whole, resumed = (load_checkpoint(root / "runs" / name / "checkpoint.pt") for name in ("whole", "resumed"))
    assert resumed["objective"] == whole["objective"]  # GECO's λ, C_ma and per-step log
    assert [record["train_elbo"] for record in resumed["training"]["history"]] == [
        record["train_elbo"] for record in whole["training"]["history"]]


def test_every_batch_is_split_exactly_over_the_processes():
    from ppl_vae.data import batches

    x = torch.rand(23, 5)
    for world_size in (1, 2, 3):
        shards = [Processes(rank, world_size).shard(
            lambda generator: ((batch,) for batch in batches(x, 10, generator, binarize=True)), 23, 10)
            for rank in range(world_size)]
        whole = list(batches(x, 10, torch.Generator().manual_seed(1), binarize=True))
        parts = [[batch for (batch,) in shard(torch.Generator().manual_seed(1))] for shard in shards]
        for step, batch in enumerate(whole):  # every rank draws the same order and binarization, keeps its rows
            assert torch.equal(torch.cat([part[step] for part in parts]), batch)
            assert [part[step].shape[0] for part in parts] == [
                len(range(batch.shape[0])[shard_rows(batch.shape[0], rank, world_size)]) for rank in range(world_size)]


@pytest.mark.parametrize("rows, batch_size, world_size, smallest", [(23, 3, 4, 3), (23, 10, 4, 3), (20, 10, 11, 10)])
def test_a_batch_with_fewer_rows_than_processes_is_refused(rows, batch_size, world_size, smallest):
    with pytest.raises(ConfigError, match=f"data.batch_size: with {world_size} processes .* one of {smallest} rows"):
        Processes(0, world_size).shard(lambda generator: iter(()), rows, batch_size)


def test_nproc_trains_in_processes_that_only_rank_0_reports(tmp_path, capfd):
    out = tmp_path / "run"
    assert main(["train", "--nproc", "2", "--out", str(out), "--set", "train.epochs=1",
                 "--set", "train.progress=false", "--set", f"data.batch_size={BATCH}"]) == 0
    printed = capfd.readouterr().out
    assert printed.count("run directory:") == 1 and "16 steps" in printed
    assert load_checkpoint(out / "checkpoint.pt")["training"]["step"] == 16
    assert (out / "samples.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--nproc", "0"], "--nproc: the number of processes must be at least 1, got 0"),
    (["--nproc", "2", "--set", "train.epochs=0"], "train.epochs"),
])
def test_nproc_mistakes_are_refused_before_any_process_starts(argv, message, capsys):
    assert main(["train", *argv]) == 2
    assert message in capsys.readouterr().err


def test_nproc_under_torchrun_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--nproc", "2"]) == 2
    assert "drop --nproc and give the number of processes to torchrun" in capsys.readouterr().err


def test_a_mistyped_config_key_is_answered_without_importing_torch():
    probe = ("import sys; from ppl_vae.cli import main; status = main(['train', 'mnist', '--set', 'model.latnt_dim=3']); "
             "print(status, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ})
    assert result.stdout.split() == ["2", "False"]
    assert "model.latnt_dim: unknown key. Did you mean 'latent_dim'" in result.stderr
