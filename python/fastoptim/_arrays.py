"""The array front: optimizers over NumPy arrays (or buffer-protocol / DLPack objects).

Mirrors torch.optim's API and state_dict layout, with arrays instead of tensors and gradients
passed to ``step``. No math here: every update is one call into the C++ core, which checks all
buffers of all groups before it writes any.
"""

from __future__ import annotations

import copy
import inspect
import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from . import _checkpoint, _core, _precision
from ._runtime import get_num_threads

# What the core knows about each rule (its description): names, torch's constructor
# signature, state slots and their initial values, scalar state, whether torch keeps a step.
RULES: dict[str, dict[str, Any]] = {info["name"]: info for info in _core.rules()}


def initial_value(info: dict[str, Any], slot: str, defaults: dict[str, Any]) -> float:
    """A new state slot's fill value: zero, or the constructor's value of the option the rule
    names (torch.optim.Adagrad fills ``sum`` with the constructor's initial_accumulator_value,
    even for a group with its own)."""
    for name, option in info["slots"]:
        if name == slot and option is not None:
            return float(defaults[option])
    return 0.0


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


def _numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a storage type name; bfloat16 is ml_dtypes' (an optional dependency:
    the bfloat16 JAX and TensorFlow use)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("bfloat16 arrays need the ml_dtypes package "
                            "(pip install ml_dtypes)") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _storage_name(array: np.ndarray, what: str) -> str:
    name = _precision.dtype_name(array.dtype)
    if name is None:
        raise TypeError(f"{what}: unsupported dtype {array.dtype}; expected float32, float64, "
                        "float16 or bfloat16 (ml_dtypes)")
    return name


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
    _info: ClassVar[dict[str, Any]]

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
        _core.state_slots(self.rule, group)  # ValueError with torch's wording if out of range
        _check_precision(group)
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

    @property
    def has_step(self) -> bool:
        return bool(self._info["has_step"])

    # ---- state -------------------------------------------------------------------------------
    def _new_state(self, param: np.ndarray, group: dict[str, Any]) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.has_step:
            state["step"] = np.array(0.0, dtype=np.float32)  # as torch: a float32 scalar
        for name, initial in self._info["scalar_slots"]:
            state[name] = np.array(initial, dtype=np.float32)  # as torch: a float32 scalar
        return state

    def _initial_value(self, slot: str, group: dict[str, Any]) -> float:
        return initial_value(self._info, slot, self.defaults)

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
        message = _core.step_refused(self.rule, self.param_groups[0]) \
            if self._info["group_state"] else None
        if message is not None:  # the reference's check and exception, word for word
            raise Exception(message)  # noqa: TRY002
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
        clip_coef = self._pending_clip(grads)
        specs = []
        pending: dict[int, dict[str, Any]] = {}
        index = 0
        counted = self.has_step
        for group in self.param_groups:
            slots = _core.state_slots(self.rule, group)
            stochastic, seed = _precision.rounding(group)
            own_counter = stochastic and not counted  # SGD: stochastic rounding's own count
            names, params, grad_arrays, states, steps, scalars = [], [], [], [], [], []
            masters, rounding_steps, ids = [], [], []
            for param in group["params"]:
                i, index = index, index + 1
                if grads[i] is None:
                    continue
                name = f"param {i}"
                p = _as_array(param, name)
                g = _as_array(grads[i], f"{name} grad")
                state_dtype, master = _precision.storage(_storage_name(p, name), group, name,
                                                         p.size)
                int8 = state_dtype == "int8"
                state = self.state.get(i)
                fresh = not state  # torch initialises a param's state when it is empty
                scalar_names = [name for name, _ in self._info["scalar_slots"]]
                if not fresh and self.has_step:
                    # torch reads every entry of a started state: a missing one is its KeyError
                    for key in ["step", *scalar_names, *(s for s in slots if s is not None)]:
                        if key not in state:
                            raise KeyError(f"{name}: its state has no '{key}'")
                wanted = [s for s in slots if s is not None]
                if master:
                    wanted.append("master_param")
                if own_counter:
                    wanted.append("rounding_step")
                missing = [s for s in wanted if fresh or s not in state]
                if fresh or missing:
                    state = dict(self._new_state(p, group) if fresh else state)
                    for slot in missing:
                        if slot == "master_param":
                            state[slot] = _buffer_like(p, p, np.float32)
                        elif slot == "rounding_step":
                            state[slot] = np.array(0.0, dtype=np.float32)
                        elif int8:
                            value = p if slot in self._info["param_copies"] else \
                                self._initial_value(slot, group)
                            state[slot], state[f"{slot}_scales"] = self._quantized(
                                p, value, group, slot)
                        elif slot in self._info["param_copies"]:  # Schedule-Free's z
                            _storage_name(p, name)
                            state[slot] = _buffer_like(p, p, _numpy_dtype(state_dtype))
                        else:
                            state[slot] = self._new_buffer(
                                p, name, self._initial_value(slot, group), state_dtype)
                for slot in wanted:
                    want = "float32" if slot in ("master_param", "rounding_step") else state_dtype
                    have = _precision.dtype_name(getattr(state[slot], "dtype", None))
                    if getattr(state[slot], "dtype", None) == np.uint8:
                        have = "int8"  # the codes of int8 state
                    if have != want:
                        raise TypeError(f"{name}: state '{slot}' is {have or type(state[slot])}, "
                                        f"the group's settings keep it in {want}")
                if state or self.has_step:
                    pending[i] = state
                names.append(name)
                params.append(p)
                grad_arrays.append(g)
                states.append([None if s is None else
                               (state[s], state.get(f"{s}_scales")) if int8 else state[s]
                               for s in slots])
                scalars.append(state[scalar_names[0]] if scalar_names else None)
                # the master as last stepped: where the param was written since, the kernel
                # reads the param instead (fastoptim._precision)
                masters.append(state["master_param"] if master else None)
                rounding_steps.append(state["rounding_step"] if own_counter else None)
                ids.append(i)
                if self.has_step:  # the count so far; the core checks it, naming the param
                    steps.append(state["step"])
                else:  # SGD: 0 marks a new momentum buffer, which starts as the gradient
                    steps.append(0.0 if "momentum_buffer" in missing else 1.0)
            specs.append((group, names, params, grad_arrays, states, steps, scalars, masters,
                          rounding_steps, (stochastic, seed), ids))
        _core.step_buffers(self.rule, specs, get_num_threads(),
                           clip_coef=clip_coef)
        self.__dict__.pop("_clip_coef", None)
        for i, state in pending.items():
            for key in ("step", "rounding_step"):
                if key in state and (key == "rounding_step" or self.has_step):
                    count = float(state[key]) + 1.0  # exact: a float64 counter past 2**24
                    state[key] = np.array(count, dtype=_checkpoint.counter_dtype(count))
            self.state[i] = state

    def _pending_clip(self, grads: list[Any]) -> float:
        """The pending clip's coefficient for these grads: it applies to the grad buffers
        clip_grad_norm_ measured (same memory, size and dtype, per param), not to others
        (read as they are). ValueError when only some of the grads are the measured ones
        (the arrays are not rewritten, so a clip cannot apply to part of a step)."""
        pending = self.__dict__.get("_clip_coef")
        if pending is None:
            return 1.0
        coef, measured = pending
        same = [_buffer_key(g) == measured.get(i) for i, g in enumerate(grads) if g is not None]
        if all(same):
            return coef
        if not any(same):
            return 1.0
        first = next(i for i, g in enumerate(grads)
                     if g is not None and _buffer_key(g) != measured.get(i))
        raise ValueError(f"param {first}: its grad is not one clip_grad_norm_ measured, while "
                         "other grads of this step are: pass the grads the clip measured, or "
                         "clip the grads of this step")

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
        # the fused norm reads float32/float64; a 16-bit grad widens exactly, so its norm is
        # the same
        live = [g.astype(np.float32) if _precision.dtype_name(g.dtype) in _precision.HALF
                else g for g in live]
        if not live:  # torch's answer: a zero norm, nothing to clip
            return 0.0
        with self._lock():
            # a clip already pending for these grads: torch's second clip measures the clipped
            # grads, and the factors compose
            before = self._pending_clip(grads)
            norm, _ = _core.grad_norm_buffers(live, order, get_num_threads())
            norm *= before
            self.__dict__["_clip_coef"] = (
                before * clip_coefficient(max_norm, norm, order, error_if_nonfinite),
                {i: _buffer_key(g) for i, g in enumerate(grads) if g is not None})
        return float(norm)

    # ---- transforms (Schedule-Free's train/eval) ----------------------------------------------
    def _transform(self, index: int) -> None:
        """The rule's element transform ``index`` of every param whose state exists, in every
        group whose mode flag is not at the transform's target yet; the flags are then set.
        One call into the core, which checks every batch before it runs any."""
        with self._lock():
            batches: dict[tuple, list[list[int]]] = {}
            keep: list[np.ndarray] = []
            param_index = 0
            for group in self.param_groups:
                slots = _core.state_slots(self.rule, group)
                stochastic, seed = _precision.rounding(group)
                for param in group["params"]:
                    i, param_index = param_index, param_index + 1
                    name = f"param {i}"
                    state = self.state.get(i)
                    if not state or any(s is not None and s not in state for s in slots):
                        continue  # no state yet: nothing to move (schedulefree's `'z' in state`)
                    p = _as_array(param, name)
                    state_dtype, master = _precision.storage(_storage_name(p, name), group, name,
                                                             p.size)
                    row = [0] * 15
                    arrays = [(0, p, p.dtype)]
                    arrays += [(2 + k, state[s], _numpy_dtype(state_dtype))
                               for k, s in enumerate(slots) if s is not None]
                    if master:
                        if "master_param" not in state:
                            continue
                        arrays.append((10, state["master_param"], np.dtype(np.float32)))
                    for column, array, dtype in arrays:
                        if not (isinstance(array, np.ndarray) and array.flags.c_contiguous
                                and array.flags.writeable and array.dtype == dtype
                                and array.shape == p.shape):
                            raise ValueError(f"{name}: the transform needs the param and its "
                                             f"state as writable C-contiguous arrays of its "
                                             f"shape ({dtype} for column {column})")
                        row[column] = array.ctypes.data
                        keep.append(array)
                    row[5], row[7] = p.size, i
                    dtype = _storage_name(p, name)
                    types = (dtype, dtype, state_dtype, master, stochastic, seed)
                    batches.setdefault((id(group), types), []).append(row)
            groups = {id(group): group for group in self.param_groups}
            specs = [(groups[key], np.array(rows, dtype=np.int64), types)
                     for (key, types), rows in batches.items()]
            _core.transform_plans(self.rule, index, self.param_groups, specs, get_num_threads())

    def _quantized(self, p: np.ndarray, value: Any, group: dict[str, Any],
                   slot: str) -> tuple[np.ndarray, np.ndarray]:
        """New int8 state for ``p``: (codes, scales) holding ``value`` (a number or an array
        shaped like p) quantized in blocks of the group's block_size."""
        block = group["block_size"]
        values = np.empty(p.shape, dtype=np.float32)
        values[...] = value
        codes = _buffer_like(p, 0, np.uint8)
        scales = np.empty(-(-p.size // block), dtype=np.float32)
        _core.quantize(values.reshape(-1), codes.reshape(-1), scales, block,
                       slot not in self._info["non_negative"])
        return codes, scales

    def dequantize_state(self, index: int, key: str) -> np.ndarray:
        """State ``key`` of param ``index`` as a new float32 array shaped like the param:
        int8 state (state_dtype="int8") decoded from its codes and block scales (torchao's
        OptimState8bit.dequantize()), any other state converted."""
        state = self.state[index]
        if key not in state:
            raise KeyError(f"param {index}'s state has no '{key}'")
        value = state[key]
        if value.dtype != np.uint8:
            return np.asarray(value, dtype=np.float32).copy()
        group = self.param_groups[0]
        seen = 0
        for group in self.param_groups:
            seen += len(group["params"])
            if index < seen:
                break
        out = np.empty(value.shape, dtype=np.float32)
        _core.dequantize(value.reshape(-1), state[f"{key}_scales"], out.reshape(-1),
                         group["block_size"], key not in self._info["non_negative"])
        return out

    @staticmethod
    def _new_buffer(p: np.ndarray, name: str, value: float, dtype: str) -> np.ndarray:
        _storage_name(p, name)
        return _buffer_like(p, value, _numpy_dtype(dtype))

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
        # the reference's layout where the rule's description has one, as the torch front's
        return _checkpoint.to_reference({"state": state, "param_groups": groups}, self._info)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this front, of torch.optim or of the rule's reference (its
        layout where it has its own, e.g. bitsandbytes' AdEMAMix; tensors are copied to arrays).
        The whole checkpoint is checked (fastoptim._checkpoint, then the arrays) before
        anything changes."""
        state_dict = _checkpoint.from_reference(state_dict, self._info)
        loaded = _checkpoint.parse(state_dict, self._info,
                                   [len(g["params"]) for g in self.param_groups])
        new_groups, group_of = [], []
        for saved, group in zip(loaded.groups, self.param_groups):
            merged = {k: v for k, v in saved.items() if k != "params"}
            merged["params"] = group["params"]
            for key, default in self.defaults.items():
                merged.setdefault(key, group.get(key, default))
            _core.state_slots(self.rule, merged)
            _check_precision(merged)
            _precision.check_loadable(merged, group)
            new_groups.append(merged)
            group_of += [merged] * len(group["params"])
        params = [p for g in self.param_groups for p in g["params"]]
        new_state: dict[int, dict[str, Any]] = {}
        for key, i, saved_state in loaded.states:
            if i is None:
                raise ValueError(f"loaded state dict has state for unknown param {key!r}")
            where = f"param {i}"
            p = _as_array(params[i], where)
            param_type = _storage_name(p, where)
            state_type, master = _precision.storage(param_type, group_of[i], where, p.size)
            entry: dict[str, Any] = {}
            for name, value in saved_state.items():
                what = _checkpoint.kind(self._info, name)
                if what == "counter":
                    count = _checkpoint.step_count(value, where)
                    entry[name] = np.array(count, dtype=_checkpoint.counter_dtype(count))
                    continue
                if what == "scalar":
                    entry[name] = _checkpoint.scalar_value(value, f"{where}: state '{name}'")
                    continue
                if what == "scales":  # int8 state's block scales
                    block = group_of[i]["block_size"]
                    blocks = -(-p.size // block)
                    array = _to_numpy(value) if value is not None else None
                    if state_type != "int8":
                        raise ValueError(f"{where}: loaded state has '{name}', the block scales "
                                         f"of int8 state; this optimizer keeps {state_type} "
                                         "state for the param")
                    if array is None or array.dtype != np.float32 or array.shape != (blocks,):
                        raise ValueError(
                            f"{where}: loaded state '{name}' must be {blocks} float32 scales "
                            f"(one per block of {block} of the param's {p.size} elements), got "
                            f"{getattr(array, 'dtype', None)} {getattr(array, 'shape', None)}")
                    entry[name] = np.array(array, copy=True)
                    continue
                if what == "unknown":  # kept as it is, as torch keeps it
                    entry[name] = copy.deepcopy(value)
                    continue
                if value is None:  # torch.optim's SGD without momentum
                    continue
                if state_type == "int8" and name != _checkpoint.MASTER:
                    array = _to_numpy(value)
                    if array.dtype != np.uint8 or array.shape != p.shape:
                        raise ValueError(f"{where}: loaded state '{name}' must be uint8 codes "
                                         f"shaped like the param {p.shape} (int8 state), got "
                                         f"{array.dtype} {array.shape}")
                    if f"{name}_scales" not in saved_state:
                        raise ValueError(f"{where}: loaded state '{name}' is int8 codes without "
                                         f"its scales '{name}_scales'")
                    entry[name] = _buffer_like(p, array, np.uint8)
                    continue
                try:
                    array = _to_numpy(value)
                except (TypeError, ValueError, RuntimeError) as error:
                    raise TypeError(f"{where}: loaded state '{name}' must be an array, got "
                                    f"{type(value).__name__} ({error})") from None
                have = _precision.dtype_name(array.dtype)
                if array.dtype == np.uint8:
                    raise ValueError(f"{where}: loaded state '{name}' is int8 codes; this "
                                     f"optimizer keeps {state_type} state for the param")
                if have is None:
                    raise TypeError(f"{where}: loaded state '{name}' is {array.dtype}; state "
                                    "is float32, float64, bfloat16 or float16")
                if array.shape != p.shape:
                    raise ValueError(
                        f"{where}: loaded state '{name}' has shape {array.shape}, "
                        f"param has shape {p.shape}"
                    )
                want = "float32" if name == _checkpoint.MASTER else state_type
                # plain float32/float64 state converts to its param's dtype, as torch's loading
                # does; a 16-bit stream or a master copy must be what these settings keep
                plain = have in ("float32", "float64") and want == param_type and \
                    param_type in ("float32", "float64") and name != _checkpoint.MASTER
                if name == _checkpoint.MASTER and not master:
                    raise ValueError(f"{where}: loaded state has a 'master_param'; this "
                                     "optimizer keeps none for the param (master_weights "
                                     f"applies to bfloat16/float16 params, this is {param_type})")
                if have != want and not plain:
                    raise ValueError(f"{where}: loaded state '{name}' is {have or array.dtype}, "
                                     f"this optimizer keeps it in {want}")
                entry[name] = _buffer_like(p, array, _numpy_dtype(want))
            new_state[i] = entry
        self.state = new_state
        self.param_groups = new_groups


def _buffer_key(obj: Any) -> tuple | None:
    """What identifies a grad buffer between a clip and a step: address, byte size, dtype."""
    try:
        array = _as_array(obj, "grad")
    except (TypeError, ValueError):  # not an array: the step reports it
        return None
    return array.__array_interface__["data"][0], array.nbytes, array.dtype.str


def _buffer_like(p: np.ndarray, value: Any, dtype: Any = None) -> np.ndarray:
    """A new C-contiguous state array shaped like ``p`` (of ``dtype``, default p's) and filled
    with ``value``, placed at the same element offset within a 64-byte line as ``p``. The
    kernels align their vector loop to the param, so every stream of the param's type is then
    read and written aligned (NumPy's large arrays start 16 bytes into a line; wide accesses
    that straddle lines measured ~10% slower)."""
    dtype = p.dtype if dtype is None else np.dtype(dtype)
    raw = np.empty(p.size + 64 // dtype.itemsize, dtype=dtype)
    offset = p.ctypes.data % 64 // p.dtype.itemsize * dtype.itemsize  # p's elements, in bytes
    shift = (offset - raw.ctypes.data) % 64 // dtype.itemsize
    out = raw[shift : shift + p.size].reshape(p.shape)
    out[...] = value
    return out


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor from torch.optim
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy's bfloat16 is ml_dtypes'
            import torch

            bits = value.contiguous().view(torch.int16)
            return np.array(bits.numpy(), copy=True).view(_numpy_dtype("bfloat16"))
        return np.array(value.numpy(), copy=True)
    return np.asarray(value)


def _check_precision(group: dict[str, Any]) -> None:
    """The group's mixed-precision settings, checked; state_dtype kept as its name."""
    _precision.check_group(group)
    if group["state_dtype"] is not None:
        group["state_dtype"] = _precision.state_name(group["state_dtype"])


def _eager_state(self: Optimizer) -> None:
    """torch creates some rules' state in the constructor, and only there (Adagrad): a group
    added later gets its state on its first step. So does this front."""
    index = 0
    for group in self.param_groups:
        slots = _core.state_slots(self.rule, group)
        for param in group["params"]:
            i, index = index, index + 1
            try:
                p = _as_array(param, f"param {i}")
            except TypeError:
                continue  # reported by step()
            try:
                state_dtype, master = _precision.storage(_storage_name(p, f"param {i}"), group,
                                                         f"param {i}", p.size)
                state_type = None if state_dtype == "int8" else _numpy_dtype(state_dtype)
            except TypeError:
                continue  # reported by step()
            state = self._new_state(p, group)
            for slot in slots:
                if slot is not None and state_type is None:
                    state[slot], state[f"{slot}_scales"] = self._quantized(
                        p, self._initial_value(slot, group), group, slot)
                elif slot is not None:
                    state[slot] = _buffer_like(p, self._initial_value(slot, group), state_type)
            if master:
                state["master_param"] = _buffer_like(p, p, np.float32)
            self.state[i] = state


def transform_method(index: int, name: str, mode: str, to: bool) -> Any:
    """The method of a rule's transform (``opt.train()``) on either front's class."""

    def method(self: Any) -> None:
        self._transform(index)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = (f"The rule's {name} transform of every param that has state, in each "
                      f"group whose '{mode}' is not {to} yet; sets it to {to}.")
    return method


def _rule_class(info: dict[str, Any]) -> type:
    """The array-front class of one rule, with torch's constructor signature (names, order,
    defaults, keyword-only arguments) from the core's description of the rule."""
    kind = inspect.Parameter
    parameters = [kind("self", kind.POSITIONAL_OR_KEYWORD), kind("params", kind.POSITIONAL_OR_KEYWORD)]
    for name, default, keyword_only, _ in info["args"]:
        parameters.append(kind(name, kind.KEYWORD_ONLY if keyword_only else
                               kind.POSITIONAL_OR_KEYWORD, default=default))
    for name, default in _precision.OPTIONS.items():  # every rule's storage settings
        parameters.append(kind(name, kind.KEYWORD_ONLY, default=default))
    signature = inspect.Signature(parameters)

    def __init__(self: Optimizer, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        del values["self"]
        params = values.pop("params")
        # options the signature fixes (AdamW: decoupled_weight_decay=True) are still group keys
        defaults = {**info["defaults"], **values}
        Optimizer.__init__(self, params, defaults)
        if info["eager_state"]:
            _eager_state(self)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    name = info["torch_name"]
    transforms = {transform: transform_method(index, transform, mode, to)
                  for index, (transform, mode, to) in enumerate(info["transforms"])}
    return type(name, (Optimizer,), {
        **transforms,
        "__init__": __init__,
        "__module__": "fastoptim",
        "__qualname__": name,
        "__doc__": f"torch.optim.{name} over NumPy arrays: ``opt.step(grads)`` updates every "
                   "param in place in one fused call (the constructor is torch's). The "
                   "keyword-only master_weights, state_dtype, stochastic_rounding and seed are "
                   "fastoptim._precision's; with master_weights a write to a param between "
                   "steps is kept (an element whose bits differ from its master rounded to "
                   "nearest-even steps from the param's value).",
        "rule": info["name"],
        "_info": info,
    })


_CLASSES = {info["torch_name"]: _rule_class(info) for info in RULES.values()}
