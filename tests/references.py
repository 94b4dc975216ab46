"""Executable references for the rules torch.optim lacks: each written from its paper and its
official implementation, op by op in the official implementation's order (so float32 results
can be compared bit for bit), with torch tensor ops in the param's dtype. The registry names each
rule's reference (``_core.rules()[i]["reference"]``); these classes stand in for it in the tests,
and tests/test_references.py checks each against the official package wherever it installs.

A reference has the official constructor (names, order, defaults) and keeps the rule's state
keys (the official ones where fastoptim can keep them), so the tests compare state dicts key by
key.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype


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


class AdEMAMix(torch.optim.Optimizer):
    """AdEMAMix, Pagliardini et al. 2024 ("The AdEMAMix Optimizer: Better, Faster, Older",
    Algorithm 1), in the op order of the official implementation's CPU update (bitsandbytes 0.50,
    `AdEMAMix` with 32-bit state: backends/cpu/ops.py), in the param's dtype (bitsandbytes
    computes in float32 for every dtype):
        m1 = beta1 * m1 + (1 - beta1) * g;  m2 = beta3_t * m2 + (1 - beta3_t) * g
        nu = beta2 * nu + (1 - beta2) * g * g
        theta *= 1 - lr * weight_decay                     (only when weight_decay > 0)
        theta -= lr * (m1 / c1 + alpha_t * m2) / (sqrt(nu) / c2 + eps)
    with c1 = 1 - beta1**t, c2 = sqrt(1 - beta2**t), and the warm-ups for t_alpha and t_beta3 (off
    when None or 0, as bitsandbytes tests them for truth):
        alpha_t = min(t * alpha / t_alpha, alpha)
        beta3_t = min(exp(ln beta1 * ln beta3 / ((1 - t / t_beta3) * ln beta3
                                                  + t / t_beta3 * ln beta1)), beta3)
    computed per param from the group's values (bitsandbytes' _ReferenceAdEMAMix overwrites them
    param by param, compounding the warm-ups over a group's params; its AdEMAMix does not).
    State: 'step' (a 0-d tensor, as torch keeps it), 'm1', 'm2', 'nu'; its state_dict is
    bitsandbytes' (m1 and m2 stacked in 'state1' of shape (2, *p.shape), 'state2' is nu, both
    nested, 'step' an int). Complex params step as their real view (bitsandbytes takes none)."""

    # bitsandbytes computes float64 params in float32: the checkpoint tests continue with this
    # class (which keeps bitsandbytes' checkpoint layout, below) rather than with it
    official_state_dict = False
    # bitsandbytes computes in float32 whatever the param's dtype (float64: Algorithm 1)
    official_dtypes = (torch.float32,)
    # bitsandbytes' state_dict layout, which fastoptim's writes too: m1 and m2 stacked as
    # 'state1' and nu as 'state2', both under this key, and an int 'step'
    NEST = "__bnb_optimizer_quant_state__"

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["state"] = {key: {"step": int(s["step"]), self.NEST: {
            "state1": torch.stack([s["m1"], s["m2"]]), "state2": s["nu"]}} if s else s
            for key, s in sd["state"].items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = {}
        for key, s in state_dict["state"].items():
            buffers = s.get(self.NEST) if s else None
            states[key] = s if buffers is None else {
                "step": torch.tensor(float(s["step"]), dtype=_get_scalar_dtype()),
                "m1": buffers["state1"][0].clone(), "m2": buffers["state1"][1].clone(),
                "nu": buffers["state2"]}
        super().load_state_dict({**state_dict, "state": states})

    # no annotations: the signature is compared with the fused classes', parameter by parameter
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0,  # noqa: ANN001
                 t_alpha=None, t_beta3=None, eps=1e-8, weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha,
                                      t_beta3=t_beta3, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2, beta3 = group["betas"]
            t_alpha, t_beta3 = group["t_alpha"], group["t_beta3"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                    for key in ("m1", "m2", "nu"):
                        state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"].item()
                alpha = group["alpha"]
                if t_alpha:
                    alpha = min(t * alpha / t_alpha, alpha)
                beta3_t = beta3
                if t_beta3:
                    ln_beta1, ln_beta3 = math.log(beta1), math.log(beta3)
                    s = t / t_beta3
                    beta3_t = min(math.exp(ln_beta1 * ln_beta3 / ((1 - s) * ln_beta3
                                                                  + s * ln_beta1)), beta3)
                g, m1, m2, nu = p.grad, state["m1"], state["m2"], state["nu"]
                if p.is_complex():  # every operation is elementwise: the real view, as torch's
                    p, g, m1, m2, nu = map(torch.view_as_real, (p, g, m1, m2, nu))  # Adam does
                m1.mul_(beta1).add_(g, alpha=1.0 - beta1)
                m2.mul_(beta3_t).add_(g, alpha=1.0 - beta3_t)
                nu.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                c1 = 1.0 - beta1**t
                c2 = math.sqrt(1.0 - beta2**t)
                if weight_decay > 0.0:
                    p.mul_(1.0 - lr * weight_decay)
                p.add_((m1 / c1 + alpha * m2) / (nu.sqrt() / c2 + eps), alpha=-lr)
        return loss


class _ScheduleFree(torch.optim.Optimizer):
    """Schedule-Free (Defazio et al. 2024, "The Road Less Scheduled"): the param holds
    y = (1 - beta) z + beta x while training, x (the weighted average of the z iterates) after
    eval(). Per param group: the step count k, the warm-up schedule lr * min(1, (k + 1) /
    warmup_steps), lr_max (the largest scheduled lr so far), and the running sum of the
    weights (k + 1) ** r * lr_max ** weight_lr_power; c = weight / weight_sum. Per element:
    y <- lerp(y, z, c) + lr * (beta * (1 - c) - 1) * g and z <- z - lr * g, which moves x and
    z without storing x. The official implementation (schedulefree, foreach=False) writes the
    normalised grad into p.grad; this reference, as fastoptim, computes it into a copy with the
    same operations and leaves p.grad as it was (the same bits when each step has its own grad).
    State: 'z' (a copy of the param at its first step), plus the rule's moments."""

    _beta_key: str

    def _beta(self, group: dict[str, Any]) -> float:
        value = group[self._beta_key]
        return value[0] if isinstance(value, (tuple, list)) else value

    def _move(self, weight_of: Any, mode: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == mode:
                continue
            weight = weight_of(self._beta(group))
            for p in group["params"]:
                # (schedulefree reads self.state[p], which leaves an empty state for each
                # param without one; fastoptim keeps none, nor does this reference)
                if "z" in self.state.get(p, {}):
                    p.lerp_(self.state[p]["z"], weight)
            group["train_mode"] = mode

    @torch.no_grad()
    def train(self) -> None:
        self._move(lambda beta: 1 - beta, True)  # x -> y

    @torch.no_grad()
    def eval(self) -> None:
        self._move(lambda beta: 1 - 1 / beta, False)  # y -> x

    def _normalized(self, group: dict[str, Any], p: torch.Tensor, k: int) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if not self.param_groups[0]["train_mode"]:
            raise Exception("Optimizer was not in train mode when step is called. Please "  # noqa: TRY002
                            "insert .train() and .eval() calls on the optimizer. See "
                            "documentation for details.")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            k = group["k"]
            warmup = group["warmup_steps"]
            lr = group["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
            group["scheduled_lr"] = lr
            group["lr_max"] = max(lr, group["lr_max"])
            weight = (k + 1) ** group["r"] * group["lr_max"] ** group["weight_lr_power"]
            group["weight_sum"] = group["weight_sum"] + weight
            c = weight / group["weight_sum"] if group["weight_sum"] != 0 else 0.0
            beta = self._beta(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "z" not in state:
                    self._new_state(state, p)
                g = self._normalized(group, p, k)
                if group["weight_decay"] != 0:
                    g.add_(p, alpha=group["weight_decay"])
                z = state["z"]
                p.lerp_(z, c)
                p.add_(g, alpha=lr * (beta * (1 - c) - 1))
                z.sub_(g, alpha=lr)
            group["k"] = k + 1
        return loss

    def _new_state(self, state: dict[str, Any], p: torch.Tensor) -> None:
        state["z"] = p.clone(memory_format=torch.preserve_format)


class AdamWScheduleFree(_ScheduleFree):
    """Schedule-Free AdamW: g = grad / (sqrt(v / (1 - beta2 ** (k + 1))) + eps) with
    v = beta2 v + (1 - beta2) grad^2 ('exp_avg_sq'), decay at y: g += weight_decay * y."""

    _beta_key = "betas"

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8,  # noqa: ANN001
                 weight_decay=0, warmup_steps=0, r=0.0, weight_lr_power=2.0, foreach=True):
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, r=r, k=0, warmup_steps=warmup_steps, train_mode=False,
            weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, weight_lr_power=weight_lr_power,
            weight_decay=weight_decay, foreach=foreach))

    def _new_state(self, state: dict[str, Any], p: torch.Tensor) -> None:
        super()._new_state(state, p)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _normalized(self, group: dict[str, Any], p: torch.Tensor, k: int) -> torch.Tensor:
        beta2 = group["betas"][1]
        v = self.state[p]["exp_avg_sq"]
        v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = v.div(1 - beta2 ** (k + 1)).sqrt_().add_(group["eps"])
        return p.grad.div(denom)


class SGDScheduleFree(_ScheduleFree):
    """Schedule-Free SGD: g = grad (+ weight_decay * y), beta = momentum."""

    _beta_key = "momentum"

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=0,  # noqa: ANN001
                 warmup_steps=0, r=0.0, weight_lr_power=2, foreach=True):
        super().__init__(params, dict(
            lr=lr, momentum=momentum, r=r, k=0, warmup_steps=warmup_steps, train_mode=False,
            weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, weight_lr_power=weight_lr_power,
            weight_decay=weight_decay, foreach=foreach))

    def _normalized(self, group: dict[str, Any], p: torch.Tensor, k: int) -> torch.Tensor:
        return p.grad.clone()


# ---- blockwise dynamic 8-bit state (state_dtype="int8") ------------------------------------------
# Written from torchao 0.18's optim/quant_utils.py (the algorithm of bitsandbytes' dynamic map and
# of Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization"), as torch ops in
# float32, with a partial last block quantized like the others (torchao quantizes only tensors
# whose size is a multiple of the block). tests/test_int8.py checks them against torchao.

def dynamic_map(signed: bool) -> torch.Tensor:
    """The 256 values of the dynamic 8-bit map, ascending, computed as torchao computes them
    (bitsandbytes' create_dynamic_map with 7 exponent bits, float32 linspace and means)."""
    data: list[float] = []
    exponent_bits, total_bits = 7, 8
    non_sign_bits = total_bits - 1
    extra = 2 ** (non_sign_bits - exponent_bits) - 1
    for i in range(exponent_bits):
        items = 2 ** (i + non_sign_bits - exponent_bits) + 1 if signed else \
            2 ** (i + non_sign_bits - exponent_bits + 1) + 1
        bounds = torch.linspace(0.1, 1, int(items))
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(exponent_bits - 1) + i)) * means).tolist()
    if extra > 0:
        bounds = torch.linspace(0.1, 1, extra + 1)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(exponent_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    assert len(data) == 256
    return torch.tensor(sorted(data), dtype=torch.float32)


def quantize_blockwise(x: torch.Tensor, block: int, signed: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes shaped like x, float32 scales, one per block of x's memory order): scale =
    the block's max |x| clipped below at 1e-12; code = torchao's branchless binary search over
    the map with `>=`, then up one code where x / scale - map[c] >= (map[c + 1] - map[c]) * 0.5
    (a tie goes up)."""
    qmap = dynamic_map(signed)
    flat = x.detach().reshape(-1).float()
    n = flat.numel()
    blocks = -(-n // block)
    padded = torch.zeros(blocks * block, dtype=torch.float32)
    padded[:n] = flat
    scale = padded.view(-1, block).abs().amax(-1)
    # a partial last block's max over its own elements (padding zeros cannot raise a max of
    # magnitudes, but a NaN must still propagate: amax does)
    scale = scale.clip(1e-12)
    scaled = (padded.view(-1, block) / scale.view(-1, 1)).view(-1)[:n]
    codes = torch.where(scaled >= qmap[128], 128, 0)
    for step in (64, 32, 16, 8, 4, 2, 1):
        codes += torch.where(scaled >= qmap[codes + step], step, 0)
    up = (codes + 1).clip(max=255)
    low, high = qmap[codes], qmap[up]
    codes = torch.where(scaled - low >= (high - low) * 0.5, up, codes)
    return codes.to(torch.uint8).view(x.shape), scale


def dequantize_blockwise(codes: torch.Tensor, scales: torch.Tensor, block: int,
                         signed: bool) -> torch.Tensor:
    """float32 values of codes: map[code] * the scale of its block."""
    qmap = dynamic_map(signed)
    flat = qmap[codes.reshape(-1).long()]
    index = torch.arange(flat.numel()) // block
    return (flat * scales[index]).view(codes.shape)


class Quantized8bit:
    """A rule's fp32 reference with its moments kept as blockwise 8-bit state: before each step
    every slot's float32 buffer is set to its dequantized codes, the reference steps in float32,
    and each slot is requantized (dequantize, fp32 update, requantize: torchao's AdamW8bit). The
    slots of ``non_negative`` use the unsigned map; params of fewer than ``min_8bit_size``
    elements keep float32 state."""

    def __init__(self, reference: torch.optim.Optimizer, slots: list[str],
                 non_negative: list[str], block_size: int = 256,
                 min_8bit_size: int = 4096) -> None:
        self.reference, self.slots, self.non_negative = reference, slots, set(non_negative)
        self.block, self.least = block_size, min_8bit_size
        self.codes: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.reference.param_groups for p in g["params"]]

    def step(self) -> None:
        for i, p in enumerate(self._params()):
            state = self.reference.state.get(p)
            for slot in self.slots:
                if state and slot in state and (i, slot) in self.codes:
                    codes, scales = self.codes[(i, slot)]
                    state[slot].copy_(dequantize_blockwise(codes, scales, self.block,
                                                           slot not in self.non_negative))
        self.reference.step()
        for i, p in enumerate(self._params()):
            state = self.reference.state.get(p)
            if not state or p.numel() < self.least:
                continue
            for slot in self.slots:
                if slot in state and torch.is_tensor(state[slot]) and state[slot].shape == p.shape:
                    signed = slot not in self.non_negative
                    codes, scales = quantize_blockwise(state[slot], self.block, signed)
                    self.codes[(i, slot)] = (codes, scales)
                    state[slot].copy_(dequantize_blockwise(codes, scales, self.block, signed))
