"""A Pyro optimizer that updates every parameter with one torch optimizer.

Pyro's ``PyroOptim`` builds one torch optimizer per parameter tensor and calls each in turn at every
step. For a VAE's dozen weight and bias tensors that costs more than the update itself on a CPU
(each ``step`` call has a fixed cost: hooks, profiler records, argument grouping), so a Pyro step
ran slower than a plain PyTorch loop with one ``torch.optim.Adam`` over all parameters.
:class:`SharedOptim` is a ``PyroOptim`` (``SVI`` takes it, ``get_state``/``set_state`` and the
checkpoints read and write the same per-parameter states) holding one torch optimizer, to which each
parameter is added when a step first uses it. Adam and Adagrad update each parameter on its own, so
the updates are those of ``PyroOptim`` with the same implementation.

On a CPU the shared optimizer uses torch's fused implementation (``fused=True``: one pass over each
parameter's memory per step instead of a dozen element-wise operations), which cuts the update's
time by more than half for a VAE of a few hundred thousand weights; the updates agree with the
default implementation's to rounding (a few 1e-8 after 100 Adam steps). On a GPU torch already
defaults to its multi-tensor implementation. Optimizer arguments that choose an implementation
(``fused``, ``foreach``) are left as given.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import pyro
import torch
from pyro.optim import PyroOptim


class SharedOptim(PyroOptim):
    """``PyroOptim(optim_constructor, optim_args, clip_args)`` with one torch optimizer for all parameters.

    As with ``PyroOptim``: a step updates only the parameters it is given (the others keep their
    gradient and state), a parameter updated before whose gradient is None is updated with a zero
    gradient (what Pyro's ``zero_grads`` leaves it), ``clip_args`` clips each parameter's gradient on
    its own, and a state given to :meth:`set_state` is loaded into a parameter when a step first
    uses it (only its per-parameter statistics: the hyperparameters are ``optim_args``'s).
    ``optim_args`` must be a dict (the same hyperparameters for every parameter).
    """

    def __init__(self, optim_constructor: Callable[..., torch.optim.Optimizer], optim_args: dict[str, Any],
                 clip_args: dict[str, Any] | None = None) -> None:
        if not isinstance(optim_args, dict):
            raise TypeError(f"SharedOptim needs one dict of optimizer arguments for all parameters, got {optim_args!r}")
        super().__init__(optim_constructor, optim_args, clip_args)
        self.shared: torch.optim.Optimizer | None = None

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        """One update of ``params``, adding those never seen before to the shared optimizer."""
        params = list(params)
        new = [param for param in params if param not in self.optim_objs]
        if new:
            self._add(new)
        for param in params:
            if param.grad is None and param in self.shared.state:  # as after Pyro's zero_grads: a zero gradient
                param.grad = torch.zeros_like(param)
            if self.grad_clip[param] is not None:
                self.grad_clip[param](param)
        stepped = set(params)
        idle = {}
        if len(stepped) < len(self.optim_objs):  # some parameter this step did not use
            idle = {param: param.grad for param in self.optim_objs if param not in stepped and param.grad is not None}
        for param in idle:  # a parameter this step did not use is left alone, as PyroOptim leaves it
            param.grad = None
        self.shared.step(*args, **kwargs)
        for param, grad in idle.items():
            param.grad = grad

    def _add(self, params: list[torch.Tensor]) -> None:
        if self.shared is None:
            self.pt_optim_args = {**self.pt_optim_args, **self._implementation(params)}
            self.shared = self.pt_optim_constructor(params, **self.pt_optim_args)
        else:
            self.shared.add_param_group({"params": params})
        store = pyro.get_param_store()
        for param in params:
            self.optim_objs[param] = self.shared
            self.grad_clip[param] = self._get_grad_clip(param)
            saved = self._state_waiting_to_be_consumed.pop(store.param_name(param), None)
            if saved is not None:  # torch casts the saved statistics to the parameter's device and dtype
                single = self.pt_optim_constructor([param], **self.pt_optim_args)
                single.load_state_dict(saved)
                self.shared.state[param] = single.state[param]

    def _implementation(self, params: list[torch.Tensor]) -> dict[str, bool]:
        """``{"fused": True}`` for floating-point CPU parameters where the optimizer has a fused
        implementation and the arguments choose none; else nothing (torch's default)."""
        chosen = {"fused", "foreach"} & set(self.pt_optim_args)
        fusable = "fused" in inspect.signature(self.pt_optim_constructor).parameters
        on_cpu = all(param.device.type == "cpu" and param.is_floating_point() for param in params)
        return {"fused": True} if fusable and on_cpu and not chosen else {}

    def get_state(self) -> dict[str, dict[str, Any]]:
        """``{parameter name: the state_dict a torch optimizer of that parameter alone would give}``."""
        store = pyro.get_param_store()
        return {store.param_name(param): self._state_dict_of(param) for param in self.optim_objs}

    def _state_dict_of(self, param: torch.Tensor) -> dict[str, Any]:
        group = next(group for group in self.shared.param_groups if any(other is param for other in group["params"]))
        # the statistics and hyperparameters, not the implementation: a CPU run's state loads on a GPU
        hyperparameters = {key: value for key, value in group.items() if key not in ("params", "fused", "foreach")}
        state = {0: dict(self.shared.state[param])} if param in self.shared.state else {}
        return {"state": state, "param_groups": [{**hyperparameters, "params": [0]}]}
