"""The mixed-precision section (``python -m fastoptim bench --section mixed``): AdamW over each
storage layout (param, grad, state, master copy), every layout against a same-traffic roofline of
its own stream types, and the contenders that do the same job another way, side by side.

Layouts (``--layouts``, ``all`` for every one):

==========================  ==========  ========  =========  ========  =================
key                         param       grad      state      master    options
==========================  ==========  ========  =========  ========  =================
fp32                        float32     float32   float32    -         (reference)
bf16                        bfloat16    bfloat16  bfloat16   -         torch fused=True semantics
bf16-sr                     bfloat16    bfloat16  bfloat16   -         stochastic_rounding
bf16-fp32state              bfloat16    bfloat16  float32    -         state_dtype=float32
offload                     bfloat16    bfloat16  float32    float32   master_weights
offload-bf16state           bfloat16    bfloat16  bfloat16   float32   master, bf16 state
fp32-bf16state              float32     float32   bfloat16   -         state_dtype=bfloat16
fp32-bf16grad               float32     bfloat16  float32    -         a bf16 grad
fp32-bf16grad-bf16state     float32     bfloat16  bfloat16   -
fp16                        float16     float16   float16    -
fp16-fp32state              float16     float16   float32    -
fp16-offload                float16     float16   float32    float32
fp16-offload-bf16state      float16     float16   bfloat16   float32
fp32-fp16grad               float32     float16   float32    -
fp32-fp16grad-bf16state     float32     float16   bfloat16   -
==========================  ==========  ========  =========  ========  =================

Contenders in a layout's cell (all over the same buffers; state re-filled per cell):

* ``fastoptim.torch`` / ``fastoptim.arrays``: fastoptim's AdamW with the layout's options;
* ``roofline``: ``fastoptim._roofline`` over param, grad and every state stream (the master copy
  is one) in their own types: the bytes the layout must move, at memory speed;
* ``torch.fused``: ``torch.optim.AdamW(fused=True)`` where torch has the layout (state in the
  param's dtype: fp32, bf16, fp16);
* ``torch.forloop``: ``torch.optim.AdamW(foreach=False)`` on bf16 (slow: ``--slow-rounds``);
* ``torch.3pass``: the offload step made of torch ops: upcast the bf16 grads into float32
  buffers, ``torch.optim.AdamW(fused=True)`` over the float32 master copies, downcast the masters
  into the bf16 params (the offload layouts);
* ``deepspeed``: ``DeepSpeedCPUAdam`` on bf16 params with float32 moments (bf16-fp32state) and
  with bf16 moments (bf16, ``fp32_optimizer_states=False``), only when ``deepspeed`` is
  importable; its op is JIT-built on first use, and a failure is reported, not fatal.

The state slots and their dtypes come from fastoptim itself: a probe optimizer of the layout takes
one step on a zero param and grad, and every entry of the param's shape is a state stream (the
master copy is filled from the param, the others from the probe's value).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .. import _core
from .contenders import _copied, _started_entries
from .measurement import CellResult, Contender
from .workloads import RULES, Workload

RULE = "adamw"
MASTER_SLOT = "master_param"  # the state key of a float32 master copy (fastoptim._precision)

MIXED_CONTENDERS = (
    "fastoptim.torch",
    "fastoptim.arrays",
    "torch.fused",
    "torch.forloop",
    "torch.3pass",
    "deepspeed",
    "roofline",
)
# contenders that run in every layout's cell; the others only where a layout names them
EVERY_LAYOUT = ("fastoptim.torch", "fastoptim.arrays", "roofline")
MIXED_WITHOUT_TORCH = ("fastoptim.arrays", "roofline")
BASELINES = ("torch.fused", "torch.3pass", "deepspeed", "torch.forloop")


@dataclass(frozen=True)
class Layout:
    key: str
    label: str
    param: str
    grad: str
    options: dict[str, Any]
    contenders: tuple[str, ...] = ()  # the non-fastoptim contenders of its cell
    note: str = ""


def _layouts() -> dict[str, Layout]:
    bf16, f16, f32 = "bfloat16", "float16", "float32"
    master = {"master_weights": True}
    rows = [
        Layout("fp32", "fp32 (reference)", f32, f32, {}, ("torch.fused",)),
        Layout(
            "bf16",
            "pure bf16",
            bf16,
            bf16,
            {},
            ("torch.fused", "torch.forloop", "deepspeed"),
            "torch fused=True semantics: state in the param dtype",
        ),
        Layout(
            "bf16-sr",
            "pure bf16 + stochastic rounding",
            bf16,
            bf16,
            {"stochastic_rounding": True},
        ),
        Layout(
            "bf16-fp32state",
            "bf16 params + fp32 state",
            bf16,
            bf16,
            {"state_dtype": f32},
            ("deepspeed",),
        ),
        Layout(
            "offload",
            "offload: bf16 params+grads, fp32 master+moments",
            bf16,
            bf16,
            master,
            ("torch.3pass",),
            "one pass: bf16 params and grads in, bf16 params out",
        ),
        Layout(
            "offload-bf16state",
            "offload with bf16 moments",
            bf16,
            bf16,
            {**master, "state_dtype": bf16},
        ),
        Layout("fp32-bf16state", "fp32 params + bf16 moments", f32, f32, {"state_dtype": bf16}),
        Layout("fp32-bf16grad", "fp32 params + bf16 grads", f32, bf16, {}),
        Layout(
            "fp32-bf16grad-bf16state",
            "fp32 params + bf16 grads + bf16 moments",
            f32,
            bf16,
            {"state_dtype": bf16},
        ),
        Layout("fp16", "pure fp16", f16, f16, {}, ("torch.fused",)),
        Layout("fp16-fp32state", "fp16 params + fp32 state", f16, f16, {"state_dtype": f32}),
        Layout(
            "fp16-offload",
            "offload fp16: fp16 params+grads, fp32 master+moments",
            f16,
            f16,
            master,
            ("torch.3pass",),
        ),
        Layout(
            "fp16-offload-bf16state",
            "offload fp16 with bf16 moments",
            f16,
            f16,
            {**master, "state_dtype": bf16},
        ),
        Layout("fp32-fp16grad", "fp32 params + fp16 grads", f32, f16, {}),
        Layout(
            "fp32-fp16grad-bf16state",
            "fp32 params + fp16 grads + bf16 moments",
            f32,
            f16,
            {"state_dtype": bf16},
        ),
    ]
    return {layout.key: layout for layout in rows}


LAYOUTS: dict[str, Layout] = _layouts()
DEFAULT_LAYOUTS = (
    "fp32",
    "bf16",
    "bf16-sr",
    "bf16-fp32state",
    "offload",
    "offload-bf16state",
    "fp32-bf16state",
    "fp32-bf16grad",
    "fp16",
)
DEFAULT_WORKLOADS = "100m,gpt2"


def parse_layouts(text: str | None) -> list[str]:
    """'--layouts' text: a comma list of keys, 'all', or None for the default set.
    ValueError naming the unknown keys."""
    if text is None:
        return list(DEFAULT_LAYOUTS)
    keys = [t.strip() for t in text.split(",") if t.strip()]
    if keys == ["all"]:
        return list(LAYOUTS)
    unknown = [k for k in keys if k not in LAYOUTS]
    if unknown or not keys:
        raise ValueError(
            f"unknown layout(s): {', '.join(unknown) or '(none given)'}; expected all or "
            + ", ".join(LAYOUTS)
        )
    return keys


def runs_in(kind: str, layout: Layout) -> bool:
    """Whether contender ``kind`` belongs in ``layout``'s cell."""
    return kind in EVERY_LAYOUT or kind in layout.contenders


# ---- dtypes -------------------------------------------------------------------------------------


def dtype_name(dtype: Any) -> str:
    """'float32', 'bfloat16', ... of a NumPy / ml_dtypes / torch dtype."""
    return str(dtype).removeprefix("torch.")


def itemsize(name: str) -> int:
    return {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}[name]


def numpy_dtype(name: str) -> Any:
    """The NumPy dtype of a storage type; bfloat16 is ml_dtypes' (RuntimeError without it)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise RuntimeError("bfloat16 arrays need ml_dtypes (pip install ml_dtypes)") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# ---- the state a layout keeps --------------------------------------------------------------------


class LayoutState(NamedTuple):
    slots: list[str]  # state streams in the optimizer's order (the master copy among them)
    dtypes: list[str]  # storage type of each
    init: list[float | None]  # fill value of each; None: a float32 copy of the param


def _array_probe(layout: Layout) -> dict[str, Any]:
    import fastoptim

    cls = getattr(fastoptim, RULES[RULE][0])
    param = np.zeros(2, numpy_dtype(layout.param))
    opt = cls([param], **RULES[RULE][1], **layout.options)
    opt.step([np.zeros(2, numpy_dtype(layout.grad))])
    return dict(opt.state[0])


def attach_grad(param: Any, grad: Any) -> None:
    """param.grad = grad, declaring the grad's dtype first when it is not the param's (torch's
    Tensor.grad_dtype; a torch without it raises)."""
    if grad.dtype != param.dtype:
        param.grad_dtype = grad.dtype
    param.grad = grad


def _torch_probe(layout: Layout, torch: Any) -> dict[str, Any]:
    cls = getattr(importlib.import_module("fastoptim.torch"), RULES[RULE][0])
    param = torch.zeros(2, dtype=getattr(torch, layout.param), requires_grad=True)
    attach_grad(param, torch.zeros(2, dtype=getattr(torch, layout.grad)))
    opt = cls([param], **RULES[RULE][1], **layout.options)
    opt.step()
    return dict(opt.state[param])


def layout_state(layout: Layout, torch: Any = None) -> LayoutState:
    """The layout's state streams, from a probe step of fastoptim's own AdamW (the array front;
    the torch front when the array front cannot hold the dtypes). Entries of the param's shape
    are streams; the rest (step) are each optimizer's own."""
    errors = []
    state = None
    for probe in (_array_probe, _torch_probe):
        if probe is _torch_probe and torch is None:
            continue
        try:
            state = probe(layout) if probe is _array_probe else probe(layout, torch)
            break
        except Exception as exc:  # noqa: BLE001 - both fronts tried, both reasons reported
            errors.append(f"{type(exc).__name__}: {exc}")
    if state is None:
        raise RuntimeError("; ".join(errors))
    slots, dtypes, init = [], [], []
    for key, value in state.items():
        if tuple(getattr(value, "shape", ())) != (2,):
            continue
        slots.append(key)
        dtypes.append(dtype_name(value.dtype))
        # a torch bfloat16 tensor has no NumPy view without ml_dtypes: read its first value
        init.append(None if key == MASTER_SLOT else float(value.reshape(-1)[0]))
    return LayoutState(slots, dtypes, init)


def stream_dtypes(layout: Layout, state: LayoutState) -> list[str]:
    """Storage type of every stream a step moves: param, grad, then the state streams."""
    return [layout.param, layout.grad, *state.dtypes]


def state_bytes_per_param(state: LayoutState) -> int:
    """Bytes of optimizer state per param: the moments and the master copy."""
    return sum(itemsize(d) for d in state.dtypes)


def bytes_per_element(layout: Layout, state: LayoutState) -> int:
    """Bytes one step moves per element (the roofline's count: grad read, every other stream
    read and written)."""
    from .. import _roofline

    return int(_roofline.bytes_per_element(stream_dtypes(layout, state)))


def _address(x: Any) -> int:
    return int(x.data_ptr()) if hasattr(x, "data_ptr") else int(x.ctypes.data)


# ---- the shared buffers of one layout ------------------------------------------------------------


class LayoutBuffers:
    """Params, grads and state streams of one workload in one layout: torch tensors when torch
    is installed with NumPy views of the same memory (bfloat16 through ml_dtypes, None without
    it), NumPy arrays otherwise."""

    def __init__(
        self,
        shapes: Sequence[tuple[int, ...]],
        layout: Layout,
        state: LayoutState,
        torch: Any,
        seed: int = 0,
    ) -> None:
        self.torch = torch
        self.layout = layout
        self.state = state
        self.shapes = list(shapes)
        self.grad_error = ""  # why the torch params hold no .grad (a torch without grad_dtype)
        if torch is not None:
            gen = torch.Generator().manual_seed(seed)

            def random(dtype: str) -> list[Any]:
                return [
                    torch.randn(s, generator=gen).to(getattr(torch, dtype)) for s in self.shapes
                ]

            self.params = [p.requires_grad_() for p in random(layout.param)]
            self.grads = random(layout.grad)
            self.slots = [
                [torch.empty(s, dtype=getattr(torch, d)) for s in self.shapes] for d in state.dtypes
            ]
            try:
                for p, g in zip(self.params, self.grads):
                    attach_grad(p, g)
            except (RuntimeError, AttributeError, TypeError) as exc:
                for p in self.params:
                    p.grad = None
                self.grad_error = str(exc).splitlines()[0]
            self.param_arrays = self._views(self.params)
            self.grad_arrays = self._views(self.grads)
            self.slot_arrays = [self._views(s) for s in self.slots]
        else:
            rng = np.random.default_rng(seed)

            def random_arrays(dtype: str) -> list[np.ndarray]:
                nd = numpy_dtype(dtype)
                return [rng.standard_normal(s, dtype=np.float32).astype(nd) for s in self.shapes]

            self.params = self.param_arrays = random_arrays(layout.param)
            self.grads = self.grad_arrays = random_arrays(layout.grad)
            self.slots = self.slot_arrays = [
                [np.empty(s, numpy_dtype(d)) for s in self.shapes] for d in state.dtypes
            ]
        self.fill()

    def _views(self, tensors: list[Any]) -> list[np.ndarray] | None:
        """NumPy views of torch tensors (bfloat16 via ml_dtypes); None when NumPy cannot."""
        torch = self.torch
        if not tensors:
            return []
        if tensors[0].dtype == torch.bfloat16:
            try:
                bf16 = numpy_dtype("bfloat16")
            except RuntimeError:
                return None
            return [t.detach().view(torch.int16).numpy().view(bf16) for t in tensors]
        return [t.detach().numpy() for t in tensors]

    def fill(self) -> None:
        """Every state stream back to its start: the probe's value, the master from the param."""
        for k, value in enumerate(self.state.init):
            for i, buf in enumerate(self.slots[k]):
                if value is not None and self.torch is not None:
                    buf.fill_(value)
                elif value is not None:
                    buf.fill(value)
                elif self.torch is not None:
                    buf.copy_(self.params[i].detach())
                else:
                    buf[...] = self.params[i].astype(buf.dtype)

    def roofline_table(self) -> np.ndarray:
        """The (n, 7) pointer table of ``fastoptim._roofline.step`` (param, grad, up to three
        state streams, element count); the buffers must outlive it."""
        if len(self.slots) > 3:
            raise RuntimeError(f"the roofline takes 3 state streams, not {self.state.slots}")
        rows = []
        for i, p in enumerate(self.params):
            slots = [_address(s[i]) for s in self.slots] + [0] * (3 - len(self.slots))
            size = int(p.numel()) if hasattr(p, "numel") else int(p.size)
            rows.append([_address(p), _address(self.grads[i]), *slots, size, 0])
        return np.array(rows, dtype=np.int64).reshape(-1, 7)


# ---- contenders ----------------------------------------------------------------------------------


_DEEPSPEED: dict[str, Any] = {}  # the import (and first JIT build) is tried once per process


@contextlib.contextmanager
def _quiet_fds() -> Iterator[list[str]]:
    """stdout and stderr (the file descriptors: compiler output included) into a buffer while
    DeepSpeed imports and builds its op; the text is yielded for an error message."""
    captured: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))


def deepspeed_missing() -> str | None:
    """Why DeepSpeedCPUAdam cannot be a contender, or None when deepspeed is importable."""
    if importlib.util.find_spec("deepspeed") is None:
        return "unavailable: deepspeed is not installed (pip install deepspeed)"
    return _DEEPSPEED.get("error")


def _deepspeed_optimizer(params: list[Any], fp32_states: bool) -> Any:
    if "error" in _DEEPSPEED:
        raise RuntimeError(_DEEPSPEED["error"])
    output: list[str] = []
    try:
        with _quiet_fds() as output:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            options = {k: v for k, v in RULES[RULE][1].items() if k in ("lr", "weight_decay")}
            opt = DeepSpeedCPUAdam(
                params,
                lr=options.get("lr", 1e-3),
                weight_decay=options.get("weight_decay", 1e-2),  # torch AdamW's default
                adamw_mode=True,
                fp32_optimizer_states=fp32_states,
            )
    except BaseException as exc:  # noqa: BLE001 - an optional contender that cannot be built
        if isinstance(exc, KeyboardInterrupt):
            raise
        tail = " | ".join(line for line in "".join(output).splitlines()[-3:] if line.strip())
        _DEEPSPEED["error"] = f"unavailable: {type(exc).__name__}: {exc}" + (
            f" [{tail}]" if tail else ""
        )
        raise RuntimeError(_DEEPSPEED["error"]) from None
    return opt


def _fastoptim_torch(layout: Layout, state: LayoutState, buffers: LayoutBuffers) -> Contender:
    torch = buffers.torch
    if buffers.grad_error:
        raise RuntimeError(f"torch params cannot hold these grads: {buffers.grad_error}")
    cls = getattr(importlib.import_module("fastoptim.torch"), RULES[RULE][0])
    options = {**RULES[RULE][1], **layout.options}
    started = _started_entries(_torch_probe(layout, torch), state.slots)
    opt = cls(buffers.params, **options)
    for i, p in enumerate(buffers.params):
        st = _copied(started)
        for k, slot in enumerate(state.slots):
            st[slot] = buffers.slots[k][i]
        opt.state[p] = st
    return Contender("fastoptim.torch", opt.step, opt)


def _fastoptim_arrays(layout: Layout, state: LayoutState, buffers: LayoutBuffers) -> Contender:
    import fastoptim

    views = [buffers.param_arrays, buffers.grad_arrays, *buffers.slot_arrays]
    if any(v is None for v in views):
        raise RuntimeError("bfloat16 arrays need ml_dtypes (pip install ml_dtypes)")
    cls = getattr(fastoptim, RULES[RULE][0])
    started = _started_entries(_array_probe(layout), state.slots)
    opt = cls(buffers.param_arrays, **RULES[RULE][1], **layout.options)
    for i in range(len(buffers.param_arrays)):
        st = _copied(started)
        for k, slot in enumerate(state.slots):
            st[slot] = buffers.slot_arrays[k][i]
        opt.state[i] = st
    grads = buffers.grad_arrays
    return Contender("fastoptim.arrays", lambda: opt.step(grads), opt)


def _torch_optimizer(kind: str, layout: Layout, state: LayoutState, buffers: LayoutBuffers):
    """torch.optim.AdamW fused or for-loop over the layout's params, its state the shared
    streams (which must be the dtypes torch keeps)."""
    torch = buffers.torch
    if buffers.grad_error:
        raise RuntimeError(buffers.grad_error)
    cls = getattr(torch.optim, RULES[RULE][0])
    flags = {"fused": True} if kind == "torch.fused" else {"foreach": False}
    zero = torch.zeros(2, dtype=getattr(torch, layout.param), requires_grad=True)
    zero.grad = torch.zeros_like(zero)
    probe = cls([zero], **flags, **RULES[RULE][1])
    probe.step()
    theirs = {k: dtype_name(v.dtype) for k, v in probe.state[zero].items() if v.shape == (2,)}
    ours = dict(zip(state.slots, state.dtypes))
    if theirs != ours:
        raise RuntimeError(f"torch keeps state {theirs}, this layout {ours}")
    started = _started_entries(probe.state[zero], state.slots)
    opt = cls(buffers.params, **flags, **RULES[RULE][1])
    for i, p in enumerate(buffers.params):
        st = _copied(started)
        for k, slot in enumerate(state.slots):
            st[slot] = buffers.slots[k][i]
        opt.state[p] = st
    return Contender(kind, opt.step, opt)


def _torch_three_pass(layout: Layout, state: LayoutState, buffers: LayoutBuffers) -> Contender:
    """The offload step from torch ops: upcast the 16-bit grads into float32 buffers (this
    contender's own: 4 more bytes per param), torch's fused float32 AdamW over the float32
    master copies (the shared master and moment streams), downcast the masters into the params.
    Three passes over memory where fastoptim's offload layout makes one."""
    torch = buffers.torch
    if MASTER_SLOT not in state.slots:
        raise RuntimeError("the three-pass sequence needs a master copy")
    moments = [s for s in state.slots if s != MASTER_SLOT]
    if any(state.dtypes[state.slots.index(s)] != "float32" for s in moments):
        raise RuntimeError("torch's fused AdamW over float32 masters keeps float32 moments")
    masters = [m.detach().requires_grad_() for m in buffers.slots[state.slots.index(MASTER_SLOT)]]
    grads32 = [torch.empty_like(m, requires_grad=False) for m in masters]
    for m, g in zip(masters, grads32):
        m.grad = g
    cls = getattr(torch.optim, RULES[RULE][0])
    zero = torch.zeros(2, requires_grad=True)
    zero.grad = torch.zeros_like(zero)
    probe = cls([zero], fused=True, **RULES[RULE][1])
    probe.step()
    started = _started_entries(probe.state[zero], moments)
    opt = cls(masters, fused=True, **RULES[RULE][1])
    for i, m in enumerate(masters):
        st = _copied(started)
        for slot in moments:
            st[slot] = buffers.slots[state.slots.index(slot)][i]
        opt.state[m] = st
    params16 = [p.detach() for p in buffers.params]
    grads16 = list(buffers.grads)
    copy = getattr(torch, "_foreach_copy_", None)

    def step() -> None:
        with torch.no_grad():
            if copy is not None:
                copy(grads32, grads16)  # pass 1: upcast
            else:
                for d, s in zip(grads32, grads16):
                    d.copy_(s)
            opt.step()  # pass 2: fused float32 AdamW
            if copy is not None:
                copy(params16, masters)  # pass 3: downcast (round to nearest even)
            else:
                for d, s in zip(params16, masters):
                    d.copy_(s)

    return Contender("torch.3pass", step, (opt, masters, grads32))


def _deepspeed(layout: Layout, state: LayoutState, buffers: LayoutBuffers) -> Contender:
    if buffers.grad_error:
        raise RuntimeError(buffers.grad_error)
    missing = deepspeed_missing()
    if missing:
        raise RuntimeError(missing)
    if set(state.slots) != {"exp_avg", "exp_avg_sq"} or len(set(state.dtypes)) != 1:
        raise RuntimeError(f"DeepSpeedCPUAdam keeps two moments of one dtype, not {state}")
    fp32 = state.dtypes[0] == "float32"
    if not fp32 and state.dtypes[0] != layout.param:
        raise RuntimeError("DeepSpeedCPUAdam keeps its moments in float32 or the param's dtype")
    opt = _deepspeed_optimizer(buffers.params, fp32_states=fp32)
    for i, p in enumerate(buffers.params):
        st: dict[str, Any] = {"step": 0}
        for k, slot in enumerate(state.slots):
            st[slot] = buffers.slots[k][i]
        opt.state[p] = st
    return Contender("deepspeed", opt.step, opt)


def _roofline(buffers: LayoutBuffers, threads: int) -> Contender:
    from .. import _roofline

    table = buffers.roofline_table()
    dtypes = stream_dtypes(buffers.layout, buffers.state)
    serial_below = int(_core.serial_threshold)
    return Contender(
        "roofline", lambda: _roofline.step(table, dtypes, threads, serial_below), keep=table
    )


def build_mixed_contender(
    kind: str,
    layout: Layout,
    state: LayoutState,
    buffers: LayoutBuffers,
    threads: int,
    slow_rounds: int | None = None,
) -> Contender:
    """Contender ``kind`` of ``layout``'s cell over the shared buffers."""
    if kind == "roofline":
        return _roofline(buffers, threads)
    if kind == "fastoptim.arrays":
        return _fastoptim_arrays(layout, state, buffers)
    if buffers.torch is None:
        raise RuntimeError("torch is not installed")
    if kind == "fastoptim.torch":
        return _fastoptim_torch(layout, state, buffers)
    if kind in ("torch.fused", "torch.forloop"):
        contender = _torch_optimizer(kind, layout, state, buffers)
        if kind == "torch.forloop":
            contender.max_rounds = slow_rounds
        return contender
    if kind == "torch.3pass":
        return _torch_three_pass(layout, state, buffers)
    if kind == "deepspeed":
        return _deepspeed(layout, state, buffers)
    raise ValueError(f"unknown contender {kind!r}")


# ---- the section's cells (cli.run_mixed_cells runs them) ------------------------------------------


@dataclass
class MixedCell(CellResult):
    """One (layout, workload, threads) cell; ``dtype`` is the param's."""

    layout: str = ""
    grad_dtype: str = ""
    state_slots: list[str] = field(default_factory=list)
    state_dtypes: list[str] = field(default_factory=list)
    stream_dtypes: list[str] = field(default_factory=list)
    bytes_per_element: int | None = None
    state_bytes_per_param: int | None = None
    notes: dict[str, str] = field(default_factory=dict)


def contender_note(kind: str, layout: Layout, state: LayoutState, slow_rounds: int | None) -> str:
    """What a contender's row stands for beyond its name."""
    if kind == "torch.forloop" and slow_rounds:
        return f"foreach=False, slow: {slow_rounds} rounds"
    if kind == "torch.fused":
        return f"fused=True, {layout.param} state"
    if kind == "torch.3pass":
        return "upcast grads + fused fp32 AdamW on masters + downcast params (+4 B/param)"
    if kind == "deepspeed":
        moments = state.dtypes[0] if state.dtypes else "?"
        return f"DeepSpeedCPUAdam, {moments} moments"
    return ""


def planned_cells(workloads: Sequence[Workload], layouts: Sequence[str], threads: Sequence[int]):
    return len(workloads) * len(layouts) * len(threads)


def layout_facts(layouts: Sequence[str], torch: Any = None) -> dict[str, dict[str, Any]]:
    """Per layout: its streams' dtypes, bytes moved per element, state bytes per param (or the
    reason the probe failed): the JSON's layout table."""
    out: dict[str, dict[str, Any]] = {}
    for key in layouts:
        layout = LAYOUTS[key]
        entry: dict[str, Any] = {
            "label": layout.label,
            "param": layout.param,
            "grad": layout.grad,
            "options": dict(layout.options),
            "note": layout.note,
        }
        try:
            state = layout_state(layout, torch)
        except Exception as exc:  # noqa: BLE001
            entry["error"] = f"{type(exc).__name__}: {exc}"
        else:
            entry["state"] = dict(zip(state.slots, state.dtypes))
            entry["stream_dtypes"] = stream_dtypes(layout, state)
            entry["bytes_per_element"] = bytes_per_element(layout, state)
            entry["state_bytes_per_param"] = state_bytes_per_param(state)
        out[key] = entry
    return out
