"""The one shape of every experiment: a registered function whose keyword-only arguments are its
settings, and a runner that gives it an output folder and records what it did.

An experiment module declares itself like a part::

    @EXPERIMENTS.register("autoencoder-vs-vae")
    @quick(epochs=1, dataset="digits")
    @full(seconds=56, references=[Reference("VAE.kl", low=20, high=30)])
    def autoencoder_vs_vae(output: Output, *, epochs: int = 3, dataset: str = "mnist") -> dict[str, Any]:
        \"\"\"The claim it checks, in one line.\"\"\"
        run = output.fit(config, "vae")  # resumable: a rerun into the same folder reuses it
        ...
        output.save_figure(fig, "autoencoder_vs_vae.png")
        return {"VAE": {"kl": ...}}

The defaults are the full mode (what made the committed figures); ``quick`` overrides them with a
budget of seconds, which the test suite runs. ``full`` records the full mode's wall time on 2 CPU
cores (shown by ``ppl-vae reproduce --list``) and the :class:`Reference` numbers its results are
checked against (``--check``). :func:`run_experiment` writes the figures and ``<name>.json`` (the
settings, the numbers the experiment returned, the checks, the wall time and the machine) into the
folder the user names; the trained runs go to its ``runs/`` subfolder, so that running the same
command again resumes where it stopped.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import platform
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from ppl_vae.build import resolve_device
from ppl_vae.config import Config, to_dict
from ppl_vae.registry import Registry

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ppl_vae.runs import Run

EXPERIMENTS: Registry[dict[str, Any]] = Registry("experiment")


def quick(**overrides: Any) -> Callable[[Callable], Callable]:
    """Decorator: the settings an experiment runs with in quick mode (``--quick``, the tests)."""

    def decorator(experiment: Callable) -> Callable:
        experiment.quick = overrides
        return experiment

    return decorator


@dataclass(frozen=True)
class Reference:
    """A number of an experiment's results that its full mode is checked against.

    ``result`` is the number's dotted path in the results (``rows.VAE.test_log_px``; an integer
    picks from a list: ``critical_betas.0``); a full-mode
    value outside [``low``, ``high``] fails ``ppl-vae reproduce NAME --check``. The band is set
    around what our full mode gives, since our budgets are smaller than the papers'; ``published``
    is the paper's number it is shown next to (``None`` where the paper gives none) and ``source``
    says where it is printed."""

    result: str
    low: float
    high: float
    published: float | None = None
    source: str = ""


def full(seconds: float, references: Sequence[Reference] = ()) -> Callable[[Callable], Callable]:
    """Decorator: the full mode's wall time in seconds, measured on 2 CPU cores (``--list`` shows
    it), and the :class:`Reference` numbers its results are checked against."""

    def decorator(experiment: Callable) -> Callable:
        experiment.full_seconds = seconds
        experiment.references = tuple(references)
        return experiment

    return decorator


def check_results(name: str, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of experiment ``name``'s references with the value found in ``results`` and whether it
    lies in its band (``within``); a value missing from the results is ``None`` and not within."""
    checks = []
    for reference in getattr(EXPERIMENTS.get(name), "references", ()):
        value: Any = results
        for key in reference.result.split("."):
            if isinstance(value, list) and key.isdigit():
                value = value[int(key)] if int(key) < len(value) else None
            else:
                value = value.get(key) if isinstance(value, dict) else None
        within = isinstance(value, (int, float)) and reference.low <= value <= reference.high
        checks.append({**asdict(reference), "value": value, "within": within})
    return checks


@dataclass
class Output:
    """Where an experiment writes, and the device it trains on."""

    folder: Path
    device: torch.device
    progress: bool = True

    def save_figure(self, fig: Figure, name: str) -> Path:
        """Save a matplotlib figure as ``folder/name`` (PNG), with the project's figure style."""
        from ppl_vae.plots import save_figure

        return save_figure(fig, self.folder / name)

    def path(self, name: str) -> Path:
        """A file path in the output folder, for anything else the experiment writes."""
        return self.folder / name

    def fit(self, config: Config, label: str) -> Run:
        """Train ``config`` on this output's device in its own run folder, ``runs/<label>-<hash>``
        under the output folder; the hash is of the config without its ``train`` section and device.

        A finished run found there is loaded and evaluated again instead of trained; an interrupted
        one (Ctrl-C, or killed after a checkpoint) continues from its checkpoint, so an experiment
        run again with the same ``--out`` picks up where it stopped. A config with more
        ``train.epochs`` than the run in the folder continues it (see :meth:`fit_in_stages`).
        """
        from ppl_vae.runs import CHECKPOINT, fit

        config = self._on_device(config)
        run_dir = self._run_folder(config, label)
        resume = (run_dir / CHECKPOINT).is_file()
        return fit(config, run_dir, resume=resume, overwrite=not resume, figures=False)

    def fit_in_stages(self, config: Config, label: str, stages: Sequence[int]) -> Iterator[Run]:
        """Train ``config`` up to each number of epochs in ``stages`` (increasing) in turn, each stage
        continuing the one before, and yield the run after each, evaluated at its last epoch: to
        measure a model along its training (AEVB's curves against samples seen).

        Each stage's checkpoint is kept in ``stages/epochs-<n>`` of the run folder (a hard link where
        the file system allows), so an experiment run again reloads every finished stage instead of
        refusing a run that has already trained past it.
        """
        from ppl_vae.runs import CHECKPOINT, fit

        for epochs in stages:
            staged = self._on_device(config)
            staged.train.epochs = staged.train.eval_every = staged.train.checkpoint_every = epochs
            snapshot = self._run_folder(staged, label) / "stages" / f"epochs-{epochs}"
            if (snapshot / CHECKPOINT).is_file():
                yield fit(staged, snapshot, resume=True, figures=False)
                continue
            run = self.fit(staged, label)
            snapshot.mkdir(parents=True, exist_ok=True)
            try:
                os.link(run.out_dir / CHECKPOINT, snapshot / CHECKPOINT)
            except OSError:  # a file system without hard links
                shutil.copyfile(run.out_dir / CHECKPOINT, snapshot / CHECKPOINT)
            yield run

    def _on_device(self, config: Config) -> Config:
        """A copy of ``config`` that trains on this output's device, with its progress setting."""
        config = copy.deepcopy(config)
        config.device, config.train.progress = str(self.device), self.progress
        return config

    def _run_folder(self, config: Config, label: str) -> Path:
        """``runs/<label>-<hash of the config without train and device>`` in the output folder."""
        recipe = {key: value for key, value in to_dict(config).items() if key not in ("train", "device")}
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:8]
        folder_name = re.sub(r"[^\w.=-]+", "_", label).strip("_")
        return self.folder / "runs" / f"{folder_name}-{digest}"


def claim(name: str) -> str:
    """The first line of an experiment's docstring: the claim it checks."""
    return (inspect.getdoc(EXPERIMENTS.get(name)) or "").split("\n")[0]


def settings_of(name: str, quick_mode: bool = False, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings an experiment runs with: its defaults, then its quick overrides, then ``overrides``
    (checked against its signature: an unknown name or a wrong type is a ConfigError)."""
    experiment = EXPERIMENTS.get(name, "experiment")
    settings = {option: parameter.default for option, parameter in EXPERIMENTS.options(name).items()}
    if quick_mode:
        settings.update(getattr(experiment, "quick", {}))
    settings.update(EXPERIMENTS.check_options(name, overrides or {}, name))
    return settings


def run_experiment(
    name: str, out: str | Path, quick_mode: bool = False, overrides: dict[str, Any] | None = None,
    device: str = "auto", progress: bool = True,
) -> dict[str, Any]:
    """Run experiment ``name`` into the folder ``out``: its figures, and ``<name>.json`` with the
    settings, the experiment's numbers (``results``), each reference number's value and whether it
    lies in its band (``checks``; they speak of the full mode only), the wall time and the machine.
    Returns that dict."""
    settings = settings_of(name, quick_mode, overrides)
    output = Output(Path(out), resolve_device(device), progress)
    output.folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = EXPERIMENTS.get(name)(output, **settings)
    record = {
        "experiment": name, "claim": claim(name), "mode": "quick" if quick_mode else "full", "settings": settings,
        "results": results, "checks": check_results(name, results), "wall_seconds": time.perf_counter() - started,
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "device": str(output.device),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    output.path(f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
    return record
