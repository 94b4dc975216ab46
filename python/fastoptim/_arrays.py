"""The array front: optimizers over NumPy arrays (or buffer-protocol / DLPack objects).

Mirrors torch.optim's API and state_dict layout, with arrays instead of tensors and gradients
passed to ``step``. No math here: every update is one call into the C++ core, which checks all
buffers of all groups before it writes any.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from . import _core
from ._runtime import get_num_threads

# The core words a bad hyperparameter as torch does, but it only sees a double; torch formats
# the value the user gave (lr=-1 reads "-1", not "-1.0"), so the message is rebuilt from it.
_ERROR_KEYS: dict[str, tuple[str, int | None]] = {
    "Invalid learning rate": ("lr", None),
    "Invalid epsilon value": ("eps", None),
    "Invalid momentum value": ("momentum", None),
    "Invalid weight_decay value": ("weight_decay", None),
    "Invalid lr_decay value": ("lr_decay", None),
    "Invalid initial_accumulator_value value": ("initial_accumulator_value", None),
    "Invalid rho value": ("rho", None),
    "Invalid alpha value": ("alpha", None),
    "Invalid beta parameter at index 0": ("betas", 0),
    "Invalid beta parameter at index 1": ("betas", 1),
}


def state_slots(rule: str, group: dict[str, Any]) -> list[str | None]:
    """The state slots ``group``'s options use; ValueError in torch's exact words if an option
    is out of range."""
    try:
        return _core.state_slots(rule, group)
    except ValueError as exc:
        prefix, sep, _ = str(exc).rpartition(": ")
        where = _ERROR_KEYS.get(prefix)
        if not sep or where is None:
            raise
        key, index = where
        value = group[key] if index is None else group[key][index]
        raise ValueError(f"{prefix}: {value}") from None


def step_count(step: Any, where: str) -> float:
    """A param's step count so far, as a float, checked as the core checks it: a whole number in
    0..2**53 - 2 (the next step's count must stay exact in the double per-step math). Used when
    a checkpoint is loaded, so a bad count is reported there, with the param named."""
    try:
        value = float(step.item() if hasattr(step, "item") else step)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{where}: state 'step' must be a number, got {step!r}") from None
    if not (0 <= value <= _core.max_step_count - 1) or value != int(value):
        raise ValueError(f"{where}: state 'step' is {value!r}; a step count must be a whole "
                         f"number in 0..{_core.max_step_count - 1}")
    return value


def clip_arguments(max_norm: Any, norm_type: Any) -> tuple[float, float]:
    """clip_grad_norm_'s max_norm and norm_type as floats, checked (both fronts)."""
    try:
        max_norm, order = float(max_norm), float(norm_type)
    except (TypeError, ValueError):
        raise TypeError(f"clip_grad_norm_: max_norm and norm_type must be numbers, got "
                        f"{max_norm!r} and {norm_type!r}") from None
    if not max_norm >= 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be >= 0, got {max_norm!r}")
    if not (order > 0 and order == order):
        raise ValueError(f"clip_grad_norm_: norm_type must be a positive number or inf, got "
                         f"{norm_type!r}")
    return max_norm, order


def clip_coefficient(max_norm: float, norm: float, order: float, error_if_nonfinite: bool) -> float:
    """The factor the next step multiplies grads by; torch's error for a non-finite norm."""
    if error_if_nonfinite and not math.isfinite(norm):
        raise RuntimeError(
            f"The total norm of order {order} for gradients from `parameters` is non-finite, so "
            "it cannot be clipped. To disable this error and scale the gradients by the "
            "non-finite norm anyway, set `error_if_nonfinite=False`")
    return _core.clip_coefficient(max_norm, norm)


def _as_array(obj: Any, what: str) -> np.ndarray:
    """A NumPy view of ``obj`` sharing its memory (never a copy for params)."""
    if isinstance(obj, np.ndarray):
        return obj
    if hasattr(obj, "__dlpack__"):
        if getattr(obj, "requires_grad", False):
            obj = obj.detach()  # a torch leaf tensor: same memory, no autograd
        try:
            return np.from_dlpack(obj)
        except (TypeError, RuntimeError, BufferError) as exc:
            raise TypeError(f"{what}: cannot view {type(obj).__name__} as an array: {exc}") from exc
    try:
        memoryview(obj)
    except TypeError:
        raise TypeError(
            f"{what}: expected an array (NumPy, buffer protocol or DLPack), "
            f"got {type(obj).__name__}"
        ) from None
    return np.asarray(obj)


class Optimizer:
    """Base of the array-front optimizers: param groups, state, state_dict, step(grads)."""

    rule: ClassVar[str]
    has_step: ClassVar[bool] = True

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}
        if isinstance(params, (np.ndarray, dict)) or hasattr(params, "__dlpack__"):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of arrays or "
                f"dicts, but got {type(params).__name__}"
            )
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines) + "\n)"

    # ---- groups ------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        group = dict(param_group)
        params = group.get("params")
        if params is None:
            raise ValueError("param group has no 'params'")
        if isinstance(params, np.ndarray) or hasattr(params, "__dlpack__"):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections")
        group["params"] = list(params)
        if group["params"] and all(isinstance(x, tuple) and len(x) == 2 for x in group["params"]):
            # named parameters, as torch accepts: [("name", array), ...]
            group["param_names"] = [name for name, _ in group["params"]]
            group["params"] = [array for _, array in group["params"]]
        for key, default in self.defaults.items():
            group.setdefault(key, default)
        state_slots(self.rule, group)  # ValueError with torch's wording if out of range
        if group.get("differentiable"):
            raise ValueError("fastoptim does not support differentiable=True (no autograd "
                             "through the step); foreach, fused and capturable are accepted "
                             "and ignored: every step is one fused kernel")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in group["params"]}) != len(group["params"]) or any(
            id(p) in seen for p in group["params"]
        ):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)
        self._on_new_group(group, first_index=sum(len(g["params"]) for g in self.param_groups) - len(group["params"]))

    def _on_new_group(self, group: dict[str, Any], first_index: int) -> None:
        """Hook for rules whose state torch creates eagerly (Adagrad)."""

    # ---- state -------------------------------------------------------------------------------
    def _new_state(self, param: np.ndarray, group: dict[str, Any]) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.has_step:
            state["step"] = np.array(0.0, dtype=np.float32)  # as torch: a float32 scalar
        return state

    def _initial_value(self, slot: str, group: dict[str, Any]) -> float:
        return 0.0

    # ---- step --------------------------------------------------------------------------------
    def _lock(self) -> threading.RLock:
        lock = self.__dict__.get("_step_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_step_lock", threading.RLock())
        return lock

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_step_lock", "_clip_coef")}

    def step(self, grads: Sequence[Any]) -> None:
        """Update every param in place from ``grads`` (one per param, in param order; None
        skips a param). Validates everything first: on error nothing has changed. Concurrent
        calls from several threads are serialized."""
        with self._lock():
            self._step(grads)

    def _step(self, grads: Sequence[Any]) -> None:
        if isinstance(grads, np.ndarray) or hasattr(grads, "__dlpack__"):
            raise TypeError("grads must be a list with one array (or None) per param")
        grads = list(grads)
        count = sum(len(g["params"]) for g in self.param_groups)
        if len(grads) != count:
            raise ValueError(
                f"step() got {len(grads)} grads for {count} params; "
                "pass one grad (or None) per param, in param order"
            )
        specs = []
        pending: dict[int, dict[str, Any]] = {}
        index = 0
        for group in self.param_groups:
            slots = state_slots(self.rule, group)
            names, params, grad_arrays, states, steps = [], [], [], [], []
            for param in group["params"]:
                i, index = index, index + 1
                if grads[i] is None:
                    continue
                name = f"param {i}"
                p = _as_array(param, name)
                g = _as_array(grads[i], f"{name} grad")
                state = self.state.get(i)
                fresh = not state  # torch initialises a param's state when it is empty
                if not fresh and self.has_step:
                    # torch reads every entry of a started state: a missing one is its KeyError
                    for key in ["step", *(s for s in slots if s is not None)]:
                        if key not in state:
                            raise KeyError(f"{name}: its state has no '{key}'")
                missing = [s for s in slots if s is not None and (fresh or s not in state)]
                if fresh or missing:
                    state = dict(self._new_state(p, group) if fresh else state)
                    for slot in missing:
                        state[slot] = self._new_buffer(p, name, self._initial_value(slot, group))
                if state or self.has_step:
                    pending[i] = state
                names.append(name)
                params.append(p)
                grad_arrays.append(g)
                states.append([None if s is None else state[s] for s in slots])
                if self.has_step:  # the count so far; the core checks it, naming the param
                    steps.append(state["step"])
                else:  # SGD: 0 marks a new momentum buffer, which starts as the gradient
                    steps.append(0.0 if "momentum_buffer" in missing else 1.0)
            specs.append((group, names, params, grad_arrays, states, steps))
        _core.step_buffers(self.rule, specs, get_num_threads(),
                           clip_coef=self.__dict__.get("_clip_coef", 1.0))
        self.__dict__.pop("_clip_coef", None)
        for i, state in pending.items():
            if self.has_step:
                state["step"] = np.array(float(state["step"]) + 1.0, dtype=np.float32)
            self.state[i] = state

    def clip_grad_norm_(self, *args: Any, grads: Sequence[Any] | None = None,
                        **kwargs: Any) -> float:
        """clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite=False), or with
        torch's argument order clip_grad_norm_(max_norm, ..., grads=grads).

        torch.nn.utils.clip_grad_norm_ for the grads of the next step (one per param, in param
        order, None skips one), folded into that step: returns the total norm from one
        read-only pass, and the next step(grads) reads each grad multiplied by
        min(1, max_norm / (norm + 1e-6)). The arrays are not rewritten. The norm is
        accumulated in double, bit-identical for any thread count and SIMD level."""
        if grads is None:
            if not args or isinstance(args[0], (int, float, np.number)):
                raise TypeError("clip_grad_norm_: the array front needs the grads of the next "
                                "step: clip_grad_norm_(grads, max_norm) or "
                                "clip_grad_norm_(max_norm, grads=grads)")
            grads, args = args[0], args[1:]
        return self._clip(grads, *args, **kwargs)

    def _clip(self, grads: Sequence[Any], max_norm: float, norm_type: float | str = 2.0,
              error_if_nonfinite: bool = False) -> float:
        max_norm, order = clip_arguments(max_norm, norm_type)
        if isinstance(grads, np.ndarray) or hasattr(grads, "__dlpack__"):
            raise TypeError("grads must be a list with one array (or None) per param")
        grads = list(grads)
        count = sum(len(g["params"]) for g in self.param_groups)
        if len(grads) != count:
            raise ValueError(f"clip_grad_norm_() got {len(grads)} grads for {count} params; "
                             "pass one grad (or None) per param, in param order")
        live = [_as_array(g, f"param {i} grad") for i, g in enumerate(grads) if g is not None]
        if not live:
            raise ValueError("clip_grad_norm_: no param has a grad")
        with self._lock():
            norm, _ = _core.grad_norm_buffers(live, order, get_num_threads())
            self.__dict__["_clip_coef"] = clip_coefficient(max_norm, norm, order,
                                                           error_if_nonfinite)
        return float(norm)

    @staticmethod
    def _new_buffer(p: np.ndarray, name: str, value: float) -> np.ndarray:
        if p.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: unsupported dtype {p.dtype}; expected float32 or float64")
        return _buffer_like(p, value)

    # ---- state_dict --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's layout: {"state": {index: {key: array}}, "param_groups": [{..., "params":
        [indices]}]}; arrays are copies, so the snapshot does not change with later steps."""
        groups, index = [], 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(packed)
        state = {i: {k: np.array(v, copy=True) for k, v in s.items()} for i, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this front or of torch.optim (tensors are copied to arrays).
        Everything is checked before anything changes."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        id_map: dict[Any, tuple[int, Any]] = {}
        index = 0
        for saved, group in zip(groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size "
                    "of optimizer's group"
                )
            for key, param in zip(saved["params"], group["params"]):
                id_map[key] = (index, param)
                index += 1
        new_state: dict[int, dict[str, Any]] = {}
        for key, saved_state in state_dict["state"].items():
            if key not in id_map:
                raise ValueError(f"loaded state dict has state for unknown param {key!r}")
            i, param = id_map[key]
            p = _as_array(param, f"param {i}")
            entry: dict[str, Any] = {}
            for name, value in saved_state.items():
                if value is None:
                    continue
                if name == "step":
                    count = step_count(value, f"param {i}")
                    entry[name] = np.array(count, dtype=np.float32)
                    continue
                array = _to_numpy(value)
                if array.shape != p.shape:
                    raise ValueError(
                        f"param {i}: loaded state '{name}' has shape {array.shape}, "
                        f"param has shape {p.shape}"
                    )
                entry[name] = _buffer_like(p, array)
            new_state[i] = entry
        new_groups = []
        for saved, group in zip(groups, self.param_groups):
            merged = {k: v for k, v in saved.items() if k != "params"}
            merged["params"] = group["params"]
            for key, default in self.defaults.items():
                merged.setdefault(key, group.get(key, default))
            state_slots(self.rule, merged)
            new_groups.append(merged)
        self.state = new_state
        self.param_groups = new_groups


def _buffer_like(p: np.ndarray, value: Any) -> np.ndarray:
    """A new C-contiguous state array shaped like ``p`` and filled with ``value``, placed at
    ``p``'s offset within a 64-byte line. The kernels align their vector loop to the param, so
    every stream is then read and written aligned (NumPy's large arrays start 16 bytes into a
    line; wide accesses that straddle lines measured ~10% slower)."""
    raw = np.empty(p.size + 64 // p.dtype.itemsize, dtype=p.dtype)
    shift = (p.ctypes.data - raw.ctypes.data) % 64 // p.dtype.itemsize
    out = raw[shift : shift + p.size].reshape(p.shape)
    out[...] = value
    return out


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor from torch.optim
        value = value.detach().cpu()
        return np.array(value.numpy(), copy=True)
    return np.asarray(value)


class SGD(Optimizer):
    rule = "sgd"
    has_step = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)


class Adagrad(Optimizer):
    rule = "adagrad"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults)
        # torch.optim.Adagrad creates its state in the constructor, and only there: a group
        # added later gets its state on its first step. So does this one.
        index = 0
        for group in self.param_groups:
            for param in group["params"]:
                i, index = index, index + 1
                try:
                    p = _as_array(param, f"param {i}")
                except TypeError:
                    continue  # reported by step()
                if p.dtype in (np.float32, np.float64):
                    state = self._new_state(p, group)
                    state["sum"] = _buffer_like(p, self._initial_value("sum", group))
                    self.state[i] = state

    def _initial_value(self, slot: str, group: dict[str, Any]) -> float:
        # torch.optim.Adagrad fills "sum" with the constructor's value (self.defaults), not
        # the group's, even for a group with its own initial_accumulator_value.
        return float(self.defaults["initial_accumulator_value"])


class Adadelta(Optimizer):
    rule = "adadelta"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            rho=rho,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            capturable=capturable,
            foreach=foreach,
            differentiable=differentiable,
        )
        super().__init__(params, defaults)


class RMSprop(Optimizer):
    rule = "rmsprop"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            alpha=alpha,
            eps=eps,
            centered=centered,
            weight_decay=weight_decay,
            capturable=capturable,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
        )
        super().__init__(params, defaults)


class Adam(Optimizer):
    rule = "adam"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)


class AdamW(Adam):
    rule = "adamw"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )
