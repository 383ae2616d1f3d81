"""SharedOptim, one torch optimizer for every parameter, against Pyro's one optimizer per parameter."""

import pyro
import pytest
import torch
from pyro.optim import PyroOptim

from ppl_vae.training.optimizers import SharedOptim

SHAPES = {"weight": (30, 20), "bias": (30,), "idle": (5,)}


def parameters(values=None):
    """Fresh parameters in an empty param store: random, or ``values``."""
    pyro.clear_param_store()
    generator = torch.Generator().manual_seed(0)
    values = values or {name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}
    return {name: pyro.param(name, value.clone()).unconstrained() for name, value in values.items()}


def run(optimizer, steps, params=None, first_step=0):
    """Steps ``first_step`` to ``steps - 1`` with fixed gradients: "idle" is used by step 0 only (a site
    a model visits once) and "bias" has no gradient at step 2: None for SharedOptim, which treats it
    as the zero gradient Pyro's SVI leaves (``zero_grads``), and that zero for Pyro's optimizer."""
    params = params or parameters()
    for step in range(first_step, steps):
        used = {name: param for name, param in params.items() if name != "idle" or step == 0}
        for index, (name, param) in enumerate(used.items()):
            param.grad = torch.randn(param.shape, generator=torch.Generator().manual_seed(100 * step + index))
        if step == 2:
            params["bias"].grad = None if isinstance(optimizer, SharedOptim) else torch.zeros_like(params["bias"])
        optimizer(used.values())
        for param in used.values():
            param.grad = None
    return {name: param.detach().clone() for name, param in params.items()}


@pytest.mark.parametrize("constructor", [torch.optim.Adam, torch.optim.Adagrad])
def test_same_updates_as_one_pyro_optimizer_per_parameter(constructor):
    args = {"lr": 0.01, "weight_decay": 0.1}
    shared = run(SharedOptim(constructor, args), steps=6)
    torch.testing.assert_close(shared, run(PyroOptim(constructor, {**args, "fused": True}), steps=6), rtol=0, atol=0)
    torch.testing.assert_close(shared, run(PyroOptim(constructor, args), steps=6), rtol=0, atol=1e-6)
    assert torch.equal(shared["idle"], run(PyroOptim(constructor, args), steps=1)["idle"])  # untouched after step 0


def test_fused_on_cpu_unless_the_arguments_choose():
    params = list(parameters().values())
    assert SharedOptim(torch.optim.Adam, {"lr": 0.01})._implementation(params) == {"fused": True}
    assert SharedOptim(torch.optim.Adam, {"lr": 0.01, "foreach": False})._implementation(params) == {}
    assert SharedOptim(torch.optim.Adam, {"lr": 0.01})._implementation([torch.zeros(2, dtype=torch.long)]) == {}


def test_saved_state_goes_on_exactly():
    straight = run(SharedOptim(torch.optim.Adam, {"lr": 0.01}), steps=6)
    interrupted = SharedOptim(torch.optim.Adam, {"lr": 0.01})
    halfway = run(interrupted, steps=3)
    state = interrupted.get_state()
    assert all("fused" not in saved["param_groups"][0] for saved in state.values())  # loads on any device
    resumed = SharedOptim(torch.optim.Adam, {"lr": 0.01})
    resumed.set_state(state)
    torch.testing.assert_close(run(resumed, steps=6, params=parameters(halfway), first_step=3), straight,
                               rtol=0, atol=0)
