"""Executable references for the rules torch.optim lacks: each written from its paper and its
official implementation, op by op in the official implementation's order (so float32 results
can be compared bit for bit), with torch tensor ops in the param's dtype. The registry names each
rule's reference (``_core.rules()[i]["reference"]``); these classes stand in for it in the tests,
and tests/test_references.py checks each against the official package wherever it installs.

A reference has the official constructor (names, order, defaults) and keeps the official state
keys, so the tests compare state dicts key by key.
"""

from __future__ import annotations

from typing import Any

import torch


class Lion(torch.optim.Optimizer):
    """Lion, Chen et al. 2023 ("Symbolic Discovery of Optimization Algorithms", Algorithm 2):
    c = beta1 * m + (1 - beta1) * g; theta -= lr * (sign(c) + weight_decay * theta);
    m = beta2 * m + (1 - beta2) * g. The official implementation (lion-pytorch) decays the param
    first (theta *= 1 - lr * weight_decay), then adds -lr * sign(c); sign(0) and sign(NaN) are
    0 (torch.sgn). State: 'exp_avg' (m), no step count."""

    # no annotations: the signature is compared with the fused classes', parameter by parameter
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):  # noqa: ANN001
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, g = state["exp_avg"], p.grad
                p.mul_(1.0 - lr * weight_decay)
                direction = (m * beta1).add(g, alpha=1.0 - beta1).sgn_()
                p.add_(direction, alpha=-lr)
                m.mul_(beta2).add_(g, alpha=1.0 - beta2)
        return loss
