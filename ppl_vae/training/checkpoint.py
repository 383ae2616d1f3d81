"""Checkpoints: everything needed to continue a run exactly where it stopped, defined here only.

A checkpoint (:func:`snapshot`) holds the resolved config, the module ``state_dict`` (Pyro's param
store does not save buffers), the optimizer state, the objective's state (GECO's λ, ...), and the
training state: the step/epoch counters the β schedule reads, the epoch in progress, the history so
far and every random number generator's state. It is written to a temporary file and renamed, so a
crash while saving never leaves a half-written checkpoint behind.

Reading one never runs code from the file: it is unpickled with ``torch.load(weights_only=True)``
(tensors, plain Python containers and numbers, NumPy arrays for the NumPy RNG state). A file that
holds anything else, lacks a part or has a part of the wrong type is refused with a
:class:`~ppl_vae.errors.CheckpointError` before any of it is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppl_vae.errors import CheckpointError, TrainingError
from ppl_vae.training.callbacks import non_finite_parameters

if TYPE_CHECKING:
    from pyro.optim import PyroOptim
    from torch import nn

    from ppl_vae.objectives import Objective
    from ppl_vae.training.state import TrainingState

FORMAT = "ppl_vae.training.checkpoint"
VERSION = 1
PARTS = {"config": dict, "training": dict, "module": dict, "optimizer": dict, "objective": dict}
_NUMPY_ARRAY = np.zeros(1, dtype=np.uint32)
# what the NumPy RNG state unpickles through: an array of uint32 (nothing that can run code)
SAFE_GLOBALS = [_NUMPY_ARRAY.__reduce__()[0], np.ndarray, np.dtype, type(_NUMPY_ARRAY.dtype)]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (plus a format tag) to ``path``."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "version": VERSION, **state}, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without running any code stored in it;
    a CheckpointError says what is wrong (missing, truncated, foreign, a part missing or mistyped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}: is this a run directory written by 'ppl-vae train'?")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a damaged or foreign file
        reason = ("it holds Python objects that a ppl_vae checkpoint never contains; they were not loaded"
                  if "Weights only load failed" in str(error) else f"{type(error).__name__}: {error}".splitlines()[0])
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupted, or not a checkpoint at all ({reason}); "
            "restart the run, or resume from a copy of an intact checkpoint."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a ppl_vae checkpoint (it was written by something else).")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {state.get('version')}; this ppl_vae reads version {VERSION}."
        )
    for name, kind in PARTS.items():
        if not isinstance(state.get(name), kind):
            found = "is missing" if name not in state else f"is a {type(state[name]).__name__}, not a {kind.__name__}"
            raise CheckpointError(
                f"checkpoint {str(path)!r} is damaged: its {name!r} part {found}. Resume from a copy of an intact "
                "checkpoint, or restart the run."
            )
    return state


def snapshot(config: dict[str, Any], state: TrainingState, module: nn.Module, optimizer: PyroOptim,
             objective: Objective) -> dict[str, Any]:
    """The contents of a checkpoint: the config (as a plain dict) and the state of every object. A
    TrainingError instead if a parameter is NaN or Inf: no checkpoint ever holds one (an update that
    :class:`~ppl_vae.training.callbacks.NonFiniteGuard` has not seen yet, as when Ctrl-C stops
    training right after it, could otherwise be saved)."""
    broken = non_finite_parameters(module)
    if broken:
        raise TrainingError(
            f"the update of step {state.step} made {', '.join(broken)} non-finite (a gradient became NaN or Inf), so "
            "no checkpoint was saved; the last one is kept intact. Likely cause: exploding gradients; set "
            "optim.clip_norm (e.g. 10) or lower optim.lr."
        )
    return {"config": config, "training": state.state_dict(), "module": module.state_dict(),
            "optimizer": optimizer.get_state(), "objective": objective.state_dict()}


def restore(checkpoint: dict[str, Any], path: Path, state: TrainingState, module: nn.Module, optimizer: PyroOptim,
            objective: Objective) -> None:
    """Load a :func:`snapshot` into the objects of a run built from the same config; a
    CheckpointError if they do not fit.

    The optimizer gets each parameter's saved statistics (Adam's moments, Adagrad's sums) with the
    hyperparameters of the current config (``optim.lr``, ``optim.weight_decay``), so a resumed run
    may lower its learning rate."""
    try:
        module.load_state_dict(checkpoint["module"])
        optimizer.set_state(_optimizer_state(checkpoint["optimizer"], module, optimizer))
        objective.load_state_dict(checkpoint["objective"])
        state.load_state_dict(checkpoint["training"], device=next(module.parameters()).device)
    except (KeyError, IndexError, AttributeError, RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this run or is damaged ({type(error).__name__}: {error}); "
            "resume with the config the run was started with, or from a copy of an intact checkpoint."
        ) from None


def _optimizer_state(saved: dict[str, Any], module: nn.Module, optimizer: PyroOptim) -> dict[str, Any]:
    """The saved per-parameter optimizer states, checked against the module's parameters (Pyro names
    ``encoder.0.weight`` as ``encoder$$$0.weight``) and given the current config's hyperparameters.

    Pyro builds each parameter's torch optimizer at its first step and loads the state then; checking
    here turns a damaged state into a CheckpointError now instead of a torch error in training."""
    parameters = {name.replace(".", "$$$", 1): parameter for name, parameter in module.named_parameters()}
    if set(saved) != set(parameters):
        raise KeyError(f"the optimizer state is for parameters {sorted(saved)}, the model has {sorted(parameters)}")
    states = {}
    for name, parameter in parameters.items():
        probe = parameter.detach().clone().requires_grad_()
        probe.grad = torch.zeros_like(probe)
        fresh = optimizer.pt_optim_constructor([probe], **optimizer.pt_optim_args)
        fresh.step()  # a zero step on a copy: the statistics this optimizer keeps for the parameter
        if not isinstance(saved[name], dict) or "state" not in saved[name]:
            raise ValueError(f"optimizer state of {name!r} is not a torch optimizer's state_dict")
        expected, per_parameter = set(fresh.state[probe]), saved[name]["state"]
        if not isinstance(per_parameter, dict) or set(per_parameter) != {0} or set(per_parameter[0]) != expected:
            raise ValueError(f"optimizer state of {name!r} is not {optimizer.pt_optim_constructor.__name__}'s "
                             f"state of one parameter ({', '.join(sorted(expected))})")
        for key, value in per_parameter[0].items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.shape not in (
                    torch.Size(), parameter.shape):
                raise ValueError(f"optimizer state {name!r}[{key!r}] is not a float tensor of shape "
                                 f"{tuple(parameter.shape)} or a scalar")
        fresh.load_state_dict({"state": per_parameter, "param_groups": fresh.state_dict()["param_groups"]})
        states[name] = fresh.state_dict()
    return states
