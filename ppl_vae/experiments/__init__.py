"""Experiments and reproductions: one module per figure or table, all run by one runner
(:mod:`~ppl_vae.experiments.runner`, ``ppl-vae reproduce NAME``).

Every module of this package except the runner and ``common`` registers its experiment when it is
imported, and is imported here: adding an experiment is adding its module."""

import importlib
import pkgutil

from ppl_vae.experiments.runner import (EXPERIMENTS, Output, Reference, check_results, claim, full, quick,
                                        run_experiment, settings_of)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("runner", "common"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["EXPERIMENTS", "Output", "Reference", "check_results", "claim", "full", "quick", "run_experiment",
           "settings_of"]
