"""Exactness check of an installed fastoptim on an emulated CPU model.

Run it under user-mode emulation with a CPU model that lacks the wider SIMD levels, e.g.

    qemu-x86_64 -cpu Westmere venv/bin/python tests/qemu_check.py --expect sse2   # no AVX
    qemu-x86_64 -cpu Haswell  venv/bin/python tests/qemu_check.py --expect avx2   # no AVX-512

It checks that dispatch picked ``--expect`` and nothing wider is offered, then runs a few steps
of every rule (several option sets, float32 and float64, sizes that hit every vector tail and
the multi-threaded split) at every SIMD level the CPU has, 1 and 2 threads, through the array
front, and compares them with a float64 NumPy reference written here from torch.optim's update
rules; results must also be bit-identical across levels and thread counts. The mixed-precision
layouts (float16, and bfloat16 with ml_dtypes; master copies, 16-bit state and grads,
stochastic rounding) must be bit-identical across levels and thread counts too. With torch
importable it also checks the torch front against ``torch.optim`` (``--no-torch`` skips that).

An instruction the emulated CPU lacks, executed outside the dispatched kernels (a baseline
object built with wide flags, an inline function taken from a kernel object), kills the process
with SIGILL: the caller must treat any non-zero exit, a signal included, as failure. Everything
runs in this one process because qemu-user does not follow child processes. Also runs natively.
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
import time
from collections.abc import Callable
from typing import Any

faulthandler.enable()  # before the import: a SIGILL in module init prints where it happened

import fastoptim
import fastoptim._registry
import numpy as np

LEVELS = ["scalar", "sse2", "avx2", "avx512", "neon"]
SIZES = [1, 7, 17, 1023, 20_000]  # 21k elements per group: above the serial threshold
STEPS = 3
TOLERANCE = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}

Options = dict[str, Any]
State = dict[str, np.ndarray]

# ---- float64 reference: torch.optim's single-tensor update rules, one array at a time ---------


def _decayed(p: np.ndarray, g: np.ndarray, o: Options) -> np.ndarray:
    g = -g if o.get("maximize", False) else g
    wd = o.get("weight_decay", 0.0)
    return g + wd * p if wd != 0 else g


def sgd_ref(p: np.ndarray, g: np.ndarray, s: State, step: int, o: Options) -> np.ndarray:
    d = _decayed(p, g, o)
    momentum = o.get("momentum", 0.0)
    if momentum != 0:
        if "momentum_buffer" not in s:
            s["momentum_buffer"] = d.copy()
        else:
            s["momentum_buffer"] = (
                s["momentum_buffer"] * momentum + (1 - o.get("dampening", 0.0)) * d
            )
        d = d + momentum * s["momentum_buffer"] if o.get("nesterov") else s["momentum_buffer"]
    return p - o["lr"] * d


def adagrad_ref(p: np.ndarray, g: np.ndarray, s: State, step: int, o: Options) -> np.ndarray:
    g = _decayed(p, g, o)
    s.setdefault("sum", np.full_like(p, o.get("initial_accumulator_value", 0.0)))
    clr = o["lr"] / (1 + (step - 1) * o.get("lr_decay", 0.0))
    s["sum"] = s["sum"] + g * g
    return p - clr * g / (np.sqrt(s["sum"]) + o.get("eps", 1e-10))


def adadelta_ref(p: np.ndarray, g: np.ndarray, s: State, step: int, o: Options) -> np.ndarray:
    g = _decayed(p, g, o)
    rho, eps = o.get("rho", 0.9), o.get("eps", 1e-6)
    sq = s.get("square_avg", np.zeros_like(p)) * rho + (1 - rho) * g * g
    acc = s.get("acc_delta", np.zeros_like(p))
    delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * g
    s["square_avg"], s["acc_delta"] = sq, acc * rho + (1 - rho) * delta * delta
    return p - o.get("lr", 1.0) * delta


def rmsprop_ref(p: np.ndarray, g: np.ndarray, s: State, step: int, o: Options) -> np.ndarray:
    g = _decayed(p, g, o)
    alpha, eps, momentum = o.get("alpha", 0.99), o.get("eps", 1e-8), o.get("momentum", 0.0)
    s["square_avg"] = s.get("square_avg", np.zeros_like(p)) * alpha + (1 - alpha) * g * g
    if o.get("centered"):
        ga = s.get("grad_avg", np.zeros_like(p))
        s["grad_avg"] = ga + (1 - alpha) * (g - ga)
        avg = np.sqrt(s["square_avg"] - s["grad_avg"] ** 2) + eps
    else:
        avg = np.sqrt(s["square_avg"]) + eps
    if momentum > 0:
        s["momentum_buffer"] = s.get("momentum_buffer", np.zeros_like(p)) * momentum + g / avg
        return p - o["lr"] * s["momentum_buffer"]
    return p - o["lr"] * g / avg


def adam_ref(p: np.ndarray, g: np.ndarray, s: State, step: int, o: Options) -> np.ndarray:
    lr, wd = o.get("lr", 1e-3), o.get("weight_decay", 0.0)
    beta1, beta2 = o.get("betas", (0.9, 0.999))
    g = -g if o.get("maximize", False) else g
    if wd != 0 and o.get("decoupled_weight_decay", False):
        p = p * (1 - lr * wd)
    elif wd != 0:
        g = g + wd * p
    m = s.get("exp_avg", np.zeros_like(p))
    s["exp_avg"] = m + (1 - beta1) * (g - m)
    s["exp_avg_sq"] = s.get("exp_avg_sq", np.zeros_like(p)) * beta2 + (1 - beta2) * g * g
    second = s["exp_avg_sq"]
    if o.get("amsgrad"):
        s["max_exp_avg_sq"] = np.maximum(s.get("max_exp_avg_sq", np.zeros_like(p)), second)
        second = s["max_exp_avg_sq"]
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = np.sqrt(second) / bias_correction2_sqrt + o.get("eps", 1e-8)
    return p - lr / (1 - beta1**step) * s["exp_avg"] / denom


def adamw_ref(p: np.ndarray, g: np.ndarray, s: State, step: int, o: Options) -> np.ndarray:
    return adam_ref(p, g, s, step, {"weight_decay": 1e-2, **o, "decoupled_weight_decay": True})


def _lerp(m: np.ndarray, g: np.ndarray, w: float) -> np.ndarray:
    """torch's lerp (m.lerp_(g, w)): exactly g for w=1, whatever m is."""
    return m + w * (g - m) if w < 0.5 else g - (g - m) * (1 - w)


def _adam_family_decay(p: np.ndarray, g: np.ndarray, o: Options, lr: float):
    g = -g if o.get("maximize", False) else g
    wd = o.get("weight_decay", 0.0)
    if wd != 0 and o.get("decoupled_weight_decay", False):
        return p * (1 - lr * wd), g
    return p, (g + wd * p if wd != 0 else g)


def nadam_ref(p: np.ndarray, g: np.ndarray, s: State, step: int, o: Options) -> np.ndarray:
    lr, eps, psi = o.get("lr", 2e-3), o.get("eps", 1e-8), o.get("momentum_decay", 4e-3)
    beta1, beta2 = o.get("betas", (0.9, 0.999))
    p, g = _adam_family_decay(p, g, o, lr)
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * psi))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * psi))
    # torch keeps mu_product as a float32 scalar tensor: mu is rounded to float32 and the
    # product taken in float32, even for float64 params
    mu_product = np.float32(s.get("mu_product", np.float32(1.0)) * np.float32(mu))
    s["mu_product"] = mu_product
    s["exp_avg"] = _lerp(s.get("exp_avg", np.zeros_like(p)), g, 1 - beta1)
    s["exp_avg_sq"] = s.get("exp_avg_sq", np.zeros_like(p)) * beta2 + (1 - beta2) * g * g
    denom = np.sqrt(s["exp_avg_sq"] / (1 - beta2**step)) + eps
    p = p + (-lr * (1 - mu) / (1 - float(mu_product))) * (g / denom)
    return p + (-lr * mu_next / (1 - float(mu_product) * mu_next)) * (s["exp_avg"] / denom)


def radam_ref(p: np.ndarray, g: np.ndarray, s: State, step: int, o: Options) -> np.ndarray:
    lr, eps = o.get("lr", 1e-3), o.get("eps", 1e-8)
    beta1, beta2 = o.get("betas", (0.9, 0.999))
    p, g = _adam_family_decay(p, g, o, lr)
    s["exp_avg"] = _lerp(s.get("exp_avg", np.zeros_like(p)), g, 1 - beta1)
    s["exp_avg_sq"] = s.get("exp_avg_sq", np.zeros_like(p)) * beta2 + (1 - beta2) * g * g
    bias_correction2 = 1 - beta2**step
    m_hat = s["exp_avg"] / (1 - beta1**step)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2**step / bias_correction2
    if rho_t <= 5.0:  # variance not tractable yet: momentum SGD
        return p - m_hat * lr
    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
    adaptive = bias_correction2**0.5 / (np.sqrt(s["exp_avg_sq"]) + eps)
    return p - m_hat * lr * adaptive * rect


def adamax_ref(p: np.ndarray, g: np.ndarray, s: State, step: int, o: Options) -> np.ndarray:
    lr, eps = o.get("lr", 2e-3), o.get("eps", 1e-8)
    beta1, beta2 = o.get("betas", (0.9, 0.999))
    g = _decayed(p, g, o)
    s["exp_avg"] = _lerp(s.get("exp_avg", np.zeros_like(p)), g, 1 - beta1)
    s["exp_inf"] = np.maximum(s.get("exp_inf", np.zeros_like(p)) * beta2, np.abs(g) + eps)
    return p + (-lr / (1 - beta1**step)) * (s["exp_avg"] / s["exp_inf"])


def lion_ref(p: np.ndarray, g: np.ndarray, s: State, step: int, o: Options) -> np.ndarray:
    lr, wd = o.get("lr", 1e-4), o.get("weight_decay", 0.0)
    beta1, beta2 = o.get("betas", (0.9, 0.99))
    m = s.get("exp_avg", np.zeros_like(p))
    p = p * (1 - lr * wd) - lr * np.sign(m * beta1 + (1 - beta1) * g)
    s["exp_avg"] = m * beta2 + (1 - beta2) * g
    return p


def ademamix_ref(p: np.ndarray, g: np.ndarray, s: State, step: int, o: Options) -> np.ndarray:
    lr, eps, wd = o.get("lr", 1e-3), o.get("eps", 1e-8), o.get("weight_decay", 1e-2)
    beta1, beta2, beta3 = o.get("betas", (0.9, 0.999, 0.9999))
    alpha, t_alpha, t_beta3 = o.get("alpha", 5.0), o.get("t_alpha"), o.get("t_beta3")
    if t_alpha:
        alpha = min(step * alpha / t_alpha, alpha)
    if t_beta3:
        x = step / t_beta3
        beta3 = min(np.exp(np.log(beta1) * np.log(beta3)
                           / ((1 - x) * np.log(beta3) + x * np.log(beta1))), beta3)
    s["m1"] = s.get("m1", np.zeros_like(p)) * beta1 + (1 - beta1) * g
    s["m2"] = s.get("m2", np.zeros_like(p)) * beta3 + (1 - beta3) * g
    s["nu"] = s.get("nu", np.zeros_like(p)) * beta2 + (1 - beta2) * g * g
    update = (s["m1"] / (1 - beta1**step) + alpha * s["m2"]) / (
        np.sqrt(s["nu"] / (1 - beta2**step)) + eps)
    return p - lr * (update + wd * p)


def _schedule_free(p: np.ndarray, g: np.ndarray, s: State, step: int, o: Options,
                   beta: float) -> np.ndarray:
    """schedulefree's y and z updates from g (the normalised grad); the group's weight sum and
    largest lr kept per param here (every param steps every step)."""
    lr = o.get("lr") * min(1.0, step / o["warmup_steps"]) if o.get("warmup_steps") else o["lr"]
    s["lr_max"] = max(lr, float(s.get("lr_max", -1.0)))
    weight = step ** o.get("r", 0.0) * s["lr_max"] ** o.get("weight_lr_power", 2.0)
    s["weight_sum"] = float(s.get("weight_sum", 0.0)) + weight
    c = weight / s["weight_sum"] if s["weight_sum"] else 0.0
    g = g + o.get("weight_decay", 0.0) * p
    z = s.setdefault("z", p.copy())
    y = p + c * (z - p) + lr * (beta * (1 - c) - 1) * g
    s["z"] = z - lr * g
    return y


def adamw_schedulefree_ref(p: np.ndarray, g: np.ndarray, s: State, step: int,
                           o: Options) -> np.ndarray:
    beta1, beta2 = o.get("betas", (0.9, 0.999))
    s["exp_avg_sq"] = s.get("exp_avg_sq", np.zeros_like(p)) * beta2 + (1 - beta2) * g * g
    denom = np.sqrt(s["exp_avg_sq"] / (1 - beta2**step)) + o.get("eps", 1e-8)
    return _schedule_free(p, g / denom, s, step, o, beta1)


def sgd_schedulefree_ref(p: np.ndarray, g: np.ndarray, s: State, step: int,
                         o: Options) -> np.ndarray:
    return _schedule_free(p, g, s, step, o, o.get("momentum", 0.9))


def ready(opt: Any) -> Any:
    """The optimizer after the transforms that set the mode its step needs (Schedule-Free's
    train(): a step in eval mode raises)."""
    for name, _, to in opt._info["transforms"]:
        if to:
            getattr(opt, name)()
    return opt


Reference = Callable[[np.ndarray, np.ndarray, State, int, Options], np.ndarray]
# registered rule -> (its reference above, option sets); main() refuses a registered rule
# missing here
REFERENCES: dict[str, tuple[Reference, list[Options]]] = {
    "sgd": (
        sgd_ref,
        [
            dict(lr=0.1),
            dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
            dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True),
        ],
    ),
    "adagrad": (
        adagrad_ref,
        [
            dict(lr=0.1),
            dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
        ],
    ),
    "adadelta": (
        adadelta_ref,
        [dict(), dict(lr=0.5, rho=0.8, weight_decay=0.01, maximize=True)],
    ),
    "rmsprop": (
        rmsprop_ref,
        [dict(lr=0.01), dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)],
    ),
    "adam": (
        adam_ref,
        [dict(lr=0.01), dict(lr=0.01, amsgrad=True, weight_decay=0.01, maximize=True)],
    ),
    "adamw": (
        adamw_ref,
        [dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, amsgrad=True, betas=(0.8, 0.99))],
    ),
    "nadam": (
        nadam_ref,
        [dict(lr=0.01), dict(lr=0.01, weight_decay=0.01, momentum_decay=0.1, maximize=True),
         dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.8, 0.99))],
    ),
    "radam": (
        radam_ref,
        # 7 steps (STEPS_OF): unrectified steps 1-5, rectified from step 6 (beta2 0.999 or 0.9)
        [dict(lr=0.01), dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.01, maximize=True),
         dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, decoupled_weight_decay=True)],
    ),
    "adamax": (
        adamax_ref,
        [dict(lr=0.01), dict(lr=0.01, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.01,
                             maximize=True)],
    ),
    "lion": (lion_ref, [dict(lr=0.01), dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.1)]),
    "ademamix": (
        ademamix_ref,
        [dict(lr=0.01), dict(lr=0.01, betas=(0.5, 0.9, 0.99), alpha=2.0, t_alpha=2, t_beta3=3,
                             weight_decay=0.1)],
    ),
    "adamw_schedulefree": (
        adamw_schedulefree_ref,
        [dict(lr=0.01), dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, warmup_steps=2, r=0.5)],
    ),
    "sgd_schedulefree": (
        sgd_schedulefree_ref,
        [dict(lr=0.1), dict(lr=0.1, momentum=0.5, weight_decay=0.1, warmup_steps=2, r=1.0,
                            weight_lr_power=1.0)],
    ),
}
# RAdam's rectified branch starts at step 6 at the earliest
STEPS_OF = {"radam": 7}


def registered_rules() -> dict[str, tuple[str, type, Reference, list[Options]]]:
    """rule -> (class name, array-front class, reference, option sets), for every rule the core
    registers; AssertionError for a registered rule without a reference here."""
    missing = [r for r in fastoptim._registry.RULES if r not in REFERENCES]
    if missing:
        raise AssertionError(f"no reference in qemu_check.py for {', '.join(missing)}")
    return {
        rule: (info["torch_name"], getattr(fastoptim, info["torch_name"]), *REFERENCES[rule])
        for rule, info in fastoptim._registry.RULES.items()
    }


def make_data(seed: int, steps: int = STEPS) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Float32-representable params and per-step grads, so both dtypes start from the same values."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    grads = [[rng.standard_normal(n).astype(np.float32) for n in SIZES] for _ in range(steps)]
    return params, grads


def run_fastoptim(cls: type, options: Options, dtype: type, seed: int,
                  steps: int = STEPS) -> list[np.ndarray]:
    params0, grads = make_data(seed, steps)
    params = [p.astype(dtype) for p in params0]
    opt = ready(cls(params, **options))
    for step_grads in grads:
        opt.step([g.astype(dtype) for g in step_grads])
    return params


def run_reference(ref: Reference, options: Options, seed: int,
                  steps: int = STEPS) -> list[np.ndarray]:
    params0, grads = make_data(seed, steps)
    params = [p.astype(np.float64) for p in params0]
    states: list[State] = [{} for _ in params]
    for step, step_grads in enumerate(grads, start=1):
        params = [
            ref(p, g.astype(np.float64), s, step, options)
            for p, g, s in zip(params, step_grads, states)
        ]
    return params


def check_array_front(levels: list[str]) -> int:
    checks = 0
    for seed, (rule, (name, cls, ref, variants)) in enumerate(registered_rules().items()):
        steps = STEPS_OF.get(rule, STEPS)
        for v, options in enumerate(variants):
            expected = run_reference(ref, options, seed * 10 + v, steps)
            for dtype in (np.float32, np.float64):
                first: tuple[str, list[np.ndarray]] | None = None
                for level in levels:
                    fastoptim.set_simd_level(level)
                    for threads in (1, 2):
                        fastoptim.set_num_threads(threads)
                        got = run_fastoptim(cls, options, dtype, seed * 10 + v, steps)
                        where = f"{name}{options} {np.dtype(dtype).name} {level} x{threads}"
                        for i, (g, e) in enumerate(zip(got, expected)):
                            if not np.allclose(g, e, **TOLERANCE[dtype]):
                                err = np.max(np.abs(g - e) / (np.abs(e) + 1e-30))
                                raise AssertionError(
                                    f"{where}: param {i} (size {g.size}) differs from the "
                                    f"float64 reference, max rel err {err:.3g}"
                                )
                        if first is None:
                            first = (f"{level} x{threads}", got)
                        elif not all(np.array_equal(a, b) for a, b in zip(got, first[1])):
                            raise AssertionError(f"{where}: not bit-identical to {first[0]}")
                        checks += 1
    return checks


def _mixed_layouts() -> list[tuple[str, Any, Any, Options]]:
    """(name, param dtype, grad dtype, settings) of the mixed-precision layouts to check:
    float16 always (NumPy's), bfloat16 when ml_dtypes is installed."""
    layouts = [("fp16", np.float16, np.float16, {}),
               ("fp16 fp32-state", np.float16, np.float16, {"state_dtype": "float32"}),
               ("fp16 master", np.float16, np.float16, {"master_weights": True}),
               ("fp16 stochastic", np.float16, np.float16, {"stochastic_rounding": True}),
               ("fp32 fp16-grads", np.float32, np.float16, {}),
               ("fp64 fp32-grads", np.float64, np.float32, {}),
               # blocks of 32 with partial last blocks (sizes 1023, 20000), 1 and 7 in float32
               ("fp32 int8-state", np.float32, np.float32,
                {"state_dtype": "int8", "block_size": 32, "min_8bit_size": 9})]
    try:
        import ml_dtypes
    except ImportError:
        return layouts
    bf16 = ml_dtypes.bfloat16
    return layouts + [
        ("bf16", bf16, bf16, {}),
        ("bf16 master bf16-state stochastic", bf16, bf16,
         {"master_weights": True, "state_dtype": "bfloat16", "stochastic_rounding": True}),
        ("fp32 bf16-state stochastic", np.float32, np.float32,
         {"state_dtype": "bfloat16", "stochastic_rounding": True})]


def check_mixed_precision(levels: list[str]) -> int:
    """Every rule in 16-bit layouts: the widest level (1 and 2 threads) bit-identical to the
    scalar one (the conversions and stochastic rounding of the emulated CPU's level), and
    the default 16-bit step equal to the float32 step on the widened values, rounded once."""
    checks = 0
    for seed, (rule, (name, cls, _, variants)) in enumerate(registered_rules().items()):
        options = variants[-1]
        for label, param, grad, settings in _mixed_layouts():
            if settings.get("state_dtype") == "int8" and \
                    fastoptim._registry.RULES[rule]["param_copies"]:
                continue  # a slot that copies the param (Schedule-Free's z) is not a moment
            params0, grads = make_data(200 + seed, 2)
            first: tuple[str, list[np.ndarray]] | None = None
            # the reference level and the emulated CPU's widest (qemu time is limited)
            for level in dict.fromkeys((levels[0], levels[-1])):
                fastoptim.set_simd_level(level)
                for threads in (1,) if level == levels[0] else (1, 2):
                    fastoptim.set_num_threads(threads)
                    params = [p.astype(param) for p in params0]
                    opt = ready(cls(params, **options, **settings))
                    for step_grads in grads:
                        opt.step([g.astype(grad) for g in step_grads])
                    bits = [p.view(np.uint8) for p in params]
                    where = f"{name}{options} {label} {level} x{threads}"
                    if first is None:
                        first = (f"{level} x{threads}", bits)
                    elif not all(np.array_equal(a, b) for a, b in zip(bits, first[1])):
                        raise AssertionError(f"{where}: not bit-identical to {first[0]}")
                    checks += 1
            # one step: the float32 step rounded once (state starting from zero: a nonzero
            # initial accumulator is itself rounded to the param's dtype)
            if label in ("fp16", "bf16") and not options.get("initial_accumulator_value"):
                fastoptim.set_num_threads(1)
                wide = [p.astype(param).astype(np.float32) for p in params0]
                narrow = [p.astype(param) for p in params0]
                ready(cls(wide, **options)).step(
                    [g.astype(param).astype(np.float32) for g in grads[0]])
                ready(cls(narrow, **options)).step([g.astype(param) for g in grads[0]])
                for a, b in zip(narrow, wide):
                    if not np.array_equal(a.view(np.uint8), b.astype(param).view(np.uint8)):
                        raise AssertionError(f"{name}{options} {label}: not the float32 step "
                                             "rounded once")
    return checks


def check_torch_front() -> int:
    import fastoptim.torch as fot
    import torch

    checks = 0
    for seed, (rule, (name, _, _, variants)) in enumerate(registered_rules().items()):
        torch_cls = fastoptim._registry.torch_class(rule, torch)
        if torch_cls is None:  # not one of torch's rules: the array front's check is its check
            continue
        options = variants[-1]
        for dtype in (torch.float32, torch.float64):
            params0, grads = make_data(100 + seed, STEPS_OF.get(rule, STEPS))
            ours = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in params0]
            theirs = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in params0]
            opt_ours = getattr(fot, name)(ours, **options)
            opt_theirs = torch_cls(theirs, foreach=False, **options)
            for step_grads in grads:
                for group, opt in ((ours, opt_ours), (theirs, opt_theirs)):
                    for p, g in zip(group, step_grads):
                        p.grad = torch.tensor(g, dtype=dtype)
                    opt.step()
            tol = TOLERANCE[np.float32 if dtype == torch.float32 else np.float64]
            for a, b in zip(ours, theirs):
                if not torch.allclose(a.detach(), b.detach(), **tol):
                    raise AssertionError(f"torch front {name}{options} {dtype} != torch.optim")
            checks += 1
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect", choices=LEVELS, help="the SIMD level dispatch must pick")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch front check")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    level, available = fastoptim.simd_level(), fastoptim.available_simd_levels()
    print(f"qemu_check: fastoptim {fastoptim.__version__} from {fastoptim.__file__}")
    print(f"qemu_check: simd_level={level} available={available}", flush=True)
    if args.expect is not None:
        if level != args.expect:
            print(f"FAIL: dispatch picked {level}, expected {args.expect}", file=sys.stderr)
            return 1
        if available[-1] != args.expect:
            print(f"FAIL: {available[-1]} offered on a CPU without it", file=sys.stderr)
            return 1
    try:
        checks = check_array_front(available)
        fastoptim.set_simd_level(level)
        print(f"qemu_check: array front: {checks} runs match the reference", flush=True)
        mixed = check_mixed_precision(available)
        fastoptim.set_simd_level(level)
        print(f"qemu_check: mixed precision: {mixed} runs bit-identical across levels and "
              "threads", flush=True)
        torch_checks = 0
        if not args.no_torch:
            try:
                import torch  # noqa: F401
            except ImportError:
                print("qemu_check: torch not installed: torch front not checked")
            else:
                torch_checks = check_torch_front()
                print(f"qemu_check: torch front: {torch_checks} runs match torch.optim")
    except AssertionError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    print(f"qemu_check: OK at {level} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
