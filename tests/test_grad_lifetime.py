"""A step keeps no grad alive, as torch.optim keeps none: after zero_grad(set_to_none=True)
(the optimizer's or the model's) the grads are freed before backward makes new ones, so peak
memory holds one set of grads, not two. Checked for the C++ plan check and the Python one."""

from __future__ import annotations

import os
import subprocess
import sys
import weakref

import pytest
import torch

import fastoptim.torch as fo

SCRIPT = r"""
import weakref, torch, fastoptim.torch as fo
torch.manual_seed(0)
for make in (lambda ps: fo.Adam(ps, lr=0.1), lambda ps: fo.SGD(ps, lr=0.1, momentum=0.9),
             lambda ps: fo.AdamW(ps, master_weights=True),
             lambda ps: torch.optim.Adam(ps, lr=0.1)):
    ps = [torch.nn.Parameter(torch.randn(7, dtype=torch.bfloat16 if i == 2 else torch.float32))
          for i in range(3)]
    opt = make(ps)
    for step in range(4):
        for p in ps:
            p.grad = torch.randn(p.shape, dtype=p.dtype)
        opt.step()
        refs = [weakref.ref(p.grad) for p in ps]
        if step % 2:
            opt.zero_grad()
        else:
            for p in ps:
                p.grad = None  # as model.zero_grad() does
        assert all(r() is None for r in refs), (type(opt).__module__, step)
print("ok")
"""


@pytest.mark.parametrize("check", ["C++", "python"])
def test_step_keeps_no_grad_alive(check):
    env = dict(os.environ)
    if check == "python":
        env["FASTOPTIM_PLAN_CHECK"] = "python"
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_same_and_new_grads_step_alike():
    """Grads kept between steps (zero_grad(set_to_none=False)) and grads replaced every step
    give the same result."""
    torch.manual_seed(1)
    grads = [[torch.randn(5) for _ in range(2)] for _ in range(6)]
    kept = [torch.nn.Parameter(torch.ones(5)) for _ in range(2)]
    fresh = [torch.nn.Parameter(torch.ones(5)) for _ in range(2)]
    a, b = fo.Adam(kept, lr=0.1), fo.Adam(fresh, lr=0.1)
    for p in kept:
        p.grad = torch.zeros(5)
    for step_grads in grads:
        for p, g in zip(kept, step_grads):
            p.grad.copy_(g)
        for p, g in zip(fresh, step_grads):
            p.grad = g.clone()
        a.step()
        b.step()
    for p, q in zip(kept, fresh):
        assert torch.equal(p.detach(), q.detach())
    r = weakref.ref(kept[0].grad)
    assert r() is not None


def test_grad_is_read_as_python_reads_it():
    """The check reads p.grad through torch's getter directly for plain tensor types; a type
    that changes what `grad` means (even after the plan was built) is read through Python."""

    class Param(torch.nn.Parameter):
        pass

    p = Param(torch.ones(3))
    p.grad = torch.ones(3)
    q = torch.nn.Parameter(torch.ones(3))
    q.grad = torch.ones(3)
    opt = fo.SGD([p, q], lr=0.5)
    opt.step()
    opt.step()
    assert torch.equal(p.detach(), torch.zeros(3)) and torch.equal(q.detach(), torch.zeros(3))
    Param.grad = property(lambda self: None)  # p now has no grad: torch skips it
    try:
        opt.step()
        assert torch.equal(p.detach(), torch.zeros(3))
        assert torch.equal(q.detach(), torch.full((3,), -0.5))
    finally:
        del Param.grad
    opt.step()
    assert torch.equal(p.detach(), torch.full((3,), -0.5))


def test_new_grads_of_any_tensor_type_are_checked():
    """New grads of torch.Tensor's own type are read through the at::Tensor their Python
    objects hold (where the running torch has that layout), others through a handle each:
    either way a new grad of another size, dtype or layout rebuilds the plan (or is refused
    as torch refuses it), and one that fits is stepped as a plain new grad is."""

    class Grad(torch.Tensor):
        pass

    torch.manual_seed(2)
    ps = [torch.nn.Parameter(torch.randn(6)) for _ in range(3)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours, theirs = fo.Adam(ps, lr=0.1), fo.Adam(ref, lr=0.1)  # theirs: plain new grads
    makes = [
        lambda g: g.clone(),
        lambda g: g.clone().as_subclass(Grad),
        lambda g: torch.stack([g, g], 1)[:, 0],  # strided: another layout, rebuilt
        lambda g: g.clone(),
    ]
    for step in range(12):
        grads = [torch.randn(6) for _ in ps]
        for i, (p, q, g) in enumerate(zip(ps, ref, grads)):
            p.grad = makes[(step + i) % len(makes)](g)
            q.grad = g.clone()
        ours.step()
        theirs.step()
        for p, q in zip(ps, ref):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0)
    for grad_type in (torch.Tensor, Grad):
        ours.step()
        ps[0].grad = torch.randn(6).as_subclass(grad_type)
        ps[0].grad.resize_(7)  # another size: torch's error, nothing changed
        before = [p.detach().clone() for p in ps]
        with pytest.raises((RuntimeError, ValueError)):
            ours.step()
        for p, b in zip(ps, before):
            assert torch.equal(p.detach(), b)
        ps[0].grad = torch.randn(6)
