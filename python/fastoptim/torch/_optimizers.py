"""The fused classes of fastoptim.torch: drop-in replacements for torch.optim's classes of every
rule the C++ core describes (``_core.rules()``) on CPU tensors.

Each class subclasses its torch.optim namesake, so the constructor (names, order, defaults,
validation), param groups, hooks, LR schedulers and state_dict layout are torch's own; only
``step`` (and the added ``clip_grad_norm_``) differ: one fused C++ call for every group and
dtype, which validates everything before it writes anything.

Per group the front caches a *plan*: the addresses of every param, grad, state buffer and step
counter. Before every step it re-checks each param's and grad's address, byte size and
contiguity (strides for other dense layouts) and whether any state mapping changed, so nothing
is read or written outside a tensor's current memory; new grad tensors only update the grad
column. Dense layouts (channels_last, transposed, permuted) are stepped in place, gapped views
through staging copies, DTensors on their local shards, complex params as their real view, and
sparse grads (Adagrad; SGD without momentum) row by row. Differentiable groups and SGD's sparse
momentum run torch's own update. GradScaler's scale and inf flag, and a pending clip, are folded
into the kernel's grad read.

Mixed precision (fastoptim._precision): bfloat16/float16 params are stepped by the fused kernels
too, by default with state in the param's dtype and the math in float32 (torch's fused=True
semantics: every store rounded once). Four keyword-only constructor arguments, which become
param-group keys saved in state_dict, choose other storage: ``master_weights`` (a float32 copy in
state 'master_param'), ``state_dtype`` (float32 or bfloat16 moments), ``stochastic_rounding``
and ``seed``. float32 params may have bfloat16/float16 grads (``p.grad_dtype``), read as they are.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import sys
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Mapping
from itertools import chain
from operator import attrgetter, is_
from typing import Any

import numpy as np
import torch
from torch.optim import optimizer as _optimizer
from torch.optim.optimizer import _get_scalar_dtype

try:
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # torch built without distributed
    _DTensor = ()

from .. import _checkpoint, _core, _precision
from .._arrays import RULES, clip_arguments, clip_coefficient, initial_value, transform_method
from .._checkpoint import scalar_value, step_count
from .._runtime import get_num_threads

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_HALF = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
# complex params are stepped as their real view (torch steps view_as_real too): twice the
# elements of the real dtype, same memory
_PARAM_DTYPES = {**_DTYPES, **_HALF, torch.complex64: "float32", torch.complex128: "float64"}
_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64,
                 "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": torch.uint8}
_ITEM_SIZES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
_dtype = attrgetter("dtype")
_OPTIONS_ITEMS = tuple(_precision.OPTIONS.items())
_stride = torch.Tensor.stride
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_nbytes = attrgetter("nbytes")
_grad = attrgetter("grad")


# ---- optimizer state that reports its own changes ---------------------------------------------
# The plan points into the state tensors, so a replaced entry (opt.state[p]["exp_avg"] = t,
# opt.state[p] = {}, opt.state.clear(), ...) must be noticed before the next step. Checking every
# entry's identity each step costs as much as the kernel on a model of many small tensors;
# instead the state mappings count their own changes. Every mutating method bumps one counter;
# a plan is valid while the counter is where it was when the plan was built. Pickling and
# deepcopy see plain dicts (so checkpoints do not depend on fastoptim).
_changes = [0]


def _changed(method: Any) -> Any:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        _changes[0] += 1
        return method(self, *args, **kwargs)

    wrapper.__name__ = method.__name__
    return wrapper


class _ParamState(dict):
    """One param's state (torch's plain dict, plus change counting)."""

    __slots__ = ()
    for _name in ("__setitem__", "__delitem__", "clear", "pop", "popitem", "setdefault", "update",
                  "__ior__"):
        locals()[_name] = _changed(getattr(dict, _name))
    del _name

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (dict, (dict(self),))


class _State(defaultdict):
    """opt.state: torch's defaultdict(dict), with _ParamState values and change counting."""

    for _name in ("__setitem__", "__delitem__", "clear", "pop", "popitem", "setdefault", "update",
                  "__ior__"):
        locals()[_name] = _changed(getattr(defaultdict, _name))
    del _name

    def __init__(self, items: Any = ()) -> None:
        super().__init__(_ParamState)
        for key, value in dict(items).items():
            dict.__setitem__(self, key,
                             _ParamState(value) if isinstance(value, dict) else value)
        _changes[0] += 1

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (defaultdict, (dict,), None, None, iter((k, dict(v) if isinstance(v, dict) else v)
                                                      for k, v in self.items()))


_FORGOTTEN = object()  # a plan's grad after the step: present, but no longer known which


class _Plan:
    """Addresses of one param group's buffers, split into one pointer table per dtype, and what
    they were taken from: the plan serves a step only while every param and grad it points to
    still has the address, byte size and contiguity it had (so a tensor swapped through .data,
    sliced, transposed, or re-allocated at the same address is noticed), and the state mappings
    report no change."""

    def __init__(self) -> None:
        self.params: list[torch.Tensor] = []
        self.grads: list[torch.Tensor | None] = []
        # (addresses, byte sizes, strides) of the params and of the grads present; the strides
        # are compared only when some tensor is not contiguous (else contiguity is the check)
        self.param_sig: tuple[list[int], list[int], list[tuple[int, ...]]] = ([], [], [])
        self.grad_sig: tuple[list[int], list[int], list[tuple[int, ...]]] = ([], [], [])
        self.strided = False
        self.distributed = False  # DTensor params: their local shards are what is stepped
        self.sparse: list[dict[str, Any]] = []  # sparse grads, stepped row by row
        self.complex = False  # complex params (stepped as their real view)
        self.present: list[bool] = []  # which params had a grad
        # 16-bit grads: bfloat16 and float16 have the same byte size, so their dtypes are
        # compared too (a float16 grad read as bfloat16 would be garbage)
        self.narrow = False
        self.grad_dtypes: list[torch.dtype] = []
        self.settings: tuple | None = None  # the group's mixed-precision settings
        # (stream types, pointer table): types as _core's plan tables take them
        self.batches: list[tuple[tuple, np.ndarray]] = []
        self.batch_rows: list[list[int]] = []  # per batch: the live-grad position of each row
        # Gapped or overlapping params go through a contiguous copy; a grad whose strides are
        # not its param's layout, through a copy in that layout.
        self.staged_grads: list[tuple[torch.Tensor, torch.Tensor]] = []  # (copy, grad)
        self.staged_params: list[tuple[torch.Tensor, torch.Tensor]] = []  # (copy, param)
        self.direct_params: list[torch.Tensor] = []  # written through their own memory
        self.counters: np.ndarray | None = None  # SGD's private step counters
        # Every state buffer, master copy and step counter the tables point to, and what it
        # was: address, byte size, strides, dtype (a tensor resized in place, its storage
        # resized or freed, or its .data swapped, no longer matches and the plan is rebuilt).
        # Their storages are kept too: until the check, the tables point into live memory.
        self.watched: list[torch.Tensor] = []
        self.watched_sig: list[tuple] = []
        self.keep_alive: list[Any] = []
        self.new_state: list[tuple[torch.Tensor, dict[str, Any]]] = []  # added on success
        # state entries the settings no longer keep (a master copy after master_weights was
        # turned off), removed on success
        self.dropped: list[tuple[torch.Tensor, str]] = []
        self.memory: list[torch.Tensor] = []  # the params' memory (DTensors' local shards)
        self.guard: Any = None  # _core.PlanGuard: the same checks in C++
        self.generation = -1
        self.slots: list[str | None] | None = None  # the state slots the plan was built for
        self.state_obj: Any = None  # the optimizer's state mapping when the plan was built
        self.changes = -1

    def watch(self, t: torch.Tensor, what: str) -> int:
        """Records a tensor the tables point to (checked before every step); its address."""
        _check_memory(t, what)
        self.watched.append(t)
        self.watched_sig.append(_signature(t))
        self.keep_alive.append(_storage(t))
        return _data_ptr(t)

    def forget_grads(self) -> None:
        """After a step: no reference to a grad is kept (torch's optimizers keep none, and
        zero_grad(set_to_none=True) then frees the grads before backward makes new ones); the
        next check compares whichever grads the params have then with the recorded ones."""
        if self.staged_grads:  # a new grad tensor rebuilds this plan anyway
            return
        if self.guard is not None:
            self.guard.forget_grads()
        self.grads = [_FORGOTTEN] * len(self.grads)

    def serves(self, params: list[torch.Tensor]) -> bool:
        """Whether this plan can run the step, after pointing it at new grad tensors if only
        those changed (zero_grad(set_to_none=True) then backward makes new ones each step).
        Address, byte size and contiguity of every param and grad are what keeps reads and
        writes inside each tensor's current memory; they cost ~25 ns a tensor each."""
        if self.sparse:  # new indices every step: the row tables are rebuilt
            return False
        if self.guard is not None:
            return self.guard.serves(params)
        if list(map(_signature, self.watched)) != self.watched_sig:
            return False
        grads = list(map(_grad, params))
        if len(params) != len(self.params) or not all(map(is_, params, self.params)):
            return False
        if self.distributed:
            params = list(map(_memory, params))
        if (
            list(map(_data_ptr, params)) != self.param_sig[0]
            or list(map(_nbytes, params)) != self.param_sig[1]
            or (list(map(_stride, params)) != self.param_sig[2] if self.strided
                else not all(map(_is_contiguous, params)))
        ):
            return False
        same = all(map(is_, grads, self.grads))
        live = grads if all(self.present) else [g for g in grads if g is not None]
        if not same and [g is not None for g in grads] != self.present:
            return False
        if self.distributed:
            live = list(map(_memory, live))
        try:
            ptrs = list(map(_data_ptr, live))
            if list(map(_nbytes, live)) != self.grad_sig[1] or (
                list(map(_stride, live)) != self.grad_sig[2] if self.strided
                else not all(map(_is_contiguous, live))
            ) or (self.narrow and list(map(_dtype, live)) != self.grad_dtypes):
                return False
        except (RuntimeError, TypeError, AttributeError):  # sparse or opaque grads: rebuild,
            return False  # which reports them
        if ptrs != self.grad_sig[0]:
            if self.staged_grads:
                return False
            for (_, table), rows in zip(self.batches, self.batch_rows):
                table[:, 1] = [ptrs[i] for i in rows]
            self.grad_sig = (ptrs, self.grad_sig[1], self.grad_sig[2])
        if not same:
            self.grads = list(grads)
        return True


def _load_plan_guard() -> bool:
    """Whether the per-step plan check runs in C++ (_core.PlanGuard, through torch's stable C
    shim in the libtorch_cpu this process loaded), after a probe that it sees what torch's
    Python methods see; else the check is the Python one (_Plan.serves)."""
    import os
    import sys

    aoti = getattr(torch._C, "_aoti", None)
    many = getattr(aoti, "unsafe_alloc_void_ptrs_from_tensors", None)
    name = {"win32": "torch_cpu.dll", "darwin": "libtorch_cpu.dylib"}.get(sys.platform,
                                                                           "libtorch_cpu.so")
    library = os.path.join(os.path.dirname(torch.__file__), "lib", name)
    if many is None or os.environ.get("FASTOPTIM_PLAN_CHECK") == "python":
        return False
    try:
        if not _core.load_torch_shim(library if sys.platform != "win32" else name, many):
            return False
        t, g = torch.zeros(2, 3), torch.zeros(2, 3)
        table = np.zeros((1, 15), dtype=np.int64)
        guard = _core.PlanGuard([t], [t], [g], [table], [[0]], False)
        g2 = torch.ones(2, 3)
        t.grad = None
        probe = [t]
        ok = not guard.serves(probe)  # no grad where the plan had one
        t.grad = g2
        ok = ok and guard.serves(probe) and table[0, 1] == _data_ptr(g2)
        t.data = torch.zeros(3, 2)
        ok = ok and not guard.serves(probe)
        # grads of torch.Tensor's own type read without a new handle each, where the running
        # torch's objects have the layout extensions compile against (else handles, as before)
        _core.enable_direct_tensors([torch.zeros(3), torch.ones(2, 2)[:, 1], torch.empty(0)])
        return ok
    except Exception:  # noqa: BLE001 - any surprise: the Python check, which is always right
        return False


_PLAN_GUARD = _load_plan_guard()


def _signature(t: torch.Tensor) -> tuple:
    return _data_ptr(t), _nbytes(t), _stride(t), t.dtype


def _plain_types(dtype: str) -> tuple:
    """A plan table's stream types when every stream has the param's dtype."""
    return (dtype, dtype, dtype, False, False, 0)


def _settings(group: dict[str, Any]) -> dict[str, Any]:
    """A group's mixed-precision settings (fastoptim._precision.OPTIONS), checked, with
    state_dtype as its name; a group without them (hand-made, or from an older pickle) has the
    defaults."""
    settings = {key: group.get(key, default) for key, default in _precision.OPTIONS.items()}
    _precision.check_group(settings)
    if settings["state_dtype"] is not None:
        settings["state_dtype"] = _precision.state_name(settings["state_dtype"])
    return settings


def _param_storage(p: torch.Tensor, settings: dict[str, Any],
                   where: str) -> tuple[str, str, bool] | None:
    """(param dtype, state dtype, has a master copy) of a param under a group's settings, as
    names; None for a dtype fastoptim does not step. TypeError naming the param for settings
    that make no sense for it (float64 params with bfloat16 state, complex params with state
    of another dtype)."""
    name = _PARAM_DTYPES.get(p.dtype)
    if name is None:
        return None
    state, master = _precision.storage(name, settings, where, _memory(p).numel())
    if p.is_complex() and state != name:
        raise TypeError(f"{where}: complex params keep state of their own dtype ({p.dtype}); "
                        f"state_dtype={state} does not apply to them")
    return name, state, master


def _torch_dtype(p: torch.Tensor, name: str) -> torch.dtype:
    """The torch dtype of a state stream of storage type ``name`` beside param ``p`` (complex
    params keep complex state)."""
    return p.dtype if p.is_complex() else _TORCH_DTYPES[name]


# (param, grad, state, master) dtypes the binding has kernels for (it owns the list of layouts)
_SUPPORTED: set[tuple] = set()


def _check_types(types: tuple, where: str) -> None:
    """The binding's TypeError for stream types it has no kernel for, naming the param."""
    if types[:4] not in _SUPPORTED:
        _core.check_types(where, types)
        _SUPPORTED.add(types[:4])


def _memory(t: torch.Tensor) -> torch.Tensor:
    """The tensor whose memory is stepped: a DTensor's local shard (FSDP2, distribute_tensor),
    else the tensor itself."""
    return getattr(t, "_local_tensor", t) if isinstance(t, _DTensor) else t


def _optim_state() -> Any:
    from torch.amp.grad_scaler import OptState

    return OptState


class _TorchSteps(Exception):
    """Raised while a plan is built (nothing changed yet): this step is torch's to run."""


def _storage(t: torch.Tensor) -> Any:
    return t.untyped_storage()


def _counter_ok(t: Any) -> bool:
    """Whether a step counter can be read and incremented in place by the core: a float32 or
    float64 tensor of one element in CPU memory."""
    return isinstance(t, torch.Tensor) and t.dtype in _DTYPES and t.device.type == "cpu" and \
        t.numel() == 1


def _check_sparse(p: torch.Tensor, g: torch.Tensor, where: str) -> None:
    """A sparse COO grad whose indices or values do not fit its param (torch checks sparse
    invariants only when asked, so such grads can be made): IndexError (torch.optim.Adagrad's
    error type) before anything is written. torch's own SGD would write outside the param."""
    if not g.is_sparse:
        return
    sparse_dim = g.sparse_dim()
    if g.shape != p.shape:
        return  # the shape error comes later, from torch or from the plan
    indices, values = g._indices(), g._values()
    if indices.dim() != 2 or indices.shape[0] != sparse_dim or values.dim() < 1 or \
            values.shape[0] != indices.shape[1] or values.shape[1:] != p.shape[sparse_dim:]:
        raise ValueError(f"{where}: its sparse grad has {tuple(indices.shape)} indices and "
                         f"{tuple(values.shape)} values, which do not fit the param's shape "
                         f"{tuple(p.shape)}")
    if indices.numel():
        low = indices.amin(dim=1)
        high = indices.amax(dim=1)
        for d in range(sparse_dim):
            if low[d] < 0 or high[d] >= p.shape[d]:
                bad = int(low[d]) if low[d] < 0 else int(high[d])
                raise IndexError(f"{where}: its sparse grad has index {bad} in dim {d}, outside "
                                 f"the param's {p.shape[d]} rows (0..{p.shape[d] - 1})")


def _is_codes(value: Any) -> bool:
    """Whether a state entry is the uint8 codes of int8 state."""
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8


def _flat(t: torch.Tensor) -> np.ndarray:
    """A dense tensor's memory, in memory order, as a 1-D NumPy array (no copy)."""
    return t.detach().as_strided((t.numel(),), (1,)).numpy()


def _check_memory(t: torch.Tensor, what: str) -> None:
    """RuntimeError naming the tensor unless its storage holds every element it addresses (a
    storage resized by hand, t.untyped_storage().resize_(0), leaves a tensor without memory)."""
    if t.numel() == 0:
        return
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    if _data_ptr(t) == 0 or \
            t.untyped_storage().nbytes() < (t.storage_offset() + extent) * t.element_size():
        raise RuntimeError(f"{what} has no memory for its {t.numel()} elements (its storage "
                           f"holds {t.untyped_storage().nbytes()} bytes)")


def _check_state_memory(state: dict[str, Any], where: str) -> None:
    """_check_memory for every CPU tensor of a param's state (before anything reads them:
    torch itself crashes reading a tensor whose storage was freed by hand)."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.device.type == "cpu" and \
                value.layout == torch.strided:
            _check_memory(_memory(value), f"{where}: state '{key}'")


def _counter_tensor(count: int) -> torch.Tensor:
    """A step counter holding ``count``: torch's float32 while that is exact, else float64."""
    dtype = _get_scalar_dtype() if _checkpoint.counter_dtype(count) == "float32" else torch.float64
    return torch.tensor(float(count), dtype=dtype)


def _dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: the elements fill [data_ptr, data_ptr + nbytes) exactly once,
    in some order of the dims (contiguous, channels_last, transposed, permuted)."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _with_step_hooks(step: Any) -> Any:
    """torch.optim's step wrapper (Optimizer.profile_hook_step: the global and per-optimizer
    pre-hooks, which may replace the arguments, the step, _optimizer_step_code, the post-hooks)
    with its record_function only while a profiler runs: it costs ~6 us a step, a tenth of the
    fixed cost of 400 small tensors. Marked `hooked` so that torch does not wrap it again; a
    subclass's own step is wrapped by torch as usual, and then this one runs no hooks."""

    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        self = args[0]
        if type(self).step is not wrapper:  # called by a subclass's step: torch's wrapper hooks
            return step(*args, **kwargs)
        if torch.autograd._profiler_enabled():
            with torch.autograd.profiler.record_function(
                    f"Optimizer.step#{type(self).__name__}.step"):
                return hooked(args, kwargs)
        return hooked(args, kwargs)

    def hooked(args: tuple, kwargs: dict[str, Any]) -> Any:
        self = args[0]
        for pre_hook in chain(_optimizer._global_optimizer_pre_hooks.values(),
                              self._optimizer_step_pre_hooks.values()):
            result = pre_hook(self, args, kwargs)
            if result is not None:
                if isinstance(result, tuple) and len(result) == 2:
                    args, kwargs = result
                else:
                    raise RuntimeError(f"{step} must return None or a tuple of "
                                       f"(new_args, new_kwargs), but got {result}.")
        out = step(*args, **kwargs)
        self._optimizer_step_code()
        for post_hook in chain(self._optimizer_step_post_hooks.values(),
                               _optimizer._global_optimizer_post_hooks.values()):
            post_hook(self, args, kwargs)
        return out

    wrapper.hooked = True  # type: ignore[attr-defined]
    return wrapper


class _FusedStep:
    """The part shared by the fused classes: step() through the C++ core."""

    _rule: str
    _info: dict[str, Any]
    # GradScaler hands step() its scale and inf flag (rather than unscaling and checking the
    # grads itself): both are folded into the step
    _step_supports_amp_scaling = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__ == __name__:  # the classes made below, not users' subclasses
            cls.__module__ = "fastoptim.torch"  # where users import them from (repr, pickle)
            cls.__doc__ = (cls._torch_class(cls).__doc__ or "") + _OPTION_DOCS

    # ---- plans -------------------------------------------------------------------------------
    def _generation(self) -> int:
        return self.__dict__.setdefault("_fastoptim_generation", 0)

    def _invalidate_plans(self) -> None:
        self.__dict__["_fastoptim_generation"] = self._generation() + 1

    def _lock(self) -> threading.RLock:
        lock = self.__dict__.get("_fastoptim_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_fastoptim_lock", threading.RLock())
        return lock

    def _new_step_tensor(self, group: dict[str, Any]) -> torch.Tensor:
        return torch.tensor(0.0, dtype=_get_scalar_dtype(is_fused=bool(group.get("fused"))))

    @property
    def _has_step(self) -> bool:
        return bool(self._info["has_step"])

    def _initial_value(self, slot: str, group: dict[str, Any]) -> float:
        return initial_value(self._info, slot, self.defaults)

    def _build_plan(self, group: dict[str, Any], params: list[torch.Tensor],
                    grads: list[Any], slots: list[str | None], first_index: int) -> _Plan:
        """Checks every tensor the step will use and builds the pointer tables. Changes nothing:
        state the step needs that does not exist yet is made here but only added to opt.state
        once the step went through."""
        plan = _Plan()
        plan.params = list(params)
        plan.grads = list(grads)
        plan.present = [g is not None for g in grads]
        plan.distributed = any(isinstance(t, _DTensor) for t in params)
        plan.complex = any(p.is_complex() for p in params)
        memory = plan.memory = list(map(_memory, params))
        plan.param_sig = (list(map(_data_ptr, memory)), list(map(_nbytes, memory)),
                          list(map(_stride, memory)))
        name = type(self).__name__
        rows: dict[tuple, list[list[int]]] = {}
        row_live: dict[tuple, list[int]] = {}
        scalar_names = [name for name, _ in self._info["scalar_slots"]]
        counters: list[float] = []
        counter_rows: list[list[int]] = []
        live: list[torch.Tensor] = []
        settings = _settings(group)
        stochastic, seed = _precision.rounding(settings)
        # SGD without momentum keeps no state at all (not even an empty dict per param),
        # and its state_dict shows that: do not touch self.state[p] then (unless a master
        # copy or stochastic rounding's counter has to be kept).
        stateless = not self._has_step and all(slot is None for slot in slots) and \
            not settings["master_weights"] and not stochastic
        seen: dict[int, int] = {}
        for index, (p, g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            where = f"param {first_index + index}"
            if seen.setdefault(id(p), index) != index:
                # torch only warns, then updates it twice with shared state
                raise ValueError(f"{where} is param {first_index + seen[id(p)]} listed twice; "
                                 "a param may appear only once")
            if g.layout != torch.strided:
                if g.is_sparse and self._rule in ("sgd", "adagrad"):
                    _check_sparse(p, g, where)
                    touched = self._sparse_rows(group, p, g, first_index + index)
                    if touched is None:
                        raise _TorchSteps  # torch's own sparse update
                    plan.sparse.append(touched)
                    continue
                raise RuntimeError(f"{name} does not support sparse gradients" + (
                    ", please consider SparseAdam instead" if self._rule in ("adam", "adamw")
                    else ""))
            if p.device.type != "cpu" or g.device.type != "cpu":
                # torch's sentence word for word (torch/optim/optimizer.py,
                # _device_dtype_check_for_fused): code and tests written for torch's fused
                # optimizers match it with a regex. Ours follows it in parentheses.
                device = p.device.type if p.device.type != "cpu" else g.device.type
                raise RuntimeError(
                    "`fused=True` requires all the params to be floating point Tensors of "
                    f"supported devices: ['cpu'] but {p.dtype} and {device} "
                    f"(fastoptim.torch.{name} is fused; {where} on {p.device.type}, its grad on "
                    f"{g.device.type})")
            if p.is_complex() and not self._info["complex_as_real"]:
                raise TypeError(f"{where}: complex params cannot be optimized by {name}: its "
                                f"reference ({self._info['reference']}) is not elementwise over "
                                "their real and imaginary parts")
            storage = _param_storage(p, settings, where)
            if storage is None:
                if p.is_floating_point() or p.is_complex():
                    raise _TorchSteps  # float8, complex32, ...: torch's own update (and errors)
                raise TypeError(f"{where}: params of {p.dtype} cannot be optimized; "
                                "fastoptim.torch steps float32, float64, bfloat16 and float16 "
                                "params (and complex64/complex128)")
            dtype, state_dtype, master = storage
            grad_dtype = _PARAM_DTYPES.get(g.dtype)
            if p.is_complex() and g.dtype != p.dtype or not p.is_complex() and g.is_complex():
                grad_dtype = None
            if grad_dtype is None:
                raise TypeError(f"{where}: its grad has dtype {g.dtype}, the param {p.dtype}; "
                                "grads are float32, float64, bfloat16 or float16 (the param's "
                                "dtype for complex params)")
            if _ITEM_SIZES[grad_dtype] > _ITEM_SIZES[dtype]:
                raise TypeError(f"{where}: its grad ({g.dtype}) is wider than the param "
                                f"({p.dtype}); grads may be no wider than their params")
            types = (dtype, grad_dtype, state_dtype, master, stochastic, seed,
                     settings["block_size"])
            _check_types(types, where)
            if state_dtype == "int8" and isinstance(p, _DTensor):
                raise TypeError(f"{where}: int8 state is for plain CPU tensors; DTensor params "
                                "keep float32 or bfloat16 state")
            plan.narrow |= grad_dtype in _precision.HALF
            if g.shape != p.shape:
                raise RuntimeError(f"{where}: grad shape {tuple(g.shape)} does not match param "
                                   f"shape {tuple(p.shape)}")
            if isinstance(p, _DTensor) != isinstance(g, _DTensor) or (
                    isinstance(p, _DTensor) and (p.placements != g.placements
                                                 or p.device_mesh != g.device_mesh)):
                raise RuntimeError(f"{where}: the param and its grad are not sharded alike "
                                   f"({type(p).__name__} and {type(g).__name__})")
            pm, gm = _memory(p), _memory(g)  # the local shards of DTensors
            if pm.shape != gm.shape:
                raise RuntimeError(f"{where}: grad shape {tuple(gm.shape)} does not match "
                                   f"param shape {tuple(pm.shape)} (local shards)")
            if pm.numel() and (_data_ptr(pm) == 0 or _data_ptr(gm) == 0):
                raise ValueError(f"{where}: the param or its grad has no CPU memory")
            _check_memory(pm, where)
            _check_memory(gm, f"{where}: its grad")
            live.append(gm)
            # (.get: a stateless step adds no entry; it only drops a stale master copy)
            entry = self.state.get(p)
            fresh = not entry  # torch initialises a param's state when it is empty
            state = {} if fresh else entry
            _check_state_memory(state, where)  # before anything reads it
            if not fresh and self._has_step:
                # torch reads every entry of a started state: a missing one is its KeyError
                for key in ["step", *scalar_names, *(s for s in slots if s is not None)]:
                    if key not in state:
                        raise KeyError(f"{where}: its state has no '{key}'")
            added: dict[str, Any] = {}
            if self._has_step:
                step = state.get("step")
                if step is None:
                    step = added["step"] = self._new_step_tensor(group)
                elif not _counter_ok(step):
                    step = added["step"] = _counter_tensor(step_count(step, where))
            scalar = None
            for name, initial in self._info["scalar_slots"]:  # NAdam's mu_product
                scalar = state.get(name)
                if scalar is None:
                    scalar = added[name] = torch.tensor(initial, dtype=_get_scalar_dtype())
                elif not (isinstance(scalar, torch.Tensor) and scalar.dtype in _DTYPES
                          and scalar.device.type == "cpu" and scalar.numel() == 1
                          and scalar.is_contiguous()):
                    value = scalar_value(scalar, f"{where}: state '{name}'")
                    scalar = added[name] = torch.tensor(float(value), dtype=_get_scalar_dtype())
            new_buffer = False
            row = [0] * 15
            # Every buffer of a row is read in the same memory order: the param's own layout
            # when it is dense (contiguous, channels_last, permuted: stepped in place), else the
            # contiguous copy it is staged through.
            if _dense(pm):
                row[0] = _data_ptr(pm)
                plan.direct_params.append(p)
                layout = pm.stride()
            else:
                staged = pm.detach().contiguous()
                plan.staged_params.append((staged, pm))
                row[0] = _data_ptr(staged)
                layout = staged.stride()
            buffer_dtype = _torch_dtype(p, state_dtype)
            for k, slot in enumerate(slots):
                if slot is None:
                    continue
                fill = pm if slot in self._info["param_copies"] else \
                    self._initial_value(slot, group)
                if state_dtype == "int8":
                    codes, scales, made = self._quantized_buffer(state, added, slot, p, layout,
                                                                 fill, settings, where)
                    new_buffer |= made
                    row[2 + k] = plan.watch(codes, f"{where}: state '{slot}'")
                    row[12 + k] = plan.watch(scales, f"{where}: state '{slot}_scales'")
                    continue
                if _is_codes(state.get(slot)):
                    # int8 state (codes and scales) under settings that keep floats (or a
                    # param below min_8bit_size): decoded into a new buffer
                    decoded = self._decoded(state, slot, group, where)
                    buf = added[slot] = torch.empty_strided(p.shape, layout,
                                                            dtype=buffer_dtype).copy_(decoded)
                    plan.dropped.append((p, f"{slot}_scales"))
                    row[2 + k] = plan.watch(_memory(buf), f"{where}: state '{slot}'")
                    continue
                buf, made = self._state_buffer(state, added, slot, p, layout, buffer_dtype,
                                               fill, where)
                new_buffer |= made
                row[2 + k] = plan.watch(_memory(buf), f"{where}: state '{slot}'")
            if master:
                # float32 master copy: starts as the param itself (exact), is what the rule
                # reads and writes; the param receives it rounded to nearest-even. No sync from
                # the param here: the kernel takes a param written since the last step as its
                # new master (per element), so a stale master_param is never read
                buf, _ = self._state_buffer(state, added, "master_param", p, layout,
                                            torch.float32, pm, where)
                row[10] = plan.watch(_memory(buf), f"{where}: state 'master_param'")
            elif "master_param" in state:  # master_weights turned off: the copy is stale
                plan.dropped.append((p, "master_param"))
            if stochastic and not self._has_step:
                # SGD keeps no step count: stochastic rounding's own counter, in its state (for
                # every param of the group, as the array front keeps it)
                counter = state.get("rounding_step")
                if counter is None:
                    counter = added["rounding_step"] = torch.tensor(0.0, dtype=torch.float32)
                elif not _counter_ok(counter):
                    counter = added["rounding_step"] = _counter_tensor(
                        step_count(counter, f"{where} (state 'rounding_step')"))
                row[11] = plan.watch(counter, f"{where}: state 'rounding_step'")
                row[9] |= 4 * (counter.dtype == torch.float64)  # flag bit 2: float64 counter
            if added and not stateless:
                plan.new_state.append((p, added))
            if gm.stride() == layout:
                row[1] = _data_ptr(gm)
            else:
                staged_grad = torch.empty_strided(pm.shape, layout, dtype=gm.dtype)
                plan.staged_grads.append((staged_grad, gm))
                row[1] = _data_ptr(staged_grad)
            row[5] = pm.numel() * (2 if pm.is_complex() else 1)
            row[7] = first_index + index
            if self._has_step:
                row[6] = plan.watch(step, f"{where}: state 'step'")
                row[9] |= step.dtype == torch.float64  # flag bit 0: a float64 counter
            else:  # SGD: a new momentum buffer starts as the gradient, as in torch
                counters.append(0.0 if new_buffer else 1.0)
                counter_rows.append(row)
                row[9] |= 1
            if scalar is not None:
                row[8] = plan.watch(scalar, f"{where}: state '{name}'")
                row[9] |= 2 * (scalar.dtype == torch.float64)  # flag bit 1: float64 scalars
            rows.setdefault(types, []).append(row)
            row_live.setdefault(types, []).append(len(live) - 1)
        plan.grad_sig = (list(map(_data_ptr, live)), list(map(_nbytes, live)),
                         list(map(_stride, live)))
        plan.grad_dtypes = list(map(_dtype, live))
        plan.strided = not (all(map(_is_contiguous, memory)) and all(map(_is_contiguous, live)))
        if counter_rows:
            # the core reads "steps so far" and adds one: 0 marks a new momentum buffer
            plan.counters = np.array(counters, dtype=np.float64)
            base = plan.counters.ctypes.data
            for i, row in enumerate(counter_rows):
                row[6] = base + 8 * i
        for types, table in rows.items():
            plan.batches.append((types, np.array(table, dtype=np.int64)))
            plan.batch_rows.append(row_live[types])
        if _PLAN_GUARD and not plan.distributed and not plan.sparse:
            try:
                plan.guard = _core.PlanGuard(plan.watched + plan.memory, list(params),
                                             list(grads), [table for _, table in plan.batches],
                                             plan.batch_rows, bool(plan.staged_grads))
            except (ValueError, TypeError):  # a tensor the shim cannot read: Python's check
                plan.guard = None
        return plan

    def _state_buffer(self, state: dict[str, Any], added: dict[str, Any], key: str,
                      p: torch.Tensor, layout: tuple[int, ...], dtype: torch.dtype,
                      fill: float | torch.Tensor, where: str) -> tuple[torch.Tensor, bool]:
        """The state buffer ``key`` of param ``p`` as the kernel reads it: of ``dtype``, in the
        param's memory layout, on the CPU (sharded like the param for DTensors); made (filled
        with ``fill``: a number or the param's values) and put in ``added`` if there is none,
        replaced by such a copy there if the buffer there has another layout or dtype.
        Returns (buffer, whether it is new)."""
        buf = state.get(key)
        if buf is None:
            if isinstance(p, _DTensor):  # sharded like the param, as torch's zeros_like
                buf = torch.zeros_like(p, dtype=dtype)
                target = _memory(buf)
            else:
                buf = target = torch.empty_strided(p.shape, layout, dtype=dtype)
            if isinstance(fill, torch.Tensor):
                target.copy_(fill)
            else:
                target.fill_(fill)
            added[key] = buf
            return buf, True
        if not isinstance(buf, torch.Tensor):
            raise TypeError(f"{where}: state '{key}' is a {type(buf).__name__}, not a tensor")
        if isinstance(p, _DTensor):
            bm, pm = _memory(buf), _memory(p)
            if not isinstance(buf, _DTensor) or bm.shape != pm.shape or bm.dtype != dtype or \
                    bm.stride() != layout:
                raise RuntimeError(f"{where}: state '{key}' is not sharded like the param "
                                   f"(local shape {tuple(bm.shape)}, param's {tuple(pm.shape)}"
                                   f", dtype {bm.dtype}, the step's {dtype})")
            return buf, False
        if buf.stride() != layout or buf.dtype != dtype or buf.shape != p.shape or \
                buf.device.type != "cpu":
            if buf.shape != p.shape:
                raise RuntimeError(f"{where}: state '{key}' has shape {tuple(buf.shape)}, the "
                                   f"param has shape {tuple(p.shape)}")
            # a loaded or hand-set buffer in another layout or dtype: a copy in the param's
            # layout and the settings' dtype replaces it
            buf = added[key] = torch.empty_strided(p.shape, layout, dtype=dtype).copy_(buf)
        return buf, False

    def _quantized_buffer(self, state: dict[str, Any], added: dict[str, Any], slot: str,
                          p: torch.Tensor, layout: tuple[int, ...], fill: float | torch.Tensor,
                          settings: dict[str, Any], where: str
                          ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """int8 state slot ``slot`` of ``p``: its uint8 codes (in the param's memory layout)
        and float32 scales (one per block of the memory order), checked; made from ``fill``
        (quantized) and put in ``added`` if there are none, or quantized from a float state
        buffer found there (state kept in float32 before). Returns (codes, scales, new)."""
        block = settings["block_size"]
        signed = slot not in self._info["non_negative"]
        count = p.numel()
        blocks = -(-count // block)
        codes, scales = state.get(slot), state.get(f"{slot}_scales")
        if codes is None or (isinstance(codes, torch.Tensor) and codes.is_floating_point()):
            values = torch.empty_strided(p.shape, layout, dtype=torch.float32)
            if codes is not None:
                if codes.shape != p.shape:
                    raise RuntimeError(f"{where}: state '{slot}' has shape "
                                       f"{tuple(codes.shape)}, the param has shape "
                                       f"{tuple(p.shape)}")
                values.copy_(codes)
            elif isinstance(fill, torch.Tensor):
                values.copy_(fill)
            else:
                values.fill_(fill)
            codes = torch.empty_strided(p.shape, layout, dtype=torch.uint8)
            scales = torch.empty(blocks, dtype=torch.float32)
            _core.quantize(_flat(values), _flat(codes), scales.numpy(), block, signed)
            added[slot], added[f"{slot}_scales"] = codes, scales
            return codes, scales, state.get(slot) is None
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
            raise TypeError(f"{where}: state '{slot}' must be a uint8 tensor of codes (int8 "
                            f"state), got {getattr(codes, 'dtype', type(codes).__name__)}")
        if codes.shape != p.shape or codes.stride() != layout or codes.device.type != "cpu":
            raise ValueError(f"{where}: state '{slot}' holds codes of shape "
                             f"{tuple(codes.shape)} and strides {codes.stride()}; int8 state "
                             f"is codes in the param's shape {tuple(p.shape)} and memory "
                             f"layout {layout} (the blocks run in memory order)")
        if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32 or \
                scales.shape != (blocks,) or scales.device.type != "cpu" or \
                not scales.is_contiguous():
            got = "missing" if scales is None else (
                f"{getattr(scales, 'dtype', type(scales).__name__)} "
                f"{tuple(getattr(scales, 'shape', ()))}")
            raise ValueError(f"{where}: state '{slot}_scales' must be {blocks} float32 scales "
                             f"(one per block of {block} of the param's {count} elements), "
                             f"got {got}")
        return codes, scales, False

    def _decoded(self, state: dict[str, Any], slot: str, group: dict[str, Any],
                 where: str) -> torch.Tensor:
        """The float32 values of int8 state slot ``slot`` (codes and scales)."""
        codes, scales = state[slot], state.get(f"{slot}_scales")
        block = _settings(group)["block_size"]
        if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32 or \
                scales.numel() != -(-codes.numel() // block) or not scales.is_contiguous():
            raise ValueError(f"{where}: state '{slot}' is int8 codes without "
                             f"{-(-codes.numel() // block)} float32 scales '{slot}_scales' "
                             f"(block_size={block})")
        values = torch.empty_like(codes, dtype=torch.float32)
        _core.dequantize(_flat(codes.contiguous() if not _dense(codes) else codes),
                         scales.numpy(), _flat(values), block,
                         slot not in self._info["non_negative"])
        return values

    def dequantize_state(self, p: torch.Tensor, key: str) -> torch.Tensor:
        """State ``key`` of param ``p`` as a new float32 tensor shaped like ``p``: int8 state
        (``state_dtype="int8"``) decoded from its codes and block scales (torchao's
        ``OptimState8bit.dequantize()``), any other state buffer converted."""
        state = self.state[p]
        if key not in state:
            raise KeyError(f"the param's state has no '{key}'")
        if _is_codes(state[key]):
            group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
            return self._decoded(state, key, group, f"state '{key}'")
        return state[key].to(torch.float32, copy=True)

    def _sparse_rows(self, group: dict[str, Any], p: torch.Tensor, g: torch.Tensor,
                     param_index: int) -> dict[str, Any] | None:
        """A sparse grad (nn.Embedding(sparse=True)) as a table of the rows it touches, stepped
        by the same kernel as dense rows: SGD without momentum or weight decay, and Adagrad
        without weight decay (whose sparse update torch defines on the coalesced grad, the
        same element math). None: torch's own sparse path runs the step (SGD with momentum
        keeps a sparse momentum buffer; weight decay raises or densifies there)."""
        if group.get("weight_decay") or (self._rule == "sgd" and group.get("momentum")):
            return None
        storage = _param_storage(p, _settings(group), f"param {param_index}")
        if storage is None or storage[1] != storage[0] or storage[2]:
            return None  # state of another dtype: torch's path, which refuses the settings
        dtype = _DTYPES.get(p.dtype)
        if (dtype is None or g.dtype != p.dtype or g.shape != p.shape or p.dim() < 1
                or not p.is_contiguous() or p.device.type != "cpu" or g.sparse_dim() != 1
                or isinstance(p, _DTensor)):
            return None
        coalesced = g.coalesce()  # torch steps the coalesced grad too
        values = coalesced._values().contiguous()
        rows = coalesced._indices()[0].numpy()
        width = p[0].numel() if p.dim() > 1 else 1
        row_bytes = width * p.element_size()
        added: dict[str, Any] = {}
        table = np.zeros((len(rows), 15), dtype=np.int64)
        table[:, 0] = _data_ptr(p) + rows * row_bytes
        table[:, 1] = _data_ptr(values) + np.arange(len(rows), dtype=np.int64) * row_bytes
        table[:, 5] = width
        table[:, 7] = param_index
        keep: list[Any] = [values]
        step = None
        count = 1.0  # SGD: an existing momentum buffer (none is used without momentum)
        if self._rule == "adagrad":
            state = self.state.get(p) or {}
            _check_state_memory(state, f"param {param_index}")
            step, total = state.get("step"), state.get("sum")
            if step is None:
                step = added["step"] = self._new_step_tensor(group)
            if total is None:
                total = added["sum"] = torch.full_like(
                    p, self._initial_value("sum", group), memory_format=torch.contiguous_format)
            if not (isinstance(total, torch.Tensor) and total.is_contiguous()
                    and total.dtype == p.dtype and total.shape == p.shape):
                return None
            table[:, 2] = _data_ptr(total) + rows * row_bytes
            keep.append(total)
            count = step_count(step, f"param {param_index}")
        # every row reads the param's step count from one scratch cell
        counter = np.array([count], dtype=np.float64)
        table[:, 6] = counter.ctypes.data
        table[:, 9] = 1  # a float64 counter
        keep.append(counter)
        return {"param": p, "batch": (group, table, _plain_types(dtype)), "keep": keep,
                "step": step, "added": added}

    # ---- step --------------------------------------------------------------------------------
    @_with_step_hooks  # outside no_grad, as torch's wrapper: hooks run with grad mode as set
    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        if self._info["group_state"]:
            # the reference's check, before the closure runs: its exception, word for word
            message = _core.step_refused(self._rule, self.param_groups[0])
            if message is not None:
                raise Exception(message)  # noqa: TRY002 - schedulefree's type
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with self._lock():
            if not any(group.get("differentiable") for group in self.param_groups):
                try:
                    self._fused_step()
                    return loss
                except _TorchSteps:
                    pass
            # autograd through the update, or sparse grads (SGD, Adagrad): torch's own
            # implementation, slower and exact; GradScaler's scale and a pending clip are
            # applied to the grads first, as torch's unscale_ and clip would have
            return self._torch_step(loss)

    def _check_torch_storage(self) -> None:
        """torch's own update keeps no master copy, state of another dtype or stochastic
        rounding: a ValueError naming the first param it would step against its group's
        settings (before anything changes)."""
        index = 0
        for group in self.param_groups:
            settings = _settings(group)
            for p in group["params"]:
                where, index = f"param {index}", index + 1
                if p.grad is None:
                    continue
                storage = _param_storage(p, settings, where)
                if storage is None:
                    continue
                dtype, state_dtype, master = storage
                if master or state_dtype != dtype or (settings["stochastic_rounding"]
                                                      and dtype in _precision.HALF):
                    raise ValueError(
                        f"{where}: this step is torch.optim's own update (differentiable=True, "
                        "or sparse grads fastoptim does not step), which keeps no master copy, "
                        "no state of another dtype and no stochastic rounding; use "
                        "master_weights=False, state_dtype=None, stochastic_rounding=False "
                        "for its group")

    def _torch_step(self, loss: Any) -> Any:
        self._check_torch_storage()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                where, index = f"param {index}", index + 1
                if p.grad is None:
                    continue
                _check_state_memory(self.state.get(p, {}), where)
                if not p.grad.is_sparse:
                    continue
                _check_sparse(p, p.grad, where)
                if self._rule == "adagrad" and group.get("weight_decay"):
                    # torch's error, which torch raises after counting the step
                    raise RuntimeError("weight_decay option is not compatible with sparse "
                                       "gradients")
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and bool(found_inf.item()):
            return loss
        self._settle_pending(apply=True)
        grad_scale = getattr(self, "grad_scale", None)
        grads = [p.grad for group in self.param_groups for p in group["params"]
                 if p.grad is not None]
        if grad_scale is not None:
            inv_scale = grad_scale.double().reciprocal().float()
            for g in grads:
                (g._values() if g.is_sparse else g).mul_(inv_scale)
        # both applied above: torch's non-fused step requires them unset
        for name in ("grad_scale", "found_inf"):
            if name in self.__dict__:
                self.__dict__[name] = None
        torch_step = self._torch_class().step
        if getattr(torch_step, "hooked", False):  # torch's hook wrapper: the hooks ran already
            torch_step = torch_step.__wrapped__
        return torch_step(self, closure=lambda: loss)

    def _torch_class(self) -> type:
        """The class this one fuses (self may also be the class itself): torch.optim's, or for
        a rule torch lacks the plain torch.optim.Optimizer with its reference's constructor
        (_reference_base)."""
        cls = self if isinstance(self, type) else type(self)
        return cls.__mro__[cls.__mro__.index(_FusedStep) + 1]

    def _prepare(self) -> tuple[Any, list, list, Any]:
        """Every group's plan, checked or rebuilt, and the memory check over all of them:
        (state, [(index, group, plan)], core batch specs, written ranges). Changes nothing."""
        if type(self.state) is not _State:  # replaced by hand: count its changes from now on
            self.state = _State(self.state)
        state = self.state
        plans = self.__dict__.setdefault("_fastoptim_plans", {})
        generation = self._generation()
        ready = []
        first_index = 0
        rebuilt = False
        for index, group in enumerate(self.param_groups):
            params = group["params"]
            # Every group's options are checked before any group is stepped (ValueError with
            # torch's wording, nothing changed), and a change that needs other state buffers
            # (SGD momentum set after a step without it, as torch allows) rebuilds the plan.
            slots = _core.state_slots(self._rule, group)
            # the storage settings as set now (a change rebuilds the plan, which checks them)
            settings = tuple(group.get(key, default) for key, default in _OPTIONS_ITEMS)
            plan = plans.get(index)
            if (
                plan is None
                or plan.generation != generation
                or plan.state_obj is not state
                or plan.changes != _changes[0]
                or plan.slots != slots
                or plan.settings != settings
                or not plan.serves(params)
            ):
                plan = self._build_plan(group, params, list(map(_grad, params)), slots,
                                        first_index)
                plan.slots = slots
                plan.settings = settings
                plan.generation = generation
                plan.state_obj = state
                plans[index] = None  # until it has run: a failed step leaves no half plan
                rebuilt = True
            ready.append((index, group, plan))
            first_index += len(params)
        for index in [i for i in plans if i >= len(self.param_groups)]:
            del plans[index]
        specs = [(group, table, dtype) for _, group, plan in ready for dtype, table in plan.batches]
        written = self.__dict__.get("_fastoptim_written")
        if rebuilt or written is None:
            # Memory shared between any written buffer and any other, over all groups: an
            # error naming both. The written ranges let each later step check new grads.
            self.__dict__.pop("_fastoptim_written", None)
            written = _core.check_plan_memory(
                self._rule, self.param_groups[0], [(t, d) for _, t, d in specs])
        for _, _, plan in ready:
            for staged, grad in plan.staged_grads:
                staged.copy_(grad)
        # sparse rows: fresh coalesced values (no overlap with anything), unique rows; their
        # rows share one scratch step counter, so they stay out of the memory check
        specs += [rows["batch"] for _, _, plan in ready for rows in plan.sparse]
        return state, ready, specs, written

    def _fused_step(self) -> None:
        # GradScaler hands a step that supports AMP scaling its scale and inf flag instead of
        # unscaling the grads and skipping the step itself: unscaling is folded into the grad
        # read, and an inf/NaN grad skips the whole step.
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and bool(found_inf.item()):
            return
        # clip_grad_norm_'s pending factors (and its grad_scaler's unscale), for the grads it
        # measured
        inv_scale, clip_coef = self._settle_pending(apply=False)
        grad_scale = getattr(self, "grad_scale", None)
        if grad_scale is not None:
            # as GradScaler.unscale_: the float32 reciprocal of the scale
            inv_scale = float(grad_scale.double().reciprocal().float())
        state, ready, specs, written = self._prepare()
        for _, _, plan in ready:
            for staged, param in plan.staged_params:
                staged.copy_(param)
        # a rule with group state advances every group once per step, stepped params or not
        groups = self.param_groups if self._info["group_state"] else []
        if specs or groups:
            _core.step_plans(self._rule, specs, written, get_num_threads(),
                             inv_scale=inv_scale, clip_coef=clip_coef, groups=groups)
        self.__dict__["_fastoptim_written"] = written
        for index, _, plan in ready:
            for staged, param in plan.staged_params:
                param.copy_(staged)
            if plan.direct_params:
                # written through raw pointers: tell autograd these tensors changed
                torch.autograd.graph.increment_version(plan.direct_params)
            for rows in plan.sparse:
                torch.autograd.graph.increment_version([rows["param"]])
                if rows["step"] is not None:
                    rows["step"].add_(1)  # once per param (its rows read one scratch counter)
                if rows["added"]:
                    plan.new_state.append((rows["param"], rows["added"]))
            for p, added in plan.new_state:
                entry = state.get(p)
                if entry is None:
                    state[p] = _ParamState(added)
                else:
                    entry.update(added)
            for p, key in plan.dropped:
                state[p].pop(key, None)
            plan.new_state = []
            plan.dropped = []
            self._fastoptim_plans[index] = plan
        for _, _, plan in ready:
            plan.changes = _changes[0]
            plan.forget_grads()

    # ---- transforms (Schedule-Free's train/eval) ----------------------------------------------
    @torch.no_grad()
    def _transform(self, index: int) -> None:
        """The rule's element transform ``index`` (its description's ``transforms``) of every
        param whose state exists, in every group whose mode flag is not at the transform's
        target yet; the flags are then set. One call into the core, which checks every batch
        before it runs any."""
        with self._lock():
            batches: dict[tuple, list[list[int]]] = {}
            keep: list[torch.Tensor] = []
            staged: list[tuple[torch.Tensor, torch.Tensor]] = []  # (copy, param)
            direct: list[torch.Tensor] = []
            first = 0
            for group in self.param_groups:
                slots = _core.state_slots(self._rule, group)
                settings = _settings(group)
                stochastic, seed = _precision.rounding(settings)
                for offset, p in enumerate(group["params"]):
                    where = f"param {first + offset}"
                    state = self.state.get(p)
                    if not state or any(s is not None and s not in state for s in slots):
                        continue  # no state yet: nothing to move (schedulefree's `'z' in state`)
                    storage = _param_storage(p, settings, where)
                    if storage is None:
                        raise TypeError(f"{where}: params of {p.dtype} cannot be transformed")
                    dtype, state_dtype, master = storage
                    pm = _memory(p)
                    _check_memory(pm, where)
                    _check_state_memory(state, where)
                    buffers = [state[s] if s is not None else None for s in slots]
                    if master:
                        buffers.append(state.get("master_param"))
                        if buffers[-1] is None:
                            continue
                    want = [_torch_dtype(p, state_dtype)] * len(slots) + [torch.float32]
                    row = [0] * 15
                    # param, master and state in one memory order: the param's own when every
                    # buffer shares its dense layout, else contiguous copies
                    together = _dense(pm) and all(
                        b is None or (_memory(b).stride() == pm.stride() and
                                      _memory(b).shape == pm.shape)
                        for b in buffers)
                    if together:
                        row[0] = _data_ptr(pm)
                        direct.append(p)
                    else:
                        copy_ = pm.detach().contiguous()
                        staged.append((copy_, pm))
                        row[0] = _data_ptr(copy_)
                    for k, b in enumerate(buffers):
                        if b is None:
                            continue
                        bm = _memory(b)
                        if bm.dtype != want[k] or bm.shape != pm.shape:
                            raise TypeError(f"{where}: state buffer {k} is {bm.dtype} "
                                            f"{tuple(bm.shape)}; the transform needs "
                                            f"{want[k]} {tuple(pm.shape)}")
                        if not together:
                            copy_ = bm.contiguous()
                            if k == len(slots):  # the master copy is written
                                staged.append((copy_, bm))
                            bm = copy_
                        keep.append(bm)
                        row[10 if k == len(slots) else 2 + k] = _data_ptr(bm)
                    row[5] = pm.numel() * (2 if pm.is_complex() else 1)
                    row[7] = first + offset
                    types = (dtype, dtype, state_dtype, master, stochastic, seed)
                    _check_types(types, where)
                    batches.setdefault((id(group), types), []).append(row)
                first += len(group["params"])
            groups = {id(group): group for group in self.param_groups}
            specs = [(groups[key], np.array(rows, dtype=np.int64), types)
                     for (key, types), rows in batches.items()]
            _core.transform_plans(self._rule, index, self.param_groups, specs,
                                  get_num_threads())
            for copy_, target in staged:
                target.copy_(copy_)
            if direct:
                torch.autograd.graph.increment_version(direct)

    # ---- clipping ----------------------------------------------------------------------------
    # clip_grad_norm_ does not rewrite the grads: it leaves a pending record (the unscale and
    # clip factors, and the grads it measured with their version counters) that every step
    # folds into its grad read while those grads are unchanged (torch's clip rewrote them
    # once, so a second step on the same grads reads them clipped too). The record must give
    # torch's result whatever happens in between: a grad replaced since (zero_grad then
    # backward, a new tensor) is read as it is; zero_grad drops the record; a grad modified in
    # place since cannot be reconstructed (an error); when only some grads are still the
    # measured ones (others replaced, a param group added), those are multiplied in place as
    # torch's clip would have, and the step reads every grad as it is.
    def _settle_pending(self, apply: bool) -> tuple[float, float]:
        """The (inv_scale, clip_coef) the next step reads every grad with: the pending
        record's when every grad is one it measured, unchanged (and not ``apply``); else
        (1, 1), after multiplying the measured grads in place as torch's clip did.
        RuntimeError naming the param, nothing changed, for an attached grad modified in
        place after the clip."""
        pending = self.__dict__.get("_fastoptim_pending")
        if pending is None:
            return 1.0, 1.0
        inv_scale, clip_coef, measured = pending
        other = False
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                where, index = f"param {index}", index + 1
                g = p.grad
                if g is None:
                    continue
                record = measured.get(id(p))
                if record is None or record[0] is not p or record[1] is not g:
                    other = True  # a grad the clip did not measure: read as it is
                    continue
                if g._version != record[2]:
                    raise RuntimeError(
                        f"{where}: its grad was modified in place after clip_grad_norm_ "
                        "measured it (torch's clip would have scaled it before the change); "
                        "call clip_grad_norm_ after the grads are final, or zero_grad() "
                        "first")
        if not other and not apply:
            return inv_scale, clip_coef
        # torch's clip rewrote every grad it measured, attached or not: so do that now to each
        # one still as measured that anyone can still see (a grad only this record holds,
        # replaced by zero_grad() and backward, is garbage: left alone)
        for p, g, version in measured.values():
            if g._version != version or (p.grad is not g and sys.getrefcount(g) <= 3):
                continue
            values = g._values() if g.is_sparse else g
            if inv_scale != 1.0:
                values.mul_(inv_scale)
            if clip_coef != 1.0:
                values.mul_(clip_coef)
        self.__dict__.pop("_fastoptim_pending", None)
        return 1.0, 1.0

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's zero_grad; a pending clip_grad_norm_ is dropped with the grads it
        measured."""
        self.__dict__.pop("_fastoptim_pending", None)
        super().zero_grad(set_to_none)

    def _scaler_state(self, scaler: Any) -> tuple[dict[str, Any], float]:
        """The scaler's record for this optimizer, checked as scaler.unscale_ checks it, and the
        float32 reciprocal of its scale (as unscale_ computes it)."""
        opt_state = _optim_state()
        record = scaler._per_optimizer_states[id(self)]
        if record["stage"] is opt_state.UNSCALED:
            raise RuntimeError(
                "unscale_() has already been called on this optimizer since the last update().")
        if record["stage"] is opt_state.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        scale = scaler._scale
        if scale is None:
            raise RuntimeError("Attempted unscale_ but _scale is None.  This may indicate "
                               "your script did not use scaler.scale(loss or outputs) earlier "
                               "in the iteration.")
        return record, float(scale.double().reciprocal().float())

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float | str = 2.0,
                        error_if_nonfinite: bool = False, foreach: bool | None = None, *,
                        grad_scaler: Any = None) -> torch.Tensor:
        """torch.nn.utils.clip_grad_norm_ over every grad of every group, folded into the next
        step(): returns the total norm (a 0-d tensor) from one read-only pass, and the next
        step reads each grad multiplied by min(1, max_norm / (norm + 1e-6)). Unlike torch, the
        grads themselves are not rewritten. The norm is accumulated in double, bit-identical
        for any thread count and SIMD level. ``foreach`` is accepted and ignored.

        With ``grad_scaler`` (a torch.amp.GradScaler, in place of ``scaler.unscale_(opt)``
        before the clip), the same pass reads the still-scaled grads, returns the norm of the
        unscaled ones and hands the scaler its inf/NaN check; the next ``scaler.step(opt)``
        then unscales inside the step: clip, scaler and step in two passes over the grads."""
        max_norm, order = clip_arguments(max_norm, norm_type)
        with self._lock():
            # a clip already pending: its grads as torch's clip left them, measured again
            self._settle_pending(apply=True)
            params = [p for group in self.param_groups for p in group["params"]]
            scaler = grad_scaler if grad_scaler is not None and grad_scaler.is_enabled() else None

            def torch_clip() -> torch.Tensor:
                # torch's own clip (it rewrites the grads) where the fused norm does not
                # apply: autograd through the step, params the step hands to torch, sparse
                # grads, complex grads of an order other than 2 (|z| is not the real view's),
                # DTensor grads (their norm is over every rank's shard, which torch reduces)
                if scaler is not None:
                    scaler.unscale_(self)
                return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type,
                                                      error_if_nonfinite)

            if any(group.get("differentiable") for group in self.param_groups):
                return torch_clip()
            scaler_state, inv_scale = None, 1.0
            if scaler is not None:
                scaler_state, inv_scale = self._scaler_state(scaler)
            try:
                _, ready, specs, _ = self._prepare()
            except (_TorchSteps, RuntimeError, ValueError, TypeError, KeyError, IndexError):
                # the norm reads only grads: state the step would refuse (a shrunk param
                # against its old state, ...) is the step's error, not the clip's
                return torch_clip()
            if any(plan.sparse or plan.distributed or (plan.complex and order != 2.0)
                   for _, _, plan in ready) or \
                    any(types[1] in _precision.HALF for _, _, types in specs):
                # 16-bit grads: the fused norm reads float32/float64 grads only
                return torch_clip()
            if not specs:  # torch's answer: a zero norm, nothing to clip
                return torch.tensor(0.0)
            norm, nonfinite = _core.grad_norm_plans([(t, d) for _, t, d in specs], order,
                                                    get_num_threads())
            norm *= inv_scale  # the norm of grad * inv_scale (the unscaled grads)
            # torch's result dtype: the promotion of the grads' (real) dtypes
            dtype = torch.float64 if any(types[1] == "float64" for _, _, types in specs) \
                else torch.float32
            coef = 1.0
            if scaler_state is not None:
                # what scaler.unscale_(opt) would have recorded; the step unscales
                scaler_state["found_inf_per_device"] = {
                    torch.device("cpu"): torch.full((), float(nonfinite), dtype=torch.float32)}
                scaler_state["stage"] = _optim_state().UNSCALED
            if scaler_state is None or not nonfinite:  # else the scaler skips this step
                coef = clip_coefficient(max_norm, norm, order, error_if_nonfinite)
            measured = {id(p): (p, p.grad, p.grad._version) for p in params
                        if p.grad is not None}
            self.__dict__["_fastoptim_pending"] = (inv_scale, coef, measured)
            return torch.tensor(norm, dtype=dtype)

    # ---- construction and param groups -------------------------------------------------------
    def __init__(self, params: Any, *args: Any, master_weights: bool = False,
                 state_dtype: Any = None, stochastic_rounding: bool = False, seed: int = 0,
                 block_size: int = 256, min_8bit_size: int = 4096, **kwargs: Any) -> None:
        # checked before torch's constructor runs: a bad setting changes nothing
        options = _settings({"master_weights": master_weights, "state_dtype": state_dtype,
                             "stochastic_rounding": stochastic_rounding, "seed": seed,
                             "block_size": block_size, "min_8bit_size": min_8bit_size})
        self.__dict__["_fastoptim_options"] = options  # the defaults add_param_group gives
        try:
            super().__init__(params, *args, **kwargs)
        finally:
            self.__dict__.pop("_fastoptim_options", None)
        self._convert_eager_state()

    def _convert_eager_state(self) -> None:
        """torch.optim.Adagrad makes its state in the constructor, in the param's dtype: state
        the settings keep in another dtype is made again in that dtype from the initial value
        (not converted from the param-dtype copy, which rounded it)."""
        slot_names = {name for name, _ in self._info["slots"]}
        index = 0
        for group in self.param_groups:
            settings = _settings(group)
            for p in group["params"]:
                where, index = f"param {index}", index + 1
                state = self.state.get(p)
                storage = _param_storage(p, settings, where)
                if not state or storage is None:
                    continue
                # int8 state: float32 until the first step quantizes it
                dtype = torch.float32 if storage[1] == "int8" else _torch_dtype(p, storage[1])
                for key, value in list(state.items()):
                    if key in slot_names and isinstance(value, torch.Tensor) and \
                            value.dtype != dtype:
                        state[key] = torch.full_like(p, self._initial_value(key, group),
                                                     dtype=dtype,
                                                     memory_format=torch.preserve_format)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's add_param_group; the group's mixed-precision settings (master_weights,
        state_dtype, stochastic_rounding, seed: the constructor's unless the group has its own)
        are checked first, and a param they do not fit (float64 params with bfloat16 state)
        is a TypeError naming it; the group is not added then."""
        options = self.__dict__.get("_fastoptim_options", _precision.OPTIONS)
        for key, value in options.items():  # in the constructor: its settings are defaults
            self.defaults.setdefault(key, value)
        if isinstance(param_group, dict):
            settings = _settings({key: param_group.get(key, self.defaults[key])
                                  for key in _precision.OPTIONS})
            for key in _precision.OPTIONS:
                if key in param_group:
                    param_group[key] = settings[key]
        first = sum(len(group["params"]) for group in self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            settings = _settings(group)
            for i, p in enumerate(group["params"]):
                _param_storage(p, settings, f"param {first + i}")
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise
        self._invalidate_plans()

    # ---- state -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _torch_hooks_aside(self, *names: str) -> Iterator[None]:
        """torch's state_dict or load_state_dict body without its hooks (the hook dicts
        ``names`` empty meanwhile; under the lock): the front runs them itself, around its own
        conversion and checks, so that they see what the user gets or gives."""
        saved = {name: getattr(self, name) for name in names}
        try:
            for name in names:
                setattr(self, name, OrderedDict())
            yield
        finally:
            for name, hooks in saved.items():
                setattr(self, name, hooks)

    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict, with copies of the state tensors: a checkpoint taken now does
        not change with later steps, and loading it into another optimizer shares nothing.
        State tensors keep their dtypes (bfloat16 moments, float32 master copies). A rule whose
        reference keeps another layout saves that one (AdEMAMix: bitsandbytes' ``state1``,
        m1 and m2 stacked, and ``state2`` under its quant-state key, an int ``step``), so the
        reference loads it; load_state_dict takes either. Hooks as torch's: the pre-hooks
        (register_state_dict_pre_hook) first; the post-hooks on the dict returned, the one a
        post-hook returns replacing it."""
        with self._lock():
            for pre_hook in self._optimizer_state_dict_pre_hooks.values():
                pre_hook(self)
            with self._torch_hooks_aside("_optimizer_state_dict_pre_hooks",
                                         "_optimizer_state_dict_post_hooks"):
                state_dict = super().state_dict()
            state_dict = _checkpoint.to_reference(copy.deepcopy(state_dict), self._info)
            for post_hook in self._optimizer_state_dict_post_hooks.values():
                result = post_hook(self, state_dict)
                if result is not None:
                    state_dict = result
            return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict, after checking that every state tensor has its param's
        shape (torch does not) and the dtype this optimizer's mixed-precision settings keep
        (torch casts every state tensor to its param's dtype; only float32/float64 state of
        float32/float64 params is still cast), that a master copy is float32, and that the
        checkpoint's master_weights, state_dtype and stochastic_rounding are this optimizer's
        (its seed is loaded; a checkpoint without these keys, torch.optim's, loads with this
        optimizer's settings). Anything else raises before anything changes. Hooks as torch's:
        the pre-hooks (register_load_state_dict_pre_hook) first, on a shallow copy of the dict
        given, the one a pre-hook returns replacing it: what they leave is what is checked and
        loaded; the post-hooks once it is loaded."""
        with self._lock():
            if isinstance(state_dict, dict):
                state_dict = state_dict.copy()  # torch's shallow copy, for the pre-hooks
            for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
                result = pre_hook(self, state_dict)
                if result is not None:
                    state_dict = result
            self._load_checked(state_dict)
            for post_hook in self._optimizer_load_state_dict_post_hooks.values():
                post_hook(self)

    def _load_checked(self, state_dict: Any) -> None:
        """load_state_dict's body between its hooks: the conversion from another layout
        (torchao's, the reference's), every check, then the install."""
        state_dict = _checkpoint.from_reference(self._from_torchao(state_dict), self._info)
        loaded = _checkpoint.parse(state_dict, self._info,
                                   [len(g["params"]) for g in self.param_groups])
        params = [p for group in self.param_groups for p in group["params"]]
        loaded_settings, settings_of = [], []
        for index, (saved, group) in enumerate(zip(loaded.groups, self.param_groups)):
            mine = _settings(group)
            try:
                theirs = _settings({key: saved.get(key, mine[key]) for key in _precision.OPTIONS})
            except (TypeError, ValueError) as error:
                raise ValueError(f"loaded state dict: param group {index}: {error}") from None
            _precision.check_loadable(theirs, mine, f" in param group {index}")
            loaded_settings.append(theirs)
            settings_of += [theirs] * len(group["params"])
        keep_dtype: list[tuple[Any, torch.Tensor, str]] = []  # loaded as they are
        counters: list[tuple[Any, torch.Tensor, str, int]] = []  # (key, param, name, count)
        scalars: list[tuple[Any, str, torch.Tensor]] = []  # loaded as numbers or arrays
        as_is: list[tuple[Any, torch.Tensor, str]] = []  # unknown entries that are no tensors
        for key, index, saved_state in loaded.states:
            if index is None:
                continue  # an id no group lists: torch keeps it, unused
            param, settings = params[index], settings_of[index]
            where = f"param {index}"
            try:
                storage = _param_storage(param, settings, where)
            except TypeError as error:
                raise ValueError(str(error)) from None
            # torch casts state tensors to the param's dtype: what these settings keep in
            # another dtype (and a 16-bit param's counters and scalars) is loaded as it is
            plain = storage is None or (storage[0] == storage[1] and not storage[2]
                                        and (param.is_complex() or storage[0] in _DTYPES.values()))
            for name, value in saved_state.items():
                what = _checkpoint.kind(self._info, name)
                if what == "counter":  # checked by parse; kept exact below
                    counters.append((key, param, name, step_count(value, where)))
                    continue
                if what == "scalar":  # checked by parse; a 0-d tensor, as torch keeps it
                    if not isinstance(value, torch.Tensor):
                        scalars.append((key, name, torch.from_numpy(
                            scalar_value(value, f"{where}: state '{name}'"))))
                    elif not plain:  # a 16-bit param's: not cast to the param's dtype
                        keep_dtype.append((key, param, name))
                    continue
                int8 = storage is not None and storage[1] == "int8"
                if what == "scales":
                    block = settings["block_size"]
                    blocks = -(-_memory(param).numel() // block)
                    if not int8:
                        raise ValueError(
                            f"{where}: loaded state has '{name}', the block scales of int8 "
                            f"state; this optimizer keeps the param's state in "
                            f"{storage[1] if storage else param.dtype} (state_dtype="
                            f"{settings['state_dtype']}, min_8bit_size="
                            f"{settings['min_8bit_size']}, {param.numel()} elements)")
                    if not isinstance(value, torch.Tensor) or value.dtype != torch.float32 or \
                            tuple(value.shape) != (blocks,):
                        raise ValueError(
                            f"{where}: loaded state '{name}' must be {blocks} float32 scales (one "
                            f"per block of {block} of the param's {param.numel()} elements), got "
                            f"{getattr(value, 'dtype', type(value).__name__)} "
                            f"{tuple(getattr(value, 'shape', ()))}")
                    keep_dtype.append((key, param, name))
                    continue
                if what == "buffer" and name != "master_param" and (
                        int8 or _is_codes(value)) and value is not None:
                    if not int8:
                        raise ValueError(
                            f"{where}: loaded state '{name}' is int8 codes; this optimizer "
                            f"keeps the param's state in {storage[1] if storage else None} "
                            f"(state_dtype={settings['state_dtype']}, min_8bit_size="
                            f"{settings['min_8bit_size']}, {param.numel()} elements)")
                    if isinstance(value, torch.Tensor) and value.is_floating_point() and \
                            value.shape == param.shape and not param.is_complex():
                        # float state (torchao keeps a tensor whose size is not a multiple
                        # of its block in float32): quantized by the next step
                        keep_dtype.append((key, param, name))
                        continue
                    if not _is_codes(value) or value.shape != param.shape:
                        raise ValueError(
                            f"{where}: loaded state '{name}' must be uint8 codes shaped like the "
                            f"param {tuple(param.shape)} (int8 state), got "
                            f"{getattr(value, 'dtype', type(value).__name__)} "
                            f"{tuple(getattr(value, 'shape', ()))}")
                    if f"{name}_scales" not in saved_state:
                        raise ValueError(f"{where}: loaded state '{name}' is int8 codes without "
                                         f"its scales '{name}_scales'")
                    keep_dtype.append((key, param, name))
                    continue
                if what == "unknown":
                    if not isinstance(value, torch.Tensor):
                        # kept as it is: torch's loader would rebuild a str or an array from a
                        # generator of its items
                        as_is.append((key, param, name))
                    continue
                if value is None and name != "master_param":
                    continue  # torch.optim's SGD without momentum
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"{where}: loaded state '{name}' must be a tensor, got "
                                    f"{type(value).__module__}.{type(value).__name__}")
                real = value.is_floating_point() and value.dtype in (*_DTYPES, *_HALF)
                if not (real or (param.is_complex() and value.dtype == param.dtype)):
                    raise TypeError(f"{where}: loaded state '{name}' is {value.dtype}; state "
                                    "tensors are float32, float64, bfloat16 or float16 (the "
                                    "param's dtype for complex params)")
                if value.shape != param.shape:
                    raise ValueError(
                        f"loaded state '{name}' of param {key} has shape {tuple(value.shape)}, "
                        f"param has shape {tuple(param.shape)}"
                    )
                if name == "master_param":
                    if storage is None or not storage[2]:
                        raise ValueError(
                            f"{where}: loaded state has a 'master_param'; this optimizer keeps "
                            f"none for the param ({param.dtype}, master_weights="
                            f"{settings['master_weights']})")
                    if value.dtype != torch.float32:
                        raise ValueError(f"{where}: loaded state 'master_param' is "
                                         f"{value.dtype}; a master copy is float32")
                elif not plain:
                    want = _torch_dtype(param, storage[1])
                    if value.dtype != want:
                        raise ValueError(
                            f"{where}: loaded state '{name}' is {value.dtype}; with "
                            f"master_weights={settings['master_weights']}, state_dtype="
                            f"{settings['state_dtype']} this optimizer keeps it in {want} for "
                            f"{param.dtype} params")
                if not plain or name == "master_param":
                    keep_dtype.append((key, param, name))
        with self._lock():
            copied = copy.deepcopy(dict(state_dict))
            copied["state"] = {key: dict(state) for key, state in copied["state"].items()}
            # torch's loader copies tensors; it takes anything else for an iterable of tensors
            for key, param, name, count in counters:
                value = copied["state"][key][name]
                if not isinstance(value, torch.Tensor):
                    copied["state"][key][name] = _counter_tensor(count)
            for key, name, value in scalars:
                copied["state"][key][name] = value
            kept = {(key, name): copied["state"][key].pop(name) for key, _, name in as_is}
            with self._torch_hooks_aside("_optimizer_load_state_dict_pre_hooks",
                                         "_optimizer_load_state_dict_post_hooks"):
                super().load_state_dict(copied)
            for key, param, name in as_is:
                self.state[param][name] = kept[(key, name)]
            for key, param, name in keep_dtype:
                self.state[param][name] = copied["state"][key][name].to(device=param.device)
            for key, param, name, count in counters:
                # exact: torch would keep a float32 count (fused groups, or one loaded as a
                # number), which rounds 2**53 - 2 to 2**53 and stops counting at 2**24
                value = self.state[param][name]
                if not (_counter_ok(value) and float(value) == count and (
                        value.dtype == torch.float64 or count < 2**24)):
                    self.state[param][name] = _counter_tensor(count)
            for group, settings in zip(self.param_groups, loaded_settings):
                group.update(settings)  # the seed loaded, the others this optimizer's
            self._invalidate_plans()

    def _from_torchao(self, state_dict: Any) -> Any:
        """A torchao AdamW8bit/Adam8bit checkpoint in this front's layout: each 8-bit state
        tensor (torchao's OptimState8bit: codes, scale, qmap, signed) as codes and
        '<slot>_scales', its map checked against this rule's for the slot; torchao's tensor lr
        as a number; the keys torchao's groups lack (maximize, ...) this optimizer's.
        Anything else is returned as it is."""
        states = state_dict.get("state") if isinstance(state_dict, Mapping) else None
        if not isinstance(states, Mapping) or not any(
                hasattr(v, "qmap") and hasattr(v, "codes")
                for s in states.values() if isinstance(s, Mapping) for v in s.values()):
            return state_dict
        out = dict(state_dict)
        out["state"] = {}
        for key, state in states.items():
            entry = dict(state)
            for name, value in state.items():
                if not (hasattr(value, "qmap") and hasattr(value, "codes")):
                    continue
                signed = name not in self._info["non_negative"]
                if bool(value.signed) != signed or not torch.equal(
                        value.qmap.view(torch.int32), torch.tensor(
                            _core.dynamic_map(signed), dtype=torch.float32).view(torch.int32)):
                    raise ValueError(f"loaded state '{name}' of param {key}: its 8-bit map is "
                                     f"not the {'signed' if signed else 'unsigned'} dynamic map "
                                     "this rule keeps the slot in")
                entry[name] = value.codes
                entry[f"{name}_scales"] = value.scale
            out["state"][key] = entry
        groups = []
        for saved, mine in zip(state_dict.get("param_groups", []), self.param_groups):
            group = {k: v for k, v in mine.items() if k != "params"}
            group.update(saved)
            if torch.is_tensor(group.get("lr")):
                group["lr"] = float(group["lr"])
            blocks = [v.codes.numel() // v.scale.numel() for s in states.values()
                      for v in s.values() if hasattr(v, "qmap") and v.scale.numel()]
            group.setdefault("state_dtype", "int8")
            if blocks and "block_size" not in saved:
                group["block_size"] = blocks[0]
            groups.append(group)
        out["param_groups"] = groups
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.state = _State(self.state)
        for key, value in _precision.OPTIONS.items():  # pickled before these settings existed
            self.defaults.setdefault(key, value)
            for group in self.param_groups:
                group.setdefault(key, self.defaults[key])
        for key in ("_fastoptim_plans", "_fastoptim_written"):
            self.__dict__.pop(key, None)


_OPTION_DOCS = """
    fastoptim's mixed-precision arguments (keyword-only, param-group keys saved in
    state_dict; fastoptim._precision):
        master_weights (bool, optional): a float32 master copy of each bfloat16/float16
            param (state 'master_param'), stepped with float32 state; the param holds it
            rounded to nearest-even. A write to the param between steps (copy_, clamp_,
            load_state_dict of the model) is kept: an element whose bits differ from its
            master rounded to nearest-even steps from the param's value, widened exactly
            (default: False)
        state_dtype (torch.dtype or str, optional): torch.float32 or torch.bfloat16 moments,
            or torch.int8: blockwise 8-bit moments (uint8 codes '<slot>' and float32 block
            scales '<slot>_scales'; opt.dequantize_state(p, key) reads one as float32)
            (default: None, the param's dtype; float32 beside a master copy)
        stochastic_rounding (bool, optional): bfloat16/float16 stores round stochastically,
            reproducibly for a seed (default: False)
        seed (int, optional): stochastic rounding's seed, 0..2**64 - 1 (default: 0)
        block_size (int, optional): int8 state's elements per scale, a power of two from 32
            to 65536 (default: 256)
        min_8bit_size (int, optional): params of fewer elements keep float32 state under
            state_dtype=int8 (default: 4096)
"""


def _reference_base(info: dict[str, Any]) -> type:
    """For a rule torch.optim lacks: a torch.optim.Optimizer subclass with its reference
    implementation's constructor (argument names, order and defaults, from the registry; the
    options become the param groups' keys, as the reference keeps them), whose range checks are
    the core's. Groups, hooks, LR schedulers and state_dict are torch.optim.Optimizer's. Its own
    step is never the fused class's fallback: every dtype it cannot fuse is an error."""
    name, reference = info["torch_name"], info["reference"]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    signature = inspect.Signature([
        inspect.Parameter("params", kinds[0]),
        *(inspect.Parameter(arg, kinds[keyword_only],
                            default=tuple(default) if isinstance(default, list) else default)
          for arg, default, keyword_only, _ in info["args"])])
    def __init__(self: Any, params: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(params, *args, **kwargs)
        bound.apply_defaults()
        # every argument is a group key, as the reference keeps them (its foreach too), and so
        # is the rule's group state (Schedule-Free's k, train_mode, ...)
        defaults = {key: info["defaults"][key] for key in info["group_state"]}
        defaults.update((arg, bound.arguments[arg]) for arg, _, _, _ in info["args"])
        _core.state_slots(info["name"], dict(defaults))  # ValueError: the reference's wording
        torch.optim.Optimizer.__init__(self, params, defaults)

    def step(self: Any, closure: Any = None) -> Any:
        raise NotImplementedError(
            f"fastoptim.torch.{name} steps float32, float64, bfloat16 and float16 params with "
            f"dense grads; {reference} is the reference for anything else")

    __init__.__signature__ = signature.replace(parameters=[
        inspect.Parameter("self", kinds[0]), *signature.parameters.values()])
    doc = (f"{name}, exact to {reference} (op by op, in its order of operations).\n\n"
           "    Args:\n        params (iterable): parameters or named parameters to optimize, or "
           "dicts defining parameter groups\n" +
           "".join(f"        {arg} (optional): default {default!r}"
                   f"{' (accepted and ignored)' if ignored else ''}\n"
                   for arg, default, _, ignored in info["args"]))
    return type(f"_{name}Reference", (torch.optim.Optimizer,),
                {"__init__": __init__, "step": step, "__doc__": doc,
                 "__module__": __name__, "__qualname__": f"_{name}Reference"})


def _fused_class(info: dict[str, Any]) -> type:
    """fastoptim.torch's class for one rule the core describes: torch.optim's class of that
    name (constructor, groups, hooks, state_dict) with the fused step, or for a rule torch
    lacks a torch.optim.Optimizer with its reference's constructor (_reference_base); the
    mixed-precision settings as keyword-only arguments after the constructor's."""
    name = info["torch_name"]
    torch_reference = info["reference"] == f"torch.optim.{name}"
    base = getattr(torch.optim, name) if torch_reference else _reference_base(info)
    signature = inspect.signature(base)
    kind = inspect.Parameter.KEYWORD_ONLY
    signature = signature.replace(parameters=[
        *signature.parameters.values(),
        *(inspect.Parameter(key, kind, default=value)
          for key, value in _precision.OPTIONS.items())])
    namespace = {"__module__": __name__, "__qualname__": name, "_rule": info["name"],
                 "_info": info, "__signature__": signature}
    for index, (transform, mode, to) in enumerate(info["transforms"]):
        namespace[transform] = transform_method(index, transform, mode, to)
    return type(name, (_FusedStep, base), namespace)



CLASSES = {info["torch_name"]: _fused_class(info) for info in RULES.values()}


def _eight_bit_class(name: str, base: type) -> type:
    """torchao's and bitsandbytes' name for ``base`` with int8 state (``state_dtype="int8"``):
    their constructor (``block_size``, and torchao's ``bf16_stochastic_round`` for fastoptim's
    ``stochastic_rounding``), every fastoptim keyword after it."""

    def __init__(self: Any, params: Any, *args: Any, block_size: int = 256,
                 bf16_stochastic_round: bool = False, state_dtype: Any = "int8",
                 stochastic_rounding: bool | None = None, **kwargs: Any) -> None:
        rounding = bf16_stochastic_round if stochastic_rounding is None else stochastic_rounding
        base.__init__(self, params, *args, state_dtype=state_dtype, block_size=block_size,
                      stochastic_rounding=rounding, **kwargs)

    doc = (f"fastoptim.torch.{base.__name__} with blockwise 8-bit state (state_dtype='int8'): "
           f"the name torchao ({name}) and bitsandbytes use. Tensors of fewer than "
           "min_8bit_size (4096) elements keep float32 state; opt.dequantize_state(p, key) "
           "reads a moment as float32.")
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": __name__,
                                "__qualname__": name})


EIGHT_BIT = {"Adam8bit": _eight_bit_class("Adam8bit", CLASSES["Adam"]),
             "AdamW8bit": _eight_bit_class("AdamW8bit", CLASSES["AdamW"])}
globals().update(EIGHT_BIT)
