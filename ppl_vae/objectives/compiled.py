"""Objectives whose loss can run compiled (config ``train.compile``): the loss and terms of one batch
as a TorchScript graph traced by Pyro's ``pyro.ops.jit.trace``, the machinery of ``JitTrace_ELBO``.

The graph runs the same model, guide and estimator without Python between the operations, which
on a CPU saves about 1 ms a step of Pyro's effect handlers and distribution wrappers (an epoch of
the ``mnist`` VAE runs 4 % faster at batch 512, 13 % at batch 100: ``benchmarks``). One graph is
traced per model and guide, batch shape and keyword arguments (β): a full batch and an epoch's
last, shorter one are two graphs.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from pyro.ops.jit import CompiledFunction
from pyro.ops.jit import trace as jit_trace

from ppl_vae.objectives.base import Objective

MAX_COMPILED_GRAPHS = 4
"""The most graphs a compiled objective traces (one per batch shape and keyword arguments: a full
batch and an epoch's last, shorter one) before it stops compiling: a β that changes every step
would trace a new graph each step, slower than running eagerly."""


class CompilableObjective(Objective):
    """An objective defined by :meth:`loss_and_terms`, which :meth:`compile` runs as traced graphs.

    Subclasses implement :meth:`loss_and_terms` with tensor operations that do not depend on the
    values of the data or the parameters (only on shapes and keyword arguments), and no gradient
    hooks, which a traced graph would drop; one that cannot in some configuration returns False
    from :meth:`compile` there.
    """

    def __init__(self) -> None:
        super().__init__()
        # per (model, guide, shapes, keywords): the graph and its terms' names
        self.compiled: dict[Any, tuple[CompiledFunction, list[str]]] | None = None

    def loss_and_terms(self, model: Callable, guide: Callable, *args: Any,
                       **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The differentiable loss of one batch and its terms (see :meth:`Objective.terms`)."""
        raise NotImplementedError

    def compile(self) -> bool:
        """From the next call on, run the loss and its terms as traced graphs. Past
        :data:`MAX_COMPILED_GRAPHS` of them, or if tracing fails, the objective warns once and runs
        eagerly from then on."""
        self.compiled = {}
        return True

    def needs_parameter_sites(self) -> bool:
        """Whether the loss is compiled: Pyro's jit finds the graph's parameters among the traces' sites."""
        return self.compiled is not None

    def __call__(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.compiled is not None:
            key = (model, guide, tuple(tuple(arg.shape) if isinstance(arg, torch.Tensor) else arg for arg in args),
                   tuple(sorted(kwargs.items())))
            if key not in self.compiled and len(self.compiled) == MAX_COMPILED_GRAPHS:
                self._stop_compiling(f"more than {MAX_COMPILED_GRAPHS} batch shapes and keyword arguments (a β that "
                                     "changes during training)")
            else:
                try:
                    return self._compiled_call(key, model, guide, *args, **kwargs)
                except Exception as error:  # torch.jit.trace fails in many ways on code it cannot trace
                    self._stop_compiling(f"tracing failed ({type(error).__name__}: {str(error).splitlines()[0][:200]})")
        loss, self._terms = self.loss_and_terms(model, guide, *args, **kwargs)
        return loss

    def _compiled_call(self, key: Any, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        if key not in self.compiled:
            names: list[str] = []  # the terms' names, filled in by the first (Python) run

            def loss_and_terms(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
                loss, terms = self.loss_and_terms(model, guide, *args, **kwargs)
                names[:] = terms
                return loss, *terms.values()

            self.compiled[key] = jit_trace(loss_and_terms, ignore_warnings=True), names
        function, names = self.compiled[key]
        with warnings.catch_warnings():  # torch 2.9+ marks torch.jit.trace deprecated, on every trace
            warnings.filterwarnings("ignore", message=".*torch.jit.trace. is deprecated", category=DeprecationWarning)
            loss, *terms = function(*args, **kwargs)
        self._terms = dict(zip(names, terms))
        return loss

    def _stop_compiling(self, reason: str) -> None:
        self.compiled = None
        warnings.warn(f"train.compile: objective {type(self).__name__} runs eagerly from now on: {reason}.",
                      RuntimeWarning, stacklevel=4)
