"""fastoptim.torch's step runs torch.optim's step hooks itself (torch's wrapper, without its
record_function while no profiler runs): the same hooks, order, arguments and errors as
torch.optim, exactly once per step, also for subclasses and torch's own fallback update."""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                   register_optimizer_step_pre_hook)

import fastoptim.torch as fo


def _params():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    p.grad = torch.tensor([0.5, 0.25, -1.0])
    return [p]


def _calls(make, call=lambda opt: opt.step()):
    calls = []
    opt = make(_params())
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global pre", len(a), k))),
        opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", len(a), k))),
        opt.register_step_post_hook(lambda o, a, k: calls.append(("post", len(a), k))),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global post", len(a), k))),
    ]
    try:
        call(opt)
    finally:
        for h in handles:
            h.remove()
    return calls


@pytest.mark.parametrize("call", [lambda opt: opt.step(), lambda opt: opt.step(lambda: 1.0),
                                  lambda opt: opt.step(closure=None)])
def test_hooks_as_torch(call):
    ours = _calls(lambda ps: fo.Adam(ps, lr=0.1), call)
    theirs = _calls(lambda ps: torch.optim.Adam(ps, lr=0.1, foreach=False), call)
    assert ours == theirs
    assert [c[0] for c in ours] == ["global pre", "pre", "post", "global post"]


def test_pre_hook_replaces_arguments():
    losses = []
    opt = fo.SGD(_params(), lr=0.1)
    opt.register_step_pre_hook(lambda o, a, k: ((o,), {"closure": lambda: losses.append(1) or 7}))
    assert opt.step() == 7
    assert losses == [1]


def test_pre_hook_bad_return_is_torch_error():
    p = _params()
    opt = fo.SGD(p, lr=0.1)
    before = p[0].detach().clone()
    opt.register_step_pre_hook(lambda o, a, k: 3)
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()
    assert torch.equal(p[0].detach(), before)


def test_subclass_step_runs_hooks_once():
    class Mine(fo.Adam):
        def step(self, closure=None):
            return super().step(closure)

    calls = _calls(lambda ps: Mine(ps, lr=0.1))
    assert [c[0] for c in calls] == ["global pre", "pre", "post", "global post"]


def _sparse_params():
    p = torch.nn.Parameter(torch.ones(4, 2))
    p.grad = torch.sparse_coo_tensor([[1, 3]], torch.ones(2, 2), (4, 2))
    return [p]


def test_torch_fallback_runs_hooks_once():
    torch.optim.SGD(_params())  # torch wraps torch.optim.SGD.step with its hooks
    # sparse grads: torch's own update, through torch.optim.SGD.step
    calls = _calls(lambda ps: fo.SGD(_sparse_params(), lr=0.1))
    assert [c[0] for c in calls] == ["global pre", "pre", "post", "global post"]


def test_profiler_sees_the_step():
    opt = fo.Adam(_params(), lr=0.1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    names = [e.name for e in prof.events()]
    assert "Optimizer.step#Adam.step" in names
