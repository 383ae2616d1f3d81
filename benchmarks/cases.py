"""The benchmark cases: each runs ppl_vae's public path and the plain-PyTorch baseline
(:mod:`benchmarks.baseline`) on the same network, batch, data and device, interleaved.

- ``step``: one SVI step (:func:`ppl_vae.training.loop.svi_step`, as ``train`` takes it after its
  first, validated step; also with the compiled loss of ``train.compile`` where the objective has
  one) against one Adam step of the baseline, on the same batch;
- ``epoch``: one full epoch through :func:`ppl_vae.runs.fit` (data pipeline, progress bar, callbacks
  and history included; the epoch's wall time from the history, so building the run and the
  evaluations after the epoch are left out), also with ``train.compile`` where the objective has a
  compiled loss, against the baseline's epoch over the same data;
- both against the baseline with torch's default Adam (a plain loop as it is usually written), and on
  a CPU also against the baseline with the fused Adam that ppl_vae's optimizer uses there
  (``baseline_fused_adam``, its ratio that baseline's / the default's), which tells how much of our
  ratio that choice makes;
- ``log_likelihood``: :func:`ppl_vae.evaluation.importance_sample` with and without PSIS against the
  baseline's importance sampler, with the same weights, K samples per datapoint, 100 datapoints by
  100 samples at a time;
- ``cli``: the wall time of ``ppl-vae --help`` and of a config typo's error, each a fresh process.

Throughputs are datapoints per second; ratios are ours / the baseline's throughput (medians).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import pyro
import torch
from pyro.infer import SVI

from benchmarks import baseline
from benchmarks.timing import interleave, paired_ratio, timed
from ppl_vae.build import Setup, build, build_optimizer, check
from ppl_vae.config import Config, load_config
from ppl_vae.data import evaluation_split
from ppl_vae.errors import DiagnosticWarning
from ppl_vae.evaluation import importance_sample
from ppl_vae.objectives import OBJECTIVES
from ppl_vae.runs import fit
from ppl_vae.training.loop import svi_step

OBJECTIVE_SPECS = {"elbo": "{name: elbo}", "meanfield": "{name: meanfield}", "iwae": "{name: iwae, num_particles: 5}"}


@dataclass
class Settings:
    """What to measure: the dataset of the ``mnist`` config's 784-200-200-50 VAE (``digits`` for a
    quick check), the objectives and batch sizes, repetitions and sizes."""

    dataset: str = "mnist-binarized"
    device: str = "auto"
    objectives: tuple[str, ...] = ("elbo", "meanfield", "iwae")
    batch_sizes: tuple[int, ...] = (100, 128, 512)
    repeats: int = 3
    epoch_repeats: int = 3  # an epoch is long (an IWAE epoch is 10 s on one core); odd, so the median is a round's
    log_likelihood_repeats: int = 7  # its runs spread by +-10 % on a shared CPU, PSIS costs about 2 %
    steps: int = 20  # steps per repetition of the step benchmark
    num_samples: int = 1000  # K of the log-likelihood benchmark
    test_points: int = 300  # test images of the log-likelihood benchmark
    cli_repeats: int = 3


def bench_config(settings: Settings, objective: str, batch_size: int) -> Config:
    """The ``mnist`` config (784-200-200-50 tanh MLPs, Bernoulli, Adam 1e-3) with this objective,
    batch size and dataset, one epoch, the progress bar on."""
    return check(load_config("mnist", [
        f"data.name={settings.dataset}", f"data.batch_size={batch_size}", f"objective={OBJECTIVE_SPECS[objective]}",
        f"device={settings.device}", "train.epochs=1", "train.eval_every=1", "train.progress=true",
    ]))


def plain_copy(setup: Setup) -> baseline.PlainVAE:
    """The baseline VAE with the same weights as ppl_vae's freshly built one."""
    vae = setup.vae
    plain = baseline.PlainVAE(setup.dataset.data_dim, tuple(setup.config.model.encoder.options["hidden_sizes"]),
                              setup.config.model.latent_dim).to(setup.device)
    plain.encoder.load_state_dict(vae.encoder.state_dict())
    plain.decoder.load_state_dict(vae.decoder.state_dict())
    return plain


def plain_adam(plain: baseline.PlainVAE, lr: float, fused: bool = False) -> torch.optim.Adam:
    """The baseline's Adam: torch's default implementation, as a plain loop writes it, or (``fused``) the
    fused one that ppl_vae's optimizer picks on a CPU, to show how much of a ratio that choice makes."""
    return torch.optim.Adam(plain.parameters(), lr=lr, **({"fused": True} if fused else {}))


def baselines(device: torch.device) -> dict[str, bool]:
    """The baseline sides, by name: torch's default Adam, and on a CPU also the fused Adam ours uses there."""
    return {"baseline": False, **({"baseline_fused_adam": True} if device.type == "cpu" else {})}


def step_case(settings: Settings, objective: str, batch_size: int) -> dict[str, Any]:
    """``settings.steps`` training steps on one batch, ours and the baseline's."""
    setup = build(bench_config(settings, objective, batch_size))
    svi = SVI(setup.vae.model, setup.vae.guide, setup.optimizer, loss=setup.objective,
              loss_and_grads=setup.objective.loss_and_grads)
    loss = baseline.LOSSES[objective]
    x = evaluation_split(setup.dataset, "train")[:batch_size]

    def steps(svi: SVI) -> Callable[[], float]:
        def run() -> float:
            with pyro.validation_enabled(False):
                return timed(lambda: [svi_step(svi, x, kl_weight=1.0) for _ in range(settings.steps)], setup.device)
        return run

    def plain_steps(fused: bool) -> Callable[[], float]:
        plain = plain_copy(setup)
        optimizer = plain_adam(plain, setup.config.optim.lr, fused)
        return lambda: timed(lambda: [baseline.train_step(plain, optimizer, loss, x) for _ in range(settings.steps)],
                             setup.device)

    runs = {"ours": steps(svi)}
    compiled = OBJECTIVES.get(objective)(**setup.config.objective.options)
    if compiled.compile():  # train.compile: true, where the objective has a compiled loss
        runs["ours_compiled"] = steps(SVI(setup.vae.model, setup.vae.guide, build_optimizer(setup.config.optim),
                                          loss=compiled, loss_and_grads=compiled.loss_and_grads))
    runs.update({name: plain_steps(fused) for name, fused in baselines(setup.device).items()})
    return interleave(runs, batch_size * settings.steps, settings.repeats, setup.device)


def epoch_case(settings: Settings, objective: str, batch_size: int) -> dict[str, Any]:
    """One epoch through ``fit`` against one epoch of the baseline, both from the same weights (no
    peak memory: ours' would be the whole ``fit`` call's, loading the dataset included; the step
    case measures a training step's)."""
    config = bench_config(settings, objective, batch_size)
    setup = build(config)
    train_x, device = setup.dataset.train, setup.device
    weights = plain_copy(setup).state_dict()

    def ours(config: Config) -> Callable[[], float]:
        def run() -> float:
            with contextlib.redirect_stderr(io.StringIO()):  # the progress bar is drawn, into a buffer
                return fit(config, figures=False).history[0]["epoch_seconds"]
        return run

    def plain_epoch(fused: bool) -> Callable[[], float]:
        def run() -> float:
            plain = plain_copy(setup)
            plain.load_state_dict(weights)
            optimizer = plain_adam(plain, config.optim.lr, fused)
            generator = torch.Generator(device).manual_seed(config.seed)  # its draws stay on the device, as ours do
            return timed(lambda: baseline.train_epoch(plain, optimizer, baseline.LOSSES[objective], train_x,
                                                      batch_size, generator), device)
        return run

    runs = {"ours": ours(config)}
    if OBJECTIVES.get(objective)(**config.objective.options).compile():  # train.compile: true, where it compiles
        runs["ours_compiled"] = ours(replace(config, train=replace(config.train, compile=True)))
    runs.update({name: plain_epoch(fused) for name, fused in baselines(device).items()})
    return interleave(runs, train_x.shape[0], settings.epoch_repeats, device,
                      warm_up=False)  # an epoch is long: the first one's one-off costs hardly count


def log_likelihood_case(settings: Settings) -> dict[str, Any]:
    """Importance-sampled log p(x) of the first ``test_points`` test images, K = ``num_samples``."""
    setup = build(bench_config(settings, "meanfield", 100))
    vae, plain = setup.vae, plain_copy(setup)
    x = evaluation_split(setup.dataset, "test")[:settings.test_points]
    estimates: dict[str, torch.Tensor] = {}

    def ours(psis: bool):
        def run() -> float:
            def sample() -> None:
                with warnings.catch_warnings():  # untrained weights: k̂ is high, and only the time matters here
                    warnings.simplefilter("ignore", DiagnosticWarning)
                    estimates["ours"] = importance_sample(vae.model, vae.guide, x, num_samples=settings.num_samples,
                                                          psis=psis).log_likelihood
            return timed(sample, setup.device)
        return run

    def plain_sampler() -> float:
        def sample() -> None:
            estimates["baseline"] = baseline.importance_log_likelihood(plain, x, settings.num_samples)
        return timed(sample, setup.device)

    result = interleave({"ours": ours(False), "ours_psis": ours(True), "baseline": plain_sampler},
                        x.shape[0], settings.log_likelihood_repeats, setup.device)
    result["mean_log_likelihood"] = {name: value.mean().item() for name, value in estimates.items()}
    result["psis_overhead"] = 1 / paired_ratio(result["ours"]["seconds"], result["ours_psis"]["seconds"]) - 1
    return result


def cli_case(settings: Settings) -> dict[str, Any]:
    """Wall seconds of fresh ``ppl-vae`` processes answering ``--help`` and a config typo."""
    script = shutil.which("ppl-vae", path=str(Path(sys.executable).parent)) or shutil.which("ppl-vae")
    command = [script] if script else [sys.executable, "-c", "import sys; from ppl_vae.cli import main; "
                                                             "sys.exit(main())"]
    commands = {"help": [*command, "--help"], "config_typo": [*command, "train", "--set", "model.likelihood=bernouli"]}
    results = {}
    for name, arguments in commands.items():
        seconds, answer = [], None
        for _ in range(settings.cli_repeats):
            start = time.perf_counter()
            answer = subprocess.run(arguments, capture_output=True, text=True)
            seconds.append(time.perf_counter() - start)
        results[name] = {"command": " ".join(["ppl-vae", *arguments[len(command):]]), "median_seconds":
                         statistics.median(seconds), "seconds": seconds, "exit_code": answer.returncode,
                         "first_line": (answer.stderr or answer.stdout).strip().splitlines()[0][:200]}
    return results
