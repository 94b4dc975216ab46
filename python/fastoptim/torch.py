"""fastoptim.torch: drop-in replacements for torch.optim's SGD, Adagrad, Adadelta, RMSprop, Adam
and AdamW on CPU tensors.

Each class subclasses its torch.optim namesake, so the constructor (names, order, defaults,
validation), param groups, hooks, LR schedulers and state_dict layout are torch's own; only
``step`` differs: one fused C++ call per param group and dtype instead of a Python loop.

Per group the front caches a *plan*: the addresses of every param, grad, state buffer and step
counter. It is rebuilt only when a grad or param changes identity or memory, or when the state
is loaded or a group is added, so a step costs one ``.grad`` read per tensor plus the kernel.
Non-contiguous params and grads (transposed or sliced views) go through contiguous staging
copies: slower, never wrong.
"""

from __future__ import annotations

import copy
from operator import is_
from typing import Any

import numpy as np
import torch
from torch.optim.optimizer import _get_scalar_dtype

from . import _core
from ._arrays import state_slots
from ._runtime import get_num_threads

__all__ = ["SGD", "Adagrad", "Adadelta", "RMSprop", "RMSProp", "Adam", "AdamW"]

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous


class _Plan:
    """Addresses of one param group's buffers, split into one pointer table per dtype."""

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.grads: list[torch.Tensor | None] = []
        self.param_ptrs: list[int] = []
        self.grad_ptrs: list[int] = []
        self.batches: list[tuple[str, str, np.ndarray]] = []  # (dtype, step dtype, table)
        self.batch_rows: list[list[int]] = []  # per batch: the param index of each table row
        self.staged_grads: list[tuple[torch.Tensor, torch.Tensor]] = []  # (contiguous copy, grad)
        self.staged_params: list[tuple[torch.Tensor, torch.Tensor]] = []  # (copy, param)
        self.direct_params: list[torch.Tensor] = []  # written through their own memory
        self.counters: np.ndarray | None = None  # SGD's private step counters
        self.keep_alive: list[Any] = []  # every state buffer and step tensor the table points to
        self.generation = -1
        self.slots: list[str | None] | None = None  # the state slots the plan was built for
        self.state_obj: Any = None  # the optimizer's state mapping when the plan was built
        self.state_params: list[torch.Tensor] = []  # params whose state dict the table uses
        self.state_dicts: list[dict[str, Any]] = []
        self.state_lens: list[int] = []

    def state_intact(self, state: Any) -> bool:
        """Whether the state the table points into is still the optimizer's: catches the usual
        resets (opt.state = defaultdict(dict), opt.state.clear(), opt.state[p] = {}), after
        which torch starts from fresh state. keep_alive makes a missed change (a buffer swapped
        inside a param's state dict) stale rather than a write to freed memory."""
        if state is not self.state_obj:
            return False
        if not self.state_params:
            return True
        dicts = list(map(state.get, self.state_params))
        return all(map(is_, dicts, self.state_dicts)) and list(map(len, dicts)) == self.state_lens

    def serves(self, params: list[torch.Tensor], grads: list[Any], generation: int) -> bool:
        """Whether this plan can run the step, after pointing it at new grad tensors if only
        those changed (zero_grad(set_to_none=True) then backward makes new ones each step)."""
        if (
            self.generation != generation
            or len(params) != len(self.params)
            or not all(map(is_, params, self.params))
            or [_data_ptr(p) for p in params] != self.param_ptrs
        ):
            return False
        try:
            grad_ptrs = [0 if g is None else _data_ptr(g) for g in grads]
            if all(map(is_, grads, self.grads)):
                return grad_ptrs == self.grad_ptrs
            # torch checked each new .grad's shape, dtype and device against its param when it
            # was assigned; layout and contiguity are left to check.
            live = [g for g in grads if g is not None]
            if (
                self.staged_grads
                or [g is None for g in grads] != [g is None for g in self.grads]
                or not all(map(_is_contiguous, live))
            ):
                return False
        except RuntimeError:  # sparse or opaque grads: rebuild, which reports them
            return False
        for (_, _, table), rows in zip(self.batches, self.batch_rows):
            table[:, 1] = [grad_ptrs[i] for i in rows]
        self.grads = list(grads)
        self.grad_ptrs = grad_ptrs
        return True


class _FusedStep:
    """The part shared by the six classes: step() through the C++ core."""

    _rule: str
    _has_step = True

    # ---- plans -------------------------------------------------------------------------------
    def _generation(self) -> int:
        return self.__dict__.setdefault("_fastoptim_generation", 0)

    def _invalidate_plans(self) -> None:
        self.__dict__["_fastoptim_generation"] = self._generation() + 1

    def _new_step_tensor(self) -> torch.Tensor:
        return torch.tensor(0.0, dtype=_get_scalar_dtype())

    def _initial_value(self, slot: str, group: dict[str, Any]) -> float:
        return 0.0

    def _build_plan(self, group: dict[str, Any], params: list[torch.Tensor],
                    grads: list[Any], slots: list[str | None]) -> _Plan:
        plan = _Plan()
        plan.params = list(params)
        plan.grads = list(grads)
        plan.param_ptrs = [_data_ptr(p) for p in params]
        plan.grad_ptrs = [0 if g is None else _data_ptr(g) for g in grads]
        plan.generation = self._generation()
        plan.state_obj = self.state
        name = type(self).__name__
        rows: dict[tuple[str, str], list[list[int]]] = {}
        row_params: dict[tuple[str, str], list[int]] = {}
        counters: list[float] = []
        counter_rows: list[list[int]] = []
        for index, (p, g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(f"{name} does not support sparse gradients")
            if p.device.type != "cpu" or g.device.type != "cpu":
                raise ValueError(f"fastoptim.torch.{name} updates CPU tensors; got a param on "
                                 f"{p.device} with grad on {g.device}")
            dtype = _DTYPES.get(p.dtype)
            if dtype is None:
                raise TypeError(f"fastoptim.torch.{name} supports float32 and float64 params, "
                                f"got {p.dtype}")
            if g.dtype != p.dtype:
                raise TypeError(f"grad dtype {g.dtype} does not match param dtype {p.dtype}")
            if g.shape != p.shape:
                raise ValueError(f"grad shape {tuple(g.shape)} does not match param shape "
                                 f"{tuple(p.shape)}")
            # torch.optim.SGD without momentum keeps no state at all (not even an empty dict
            # per param), and its state_dict shows that: do not touch self.state[p] then.
            stateless = not self._has_step and all(slot is None for slot in slots)
            state = {} if stateless else self.state[p]
            if not stateless:
                plan.state_params.append(p)
                plan.state_dicts.append(state)
            if self._has_step and "step" not in state:
                state["step"] = self._new_step_tensor()
            new_buffer = False
            row = [0] * 7
            for k, slot in enumerate(slots):
                if slot is None:
                    continue
                buf = state.get(slot)
                if buf is None:
                    buf = torch.full_like(p, self._initial_value(slot, group),
                                          memory_format=torch.contiguous_format)
                    state[slot] = buf
                    new_buffer = True
                elif not buf.is_contiguous() or buf.dtype != p.dtype or buf.shape != p.shape:
                    if buf.shape != p.shape:
                        raise ValueError(f"state '{slot}' has shape {tuple(buf.shape)}, param "
                                         f"has shape {tuple(p.shape)}")
                    # .to() returns the tensor itself when the dtype already matches, and
                    # clone() keeps its strides: ask for a contiguous copy explicitly.
                    buf = buf.to(dtype=p.dtype).clone(memory_format=torch.contiguous_format)
                    state[slot] = buf
                row[2 + k] = _data_ptr(buf)
                plan.keep_alive.append(buf)
            if p.is_contiguous():
                row[0] = _data_ptr(p)
                plan.direct_params.append(p)
            else:
                staged = p.detach().contiguous()
                plan.staged_params.append((staged, p))
                row[0] = _data_ptr(staged)
            if g.is_contiguous():
                row[1] = _data_ptr(g)
            else:
                staged_grad = g.contiguous()
                plan.staged_grads.append((staged_grad, g))
                row[1] = _data_ptr(staged_grad)
            row[5] = p.numel()
            if self._has_step:
                step = state["step"]
                if not isinstance(step, torch.Tensor):
                    step = state["step"] = torch.tensor(float(step), dtype=_get_scalar_dtype())
                if step.dtype not in _DTYPES or step.device.type != "cpu" or step.numel() != 1:
                    step = state["step"] = torch.tensor(float(step), dtype=_get_scalar_dtype())
                row[6] = _data_ptr(step)
                plan.keep_alive.append(step)
                key = (dtype, _DTYPES[step.dtype])
            else:  # SGD: a new momentum buffer starts as the gradient, as in torch
                counters.append(0.0 if new_buffer else 1.0)
                counter_rows.append(row)
                key = (dtype, "float64")
            rows.setdefault(key, []).append(row)
            row_params.setdefault(key, []).append(index)
        if counter_rows:
            plan.counters = np.array(counters, dtype=np.float64)
            base = plan.counters.ctypes.data
            for i, row in enumerate(counter_rows):
                row[6] = base + 8 * i
        for (dtype, step_dtype), table in rows.items():
            plan.batches.append((dtype, step_dtype, np.array(table, dtype=np.int64)))
            plan.batch_rows.append(row_params[(dtype, step_dtype)])
        plan.state_lens = list(map(len, plan.state_dicts))
        return plan

    # ---- step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = self.__dict__.setdefault("_fastoptim_plans", {})
        generation = self._generation()
        ready = []
        for index, group in enumerate(self.param_groups):
            if group.get("differentiable"):
                raise ValueError("fastoptim.torch does not support differentiable=True")
            params = group["params"]
            grads = [p.grad for p in params]
            # Every group's options are checked before any group is stepped (ValueError with
            # torch's wording, nothing changed), and a change that needs other state buffers
            # (SGD momentum set after a step without it, as torch allows) rebuilds the plan.
            slots = state_slots(self._rule, group)
            plan = plans.get(index)
            if (
                plan is None
                or plan.slots != slots
                or not plan.serves(params, grads, generation)
                or not plan.state_intact(self.state)
            ):
                plan = plans[index] = self._build_plan(group, params, grads, slots)
                plan.slots = slots
            ready.append((group, plan))
        threads = get_num_threads()
        for group, plan in ready:
            for staged, grad in plan.staged_grads:
                staged.copy_(grad)
            for staged, param in plan.staged_params:
                staged.copy_(param)
            for dtype, step_dtype, table in plan.batches:
                _core.step_pointers(self._rule, group, table, step_dtype, threads, dtype)
            for staged, param in plan.staged_params:
                param.copy_(staged)
            if plan.direct_params:
                # written through raw pointers: tell autograd these tensors changed
                torch.autograd.graph.increment_version(plan.direct_params)
        return loss

    # ---- state -------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._invalidate_plans()

    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict, with copies of the state tensors: a checkpoint taken now does
        not change with later steps, and loading it into another optimizer shares nothing."""
        return copy.deepcopy(super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict, after checking that every state tensor has its param's
        shape (torch does not): a mismatched state raises before anything changes."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        id_to_param = {}
        for saved, group in zip(groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size "
                    "of optimizer's group"
                )
            id_to_param.update(zip(saved["params"], group["params"]))
        for key, saved_state in state_dict["state"].items():
            param = id_to_param.get(key)
            if param is None:
                continue
            for name, value in saved_state.items():
                if name == "step" or not isinstance(value, torch.Tensor):
                    continue
                if value.shape != param.shape:
                    raise ValueError(
                        f"loaded state '{name}' of param {key} has shape {tuple(value.shape)}, "
                        f"param has shape {tuple(param.shape)}"
                    )
        super().load_state_dict(copy.deepcopy(state_dict))
        self._invalidate_plans()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.pop("_fastoptim_plans", None)


class SGD(_FusedStep, torch.optim.SGD):
    __doc__ = torch.optim.SGD.__doc__
    _rule = "sgd"
    _has_step = False


class Adagrad(_FusedStep, torch.optim.Adagrad):
    __doc__ = torch.optim.Adagrad.__doc__
    _rule = "adagrad"

    def _initial_value(self, slot: str, group: dict[str, Any]) -> float:
        # torch.optim.Adagrad fills "sum" with the constructor's value (self.defaults), not
        # the group's, even for a group with its own initial_accumulator_value.
        return float(self.defaults["initial_accumulator_value"])


class Adadelta(_FusedStep, torch.optim.Adadelta):
    __doc__ = torch.optim.Adadelta.__doc__
    _rule = "adadelta"


class RMSprop(_FusedStep, torch.optim.RMSprop):
    __doc__ = torch.optim.RMSprop.__doc__
    _rule = "rmsprop"


RMSProp = RMSprop


class Adam(_FusedStep, torch.optim.Adam):
    __doc__ = torch.optim.Adam.__doc__
    _rule = "adam"


class AdamW(_FusedStep, torch.optim.AdamW):
    __doc__ = torch.optim.AdamW.__doc__
    _rule = "adamw"
