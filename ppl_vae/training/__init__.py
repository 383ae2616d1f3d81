"""Training: a :class:`~ppl_vae.training.state.TrainingState`, the loop over it
(:func:`~ppl_vae.training.loop.train`), its callbacks, and checkpoints of the whole state."""

from ppl_vae.training.callbacks import (Callback, Checkpointing, EpochEvaluation, InterruptHandler, NonFiniteGuard,
                                        OutOfMemory, ProgressBar)
from ppl_vae.training.loop import train
from ppl_vae.training.state import TrainingState

__all__ = ["Callback", "Checkpointing", "EpochEvaluation", "InterruptHandler", "NonFiniteGuard", "OutOfMemory", "ProgressBar",
           "TrainingState", "train"]
