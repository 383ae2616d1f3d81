"""The one shape of every experiment: a registered function whose keyword-only arguments are its
settings, and a runner that gives it an output folder and records what it did.

An experiment module declares itself like a part::

    @EXPERIMENTS.register("autoencoder-vs-vae")
    @quick(epochs=1, dataset="digits")
    def autoencoder_vs_vae(output: Output, *, epochs: int = 3, dataset: str = "mnist") -> dict[str, Any]:
        \"\"\"The claim it checks, in one line.\"\"\"
        ...
        output.save_figure(fig, "autoencoder_vs_vae.png")
        return {"numbers": ...}

The defaults are the full mode (what made the committed figures); ``quick`` overrides them with a
budget of seconds, which the test suite runs. :func:`run_experiment` writes the figures and
``<name>.json`` (the settings, the numbers the experiment returned, the wall time and the machine)
into the folder the user names.
"""

from __future__ import annotations

import inspect
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ppl_vae.build import resolve_device
from ppl_vae.registry import Registry

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EXPERIMENTS: Registry[dict[str, Any]] = Registry("experiment")


def quick(**overrides: Any) -> Callable[[Callable], Callable]:
    """Decorator: the settings an experiment runs with in quick mode (``--quick``, the tests)."""

    def decorator(experiment: Callable) -> Callable:
        experiment.quick = overrides
        return experiment

    return decorator


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
    settings, the experiment's numbers (``results``), the wall time and the machine. Returns that dict."""
    settings = settings_of(name, quick_mode, overrides)
    output = Output(Path(out), resolve_device(device), progress)
    output.folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = EXPERIMENTS.get(name)(output, **settings)
    record = {
        "experiment": name, "claim": claim(name), "mode": "quick" if quick_mode else "full", "settings": settings,
        "results": results, "wall_seconds": time.perf_counter() - started,
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "device": str(output.device),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    output.path(f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
    return record
