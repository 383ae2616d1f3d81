"""Experiments and reproductions: one module per figure or table, all run by one runner
(:mod:`~ppl_vae.experiments.runner`, ``ppl-vae reproduce NAME``)."""

from ppl_vae.experiments import (  # noqa: F401  (each module registers its experiment in EXPERIMENTS)
    autoencoder_vs_vae,
    beta_phase_transitions,
    cvae_completions,
    geco_information_plane,
    geco_vs_beta,
    parts_table,
)
from ppl_vae.experiments.runner import EXPERIMENTS, Output, claim, quick, run_experiment, settings_of

__all__ = ["EXPERIMENTS", "Output", "claim", "quick", "run_experiment", "settings_of"]
