"""Objectives: what training maximizes. Each is one registered class (:data:`OBJECTIVES`), built on
Pyro's ELBOs and the trace helpers of :mod:`~ppl_vae.objectives.traces`; β schedules live in
:mod:`~ppl_vae.objectives.schedules`."""

from ppl_vae.objectives import elbo, geco, iwae  # noqa: F401  (each module registers its objectives)
from ppl_vae.objectives.base import OBJECTIVES, Objective
from ppl_vae.objectives.schedules import SCHEDULES, Schedule

__all__ = ["OBJECTIVES", "SCHEDULES", "Objective", "Schedule"]
