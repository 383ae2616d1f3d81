"""Checkpoints: everything needed to continue a run exactly where it stopped, defined here only.

A checkpoint (:func:`snapshot`) holds the resolved config, the module ``state_dict`` (Pyro's param
store does not save buffers), the optimizer state, the objective's state (GECO's λ, ...), and the
training state: the step/epoch counters the β schedule reads, the epoch in progress, the history so
far and every random number generator's state. It is written to a temporary file and renamed, so a
crash while saving never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ppl_vae.errors import CheckpointError

FORMAT = "ppl_vae.training.checkpoint"
VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (plus a format tag) to ``path``."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "version": VERSION, **state}, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a CheckpointError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}: is this a run directory written by 'ppl-vae train'?")
    try:
        # weights_only=False: the checkpoint holds RNG states and Python dicts, and it is our own file
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupted, or not a checkpoint at all ({error}); "
            "restart the run, or resume from a copy of an intact checkpoint."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a ppl_vae checkpoint (it was written by something else).")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {state.get('version')}; this ppl_vae reads version {VERSION}."
        )
    return state


def snapshot(config: dict[str, Any], state: TrainingState, module: nn.Module, optimizer: PyroOptim,
             objective: Objective) -> dict[str, Any]:
    """The contents of a checkpoint: the config (as a plain dict) and the state of every object."""
    return {"config": config, "training": state.state_dict(), "module": module.state_dict(),
            "optimizer": optimizer.get_state(), "objective": objective.state_dict()}


def restore(checkpoint: dict[str, Any], path: Path, state: TrainingState, module: nn.Module, optimizer: PyroOptim,
            objective: Objective) -> None:
    """Load a :func:`snapshot` into the objects of a run built from the same config; a
    CheckpointError if they do not fit."""
    try:
        module.load_state_dict(checkpoint["module"])
        optimizer.set_state(checkpoint["optimizer"])
        objective.load_state_dict(checkpoint["objective"])
        state.load_state_dict(checkpoint["training"], device=next(module.parameters()).device)
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this run ({type(error).__name__}: {error}); resume with "
            "the config the run was started with (no --set of model.* options)."
        ) from None
