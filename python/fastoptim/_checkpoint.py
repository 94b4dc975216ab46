"""What both fronts check in a checkpoint before loading any of it.

A ``state_dict`` is torch's layout, ``{"state": {id: {name: value}}, "param_groups": [{...,
"params": [id, ...]}]}``. :func:`parse` checks its structure against this optimizer's groups and
each state entry against the rule's description from the core (``_core.rules()``: slots, scalar
slots, has_step); the fronts then check what only they know (tensor or array, device, the
mixed-precision dtypes) and install the result. Every problem raises before anything changes:
TypeError or ValueError naming the param and the entry, and torch's KeyError for a started state
without an entry torch reads while it loads (``step``, NAdam's ``mu_product``).

Entry names the rule does not know are kept as they are, as torch keeps them.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _core

# fastoptim's own entries beside the rule's: a 16-bit param's float32 master copy, and SGD's
# stochastic-rounding counter (SGD keeps no step)
MASTER = "master_param"
ROUNDING_STEP = "rounding_step"


@dataclass
class Checkpoint:
    """A checkpoint that passed :func:`parse`: its groups and, per state, the flat index of the
    param it belongs to (None: an id no group lists, which torch keeps)."""

    groups: list[dict[str, Any]]
    states: list[tuple[Any, int | None, dict[str, Any]]] = field(default_factory=list)


def kind(info: dict[str, Any], name: Any) -> str:
    """What a state entry is to the rule: 'counter' (a step count), 'scalar' (NAdam's
    mu_product), 'buffer' (a tensor slot or the master copy; int8 state: its codes), 'scales'
    (int8 state's float32 block scales of a slot, '<slot>_scales') or 'unknown'."""
    if (name == "step" and info["has_step"]) or name == ROUNDING_STEP:
        return "counter"
    if any(name == scalar for scalar, _ in info["scalar_slots"]):
        return "scalar"
    if name == MASTER or any(name == slot for slot, _ in info["slots"]):
        return "buffer"
    if isinstance(name, str) and any(name == f"{slot}_scales" for slot, _ in info["slots"]):
        return "scales"
    return "unknown"


def parse(state_dict: Any, info: dict[str, Any], group_sizes: Sequence[int]) -> Checkpoint:
    """The structure of a checkpoint for an optimizer whose groups hold ``group_sizes`` params,
    and every counter and scalar of its states, checked (buffers are the fronts' to check)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"a state dict must be a dict, got {type(state_dict).__name__}")
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"loaded state dict has no '{key}'")
    groups = state_dict["param_groups"]
    if not isinstance(groups, Sequence) or isinstance(groups, (str, bytes)):
        raise TypeError("loaded state dict: 'param_groups' must be a list of dicts, got "
                        f"{type(groups).__name__}")
    for index, group in enumerate(groups):
        if not isinstance(group, Mapping):
            raise TypeError(f"loaded state dict: param group {index} must be a dict, got "
                            f"{type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"loaded state dict: param group {index} has no 'params'")
        ids = group["params"]
        if not isinstance(ids, Sequence) or isinstance(ids, (str, bytes)):
            raise TypeError(f"loaded state dict: param group {index}: 'params' must be a list "
                            f"of param ids, got {type(ids).__name__}")
    if len(groups) != len(group_sizes):
        raise ValueError("loaded state dict has a different number of parameter groups")
    flat: dict[Any, int] = {}
    for saved, size in zip(groups, group_sizes):
        if len(saved["params"]) != size:
            raise ValueError("loaded state dict contains a parameter group that doesn't match "
                             "the size of optimizer's group")
        for key in saved["params"]:
            try:
                if key in flat:
                    raise ValueError(f"loaded state dict lists param id {key!r} twice")
            except TypeError:
                raise TypeError(f"loaded state dict: param id {key!r} is not hashable") from None
            flat[key] = len(flat)
    states = state_dict["state"]
    if not isinstance(states, Mapping):
        raise TypeError("loaded state dict: 'state' must be a dict of param id to state, got "
                        f"{type(states).__name__}")
    out = Checkpoint(list(groups))
    scalar_names = [name for name, _ in info["scalar_slots"]]
    for key, state in states.items():
        index = flat.get(key)
        if index is None and (isinstance(key, bool) or not isinstance(key, int)):
            raise TypeError(f"loaded state dict: state key {key!r} is not a param id (an int "
                            "listed in param_groups)")
        where = f"param {key if index is None else index}"
        if not isinstance(state, Mapping):
            raise TypeError(f"loaded state dict: the state of {where} must be a dict, got "
                            f"{type(state).__name__}")
        if index is not None:
            if state and info["has_step"]:
                # torch reads these of every started state while it loads (its __setstate__):
                # its KeyError, raised here with nothing changed
                for name in ("step", *scalar_names):
                    if name not in state:
                        raise KeyError(f"{where}: loaded state has no '{name}'")
            for name, value in state.items():
                what = kind(info, name)
                if what == "counter":
                    step_count(value, where if name == "step" else f"{where} (state '{name}')")
                elif what == "scalar":
                    scalar_value(value, f"{where}: state '{name}'")
        out.states.append((key, index, state))
    return out


def _stack(values: list[Any]) -> Any:
    if hasattr(values[0], "detach"):  # torch tensors
        import torch

        return torch.stack(values)
    return np.stack(values)


def to_reference(state_dict: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """A state dict with each started param state in the layout of the rule's reference where
    the description has one (``info["checkpoint"]``: its entries, each the next slots in order,
    stacked when several; the key they are nested under; whether the step is an int), so that
    the reference loads it. States of another layout (int8 codes) are left as they are."""
    layout = info["checkpoint"]
    if layout is None:
        return state_dict
    entries, nest, int_step = layout
    slots = [name for name, _ in info["slots"]]
    states = {}
    for key, state in state_dict["state"].items():
        if not all(name in state for name in slots) or any(
                f"{name}_scales" in state for name in slots):
            states[key] = state
            continue
        out = {name: value for name, value in state.items() if name not in slots}
        buffers, at = {}, 0
        for name, count in entries:
            values = [state[slot] for slot in slots[at:at + count]]
            buffers[name] = _stack(values) if count > 1 else values[0]
            at += count
        if nest is None:
            out.update(buffers)
        else:
            out[nest] = buffers
        if int_step and "step" in out:
            out["step"] = int(_number(out["step"]))
        states[key] = out
    return {**state_dict, "state": states}


def from_reference(state_dict: Any, info: dict[str, Any]) -> Any:
    """A state dict whose param states may be in the reference's layout (:func:`to_reference`),
    as the rule's own (one entry per slot); anything else is returned as it is, for
    :func:`parse` to check. ValueError/TypeError naming the param for a malformed one."""
    layout = info["checkpoint"]
    states = state_dict.get("state") if isinstance(state_dict, Mapping) else None
    if layout is None or not isinstance(states, Mapping):
        return state_dict
    entries, nest, _ = layout
    names = [name for name, _ in entries]
    slots = [name for name, _ in info["slots"]]
    converted = {}
    for key, state in states.items():
        if not isinstance(state, Mapping):
            converted[key] = state
            continue
        where = f"param {key}: loaded state"
        source = state.get(nest, state) if nest is not None else state
        if not isinstance(source, Mapping):
            raise TypeError(f"{where} '{nest}' must be a dict, got {type(source).__name__}")
        if source is state and not any(name in state for name in names):
            converted[key] = state  # the rule's own layout
            continue
        both = [name for name in slots if name in state]
        if both:
            raise ValueError(f"{where} has both the reference's entries ({', '.join(names)}) and "
                             f"this optimizer's ({', '.join(both)})")
        other = [str(name) for name in source if name not in names] if source is not state \
            else []
        if other:
            raise ValueError(f"{where} '{nest}' holds {', '.join(other)} beside "
                             f"{', '.join(names)}: another state layout of the reference "
                             "(its 8-bit state?), which this optimizer does not load")
        out = {name: value for name, value in state.items()
               if name != nest and name not in names}
        at = 0
        for name, count in entries:
            taken = slots[at:at + count]
            at += count
            if name not in source:
                raise ValueError(f"{where} has {', '.join(n for n in names if n in source)} "
                                 f"but no '{name}' ({', '.join(taken)})")
            value = source[name]
            if count == 1:
                out[taken[0]] = value
                continue
            if not hasattr(value, "shape"):
                raise TypeError(f"{where} '{name}' must be a tensor holding {', '.join(taken)} "
                                f"stacked, got {type(value).__name__}")
            shape = tuple(value.shape)
            if not shape or shape[0] != count:
                raise ValueError(f"{where} '{name}' must hold {', '.join(taken)} stacked along "
                                 f"its first dimension (shape ({count}, *param shape)), got "
                                 f"{type(value).__name__} of shape {shape}")
            for index, slot in enumerate(taken):
                # a copy, not a view: a view of a DTensor that torch.distributed.checkpoint
                # loaded does not survive the loader's deepcopy, and no slot shares memory
                part = value[index]
                out[slot] = part.clone() if hasattr(part, "clone") else part.copy()
        converted[key] = out
    return {**state_dict, "state": converted}


def _number(value: Any) -> float:
    """One real number: a Python or NumPy number, or a one-element array or tensor of a real
    dtype. Strings are refused (float("3") would read one); TypeError otherwise."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise TypeError
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if value.numel() != 1 or value.is_complex() or str(value.dtype) == "torch.bool":
            raise TypeError
        return float(value.item())
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "fiu":
        raise TypeError
    return float(array.reshape(()))


def step_count(step: Any, where: str) -> int:
    """A param's step count so far, checked as the core checks it: a whole number in
    0..2**53 - 2 (the next step's count must stay exact in the double per-step math). Used when
    a checkpoint is loaded, so a bad count is reported there, with the param named."""
    try:
        value = _number(step)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{where}: state 'step' must be a number, got {step!r}") from None
    if not (0 <= value <= _core.max_step_count - 1) or value != int(value):
        raise ValueError(f"{where}: state 'step' is {value!r}; a step count must be a whole "
                         f"number in 0..{_core.max_step_count - 1}")
    return int(value)


def counter_dtype(count: float) -> str:
    """The dtype a step counter holding ``count`` is kept in: float32 (torch's) while float32
    holds the count and the next one exactly, float64 beyond 2**24 (float32 would round a
    loaded 2**53 - 2 to 2**53, and stop counting at 2**24)."""
    return "float32" if count < 2**24 else "float64"


def scalar_value(value: Any, where: str) -> np.ndarray:
    """A loaded per-param scalar state (NAdam's mu_product) as the 0-d float32 array the front
    keeps (float64 if it came as float64), checked: one finite number."""
    dtype = np.float64 if str(getattr(value, "dtype", "")) in ("float64", "torch.float64") \
        else np.float32
    try:
        number = _number(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{where} must be finite, got {number!r}")
    return np.array(number, dtype=dtype)
