"""Experiments and reproductions: one module per figure or table, all run by one runner
(:mod:`~ppl_vae.experiments.runner`, ``ppl-vae reproduce NAME``)."""

from ppl_vae.experiments.runner import EXPERIMENTS, Output, claim, quick, run_experiment, settings_of

__all__ = ["EXPERIMENTS", "Output", "claim", "quick", "run_experiment", "settings_of"]
