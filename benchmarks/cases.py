"""The benchmark cases: each runs ppl_vae's public path and the plain-PyTorch baseline
(:mod:`benchmarks.baseline`) on the same network, batch, data and device, interleaved.

- ``step``: one SVI step (:class:`ppl_vae.training.loop.SVIStep`, as ``train`` takes it after its
  first, validated step; also with the compiled loss of ``train.compile`` where the objective has
  one) against one Adam step of the baseline, on the same batch, the sides taking turns step by step;
- ``epoch``: a full epoch through :func:`ppl_vae.runs.fit` (data pipeline, progress bar, callbacks
  and history included), the second of a two-epoch run, also with ``train.compile`` where the
  objective has a compiled loss, against the baseline's epoch over the same data, the two
  interleaved batch by batch inside ``fit`` (:class:`BaselineSteps`);
- both against the baseline with torch's default Adam (a plain loop as it is usually written), and on
  a CPU also against the baseline with the fused Adam that ppl_vae's optimizer uses there
  (``baseline_fused_adam``, its ratio that baseline's / the default's), which tells how much of our
  ratio that choice makes;
- ``log_likelihood``: :func:`ppl_vae.evaluation.importance_sample` with and without PSIS against the
  baseline's importance sampler, with the same weights, K samples per datapoint, 100 datapoints by
  100 samples at a time, the sides taking turns chunk by chunk, ours next to the baseline;
- ``cli``: the wall time of ``ppl-vae --help`` and of a config typo's error, each a fresh process.

Throughputs are datapoints per second; ratios are ours / the baseline's throughput (medians over
rounds of each round's paired ratio).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pyro
import torch
from pyro.infer import SVI

from benchmarks import baseline
from benchmarks.timing import Side, interleave, paired_ratio, timed
from ppl_vae.build import Setup, build, build_optimizer, check
from ppl_vae.config import Config, load_config
from ppl_vae.data import evaluation_split
from ppl_vae.errors import DiagnosticWarning
from ppl_vae.evaluation import importance_sample
from ppl_vae.objectives import OBJECTIVES
from ppl_vae.runs import fit
from ppl_vae.training import Callback
from ppl_vae.training.loop import SVIStep
from ppl_vae.training.state import TrainingState

LOG_LIKELIHOOD_CHUNK = 100  # datapoints per call of a log-likelihood sampler (the samplers' default batch)
TIMED_EPOCH = 1  # the epoch case times a run's second epoch (index 1): the first pays the one-time costs
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
    log_likelihood_repeats: int = 7  # PSIS costs about 2 %: enough rounds to tell
    steps: int = 20  # steps per repetition of the step benchmark
    num_samples: int = 1000  # K of the log-likelihood benchmark
    test_points: int = 500  # test images of the log-likelihood benchmark: 5 turns of 100 a round
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
    """Training steps on one batch, ours and the baseline's taking turns step by step,
    ``settings.steps`` turns a round."""
    setup = build(bench_config(settings, objective, batch_size))
    svi = SVI(setup.vae.model, setup.vae.guide, setup.optimizer, loss=setup.objective,
              loss_and_grads=setup.objective.loss_and_grads)
    loss = baseline.LOSSES[objective]
    x = evaluation_split(setup.dataset, "train")[:batch_size]

    def step(svi: SVI) -> Callable[[], float]:
        svi_step = SVIStep(svi)

        def run() -> float:
            with pyro.validation_enabled(False):
                return timed(lambda: svi_step(x, kl_weight=1.0), setup.device)
        return run

    def plain_step(fused: bool) -> Callable[[], float]:
        plain = plain_copy(setup)
        optimizer = plain_adam(plain, setup.config.optim.lr, fused)
        return lambda: timed(lambda: baseline.train_step(plain, optimizer, loss, x), setup.device)

    runs = {"ours": step(svi)}
    compiled = OBJECTIVES.get(objective)(**setup.config.objective.options)
    if compiled.compile():  # train.compile: true, where the objective has a compiled loss
        runs["ours_compiled"] = step(SVI(setup.vae.model, setup.vae.guide, build_optimizer(setup.config.optim),
                                         loss=compiled, loss_and_grads=compiled.loss_and_grads))
    runs.update({name: plain_step(fused) for name, fused in baselines(setup.device).items()})
    return interleave(runs, batch_size * settings.steps, settings.repeats, setup.device, turns=settings.steps)


class BaselineSteps(Callback):
    """Runs the baselines' epochs inside ours, one batch of each after each of our training steps, and
    times every batch on its own. A whole epoch of the same code ran up to 30 % slower or faster than
    the one before it on a shared CPU, so epochs taken in turn gave ratios from 0.72 to 1.22; taken
    batch by batch, a slow spell hits both sides alike and a round's ratio is steady to about 2 %.

    ``epochs`` starts each baseline's next epoch (the same model and optimizer going on), which it
    does when ours starts one; ``seconds`` and ``during_ours`` hold one value per epoch.
    """

    def __init__(self, epochs: dict[str, Callable[[], Iterator[torch.Tensor]]], device: torch.device) -> None:
        self.epochs, self.device = epochs, device
        self.running: dict[str, Iterator[torch.Tensor]] = {}
        self.seconds: dict[str, list[float]] = {name: [] for name in epochs}  # each baseline's whole epochs
        self.during_ours: list[float] = []  # the part of them spent inside our epochs' clock
        self.totals: dict[str, torch.Tensor] = {}

    def on_step(self, state: TrainingState, loss: torch.Tensor) -> None:
        if not self.running:  # our epoch's first step
            self.running = {name: start() for name, start in self.epochs.items()}
            self.during_ours.append(0.0)
            for name in self.epochs:
                self.seconds[name].append(0.0)
        for name in self.running:
            seconds = timed(lambda: self._advance(name), self.device)
            self.seconds[name][-1] += seconds
            self.during_ours[-1] += seconds

    def on_epoch_end(self, state: TrainingState) -> None:
        for name in self.running:
            self.seconds[name][-1] += timed(lambda: self._finish(name), self.device)
        self.running = {}

    def _advance(self, name: str) -> None:
        self.totals[name] = next(self.running[name])

    def _finish(self, name: str) -> float:
        """The rest of a baseline's epoch (no batch: both sides take the same batches) and its one read
        of the epoch's loss, as a plain loop ends an epoch."""
        for total in self.running[name]:
            self.totals[name] = total
        return self.totals[name].item()


def epoch_case(settings: Settings, objective: str, batch_size: int) -> dict[str, Any]:
    """The second of two epochs through ``fit``, with the baselines' epochs interleaved batch by batch
    (:class:`BaselineSteps`), all from the same weights. The first epoch, untimed, takes the costs a
    run pays once: the first step's argument validation, ``train.compile``'s tracing and TorchScript's
    profiling runs, the allocator's first requests (on each side). Our epoch's time is its wall time
    from the history less the baselines' batches run inside it (so building the run and the
    evaluation after it are left out). ``train.compile``'s run, where the objective compiles, is
    paired with baseline epochs of its own. No peak memory: ours' would be the whole ``fit`` call's,
    loading the dataset included; the step case measures a training step's."""
    config = bench_config(settings, objective, batch_size)
    setup = build(config)
    train_x, device = setup.dataset.train, setup.device
    weights = plain_copy(setup).state_dict()
    config = replace(config, train=replace(config.train, epochs=TIMED_EPOCH + 1, eval_every=TIMED_EPOCH + 1))

    def plain_epochs(fused: bool) -> Callable[[], Iterator[torch.Tensor]]:
        plain = plain_copy(setup)
        plain.load_state_dict(weights)
        optimizer = plain_adam(plain, config.optim.lr, fused)
        generator = torch.Generator(device).manual_seed(config.seed)  # its draws stay on the device, as ours do
        return lambda: baseline.epoch_steps(plain, optimizer, baseline.LOSSES[objective], train_x, batch_size,
                                            generator)

    variants = {"ours": config}
    if OBJECTIVES.get(objective)(**config.objective.options).compile():  # train.compile: true, where it compiles
        variants["ours_compiled"] = replace(config, train=replace(config.train, compile=True))
    seconds: dict[str, list[float]] = {name: [] for name in [*variants, *baselines(device)]}
    paired: dict[str, list[float]] = {name: [] for name in variants}  # the default baseline's, in the same fit
    for _ in range(settings.epoch_repeats):
        for name, variant in variants.items():
            interleaved = BaselineSteps({side: plain_epochs(fused) for side, fused in baselines(device).items()
                                         if name == "ours" or side == "baseline"}, device)
            with contextlib.redirect_stderr(io.StringIO()):  # the progress bar is drawn, into a buffer
                run = fit(variant, figures=False, callbacks=[interleaved])
            epoch = next(record for record in run.history if record["epoch"] == TIMED_EPOCH + 1)
            seconds[name].append(epoch["epoch_seconds"] - interleaved.during_ours[TIMED_EPOCH])
            paired[name].append(interleaved.seconds["baseline"][TIMED_EPOCH])
            if name == "ours":
                for side, side_seconds in interleaved.seconds.items():
                    seconds[side].append(side_seconds[TIMED_EPOCH])
    work = train_x.shape[0]
    result = {name: Side(values, work).summary() for name, values in seconds.items()}
    for name in variants:
        result[name].update(ratio=paired_ratio(paired[name], seconds[name]), baseline_seconds=paired[name])
    if "baseline_fused_adam" in result:
        result["baseline_fused_adam"]["ratio"] = paired_ratio(seconds["baseline"], seconds["baseline_fused_adam"])
    return result


def log_likelihood_case(settings: Settings) -> dict[str, Any]:
    """Importance-sampled log p(x) of the first ``test_points`` test images, K = ``num_samples``: each
    call of ours and of the baseline's sampler takes the next 100 datapoints, and the sides take turns
    chunk by chunk (with whole runs in turn, the order of the sides within a round moved the ratio by
    4 %). Ours pays its per-call set-up (the plate layout, the data check) once per chunk."""
    setup = build(bench_config(settings, "meanfield", 100))
    vae, plain = setup.vae, plain_copy(setup)
    x = evaluation_split(setup.dataset, "test")[:settings.test_points]

    def ours(psis: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        def sample(chunk: torch.Tensor) -> torch.Tensor:
            with warnings.catch_warnings():  # untrained weights: k̂ is high, and only the time matters here
                warnings.simplefilter("ignore", DiagnosticWarning)
                return importance_sample(vae.model, vae.guide, chunk, num_samples=settings.num_samples,
                                         batch_size=LOG_LIKELIHOOD_CHUNK, psis=psis).log_likelihood
        return sample

    samplers = {"ours": ours(False),  # next to the baseline in every turn: a ratio pairs calls a second apart
                "baseline": lambda chunk: baseline.importance_log_likelihood(plain, chunk, settings.num_samples,
                                                                             batch_size=LOG_LIKELIHOOD_CHUNK),
                "ours_psis": ours(True)}
    chunks = x.split(LOG_LIKELIHOOD_CHUNK)
    estimates: dict[str, list[torch.Tensor]] = {name: [] for name in samplers}

    def run(name: str) -> Callable[[], float]:  # each call the next chunk, round after round
        next_chunk = itertools.cycle(chunks).__next__
        return lambda: timed(lambda: estimates[name].append(samplers[name](next_chunk())), setup.device)

    result = interleave({name: run(name) for name in samplers}, x.shape[0], settings.log_likelihood_repeats,
                        setup.device, turns=len(chunks))
    result["mean_log_likelihood"] = {name: torch.cat(values[-len(chunks):]).mean().item()
                                     for name, values in estimates.items()}
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
