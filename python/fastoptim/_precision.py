"""Mixed-precision settings, the same for every rule and both fronts: where each param's
streams live and how 16-bit stores round. They are param-group keys (saved in state_dict):

- ``master_weights`` (False): bfloat16/float16 params get a float32 master copy (state key
  ``master_param``) and float32 state; the param holds the master rounded to nearest-even,
  written in the same pass. float32/float64 params are their own master. A write to the param
  between steps (a copy, a loaded model, a clip or clamp, an EMA swap) is kept: where an
  element's bits differ from its master rounded to nearest-even, the next step starts from the
  param's value widened exactly (rewriting the value it holds changes nothing). Until then a
  saved ``master_param`` is the old one; loaded beside the same param values, it yields again.
- ``state_dtype`` (None: the param's dtype, float32 beside a master copy): ``"float32"`` or
  ``"bfloat16"`` (or the torch / ml_dtypes / NumPy dtype). bfloat16 state is for float32 params
  and master copies; float32 state for 16-bit params keeps their moments exact without a master.
- ``stochastic_rounding`` (False) and ``seed`` (0): every bfloat16/float16 store (params without
  a master copy, 16-bit state) rounds stochastically, from a counter-based generator of (seed,
  step, param index, element): reproducible for a seed, the same at every SIMD level and thread
  count.
- ``state_dtype="int8"`` (or ``torch.int8`` / ``np.int8``): blockwise dynamic 8-bit state
  (torchao 0.18's AdamW8bit): each state slot as uint8 codes shaped like the param (state key
  ``<slot>``) and one float32 scale per block of ``block_size`` (256) elements in memory order
  (``<slot>_scales``; the last block may be partial), the signed map, or the unsigned one for the
  slots the rule declares non-negative. A param with fewer than ``min_8bit_size`` (4096)
  elements keeps float32 state, as bitsandbytes does. For float32, bfloat16 and float16 params.

The core decides which (param, grad, state, master) combinations have kernels; this module only
names dtypes and turns a group's settings into each param's storage.
"""
from __future__ import annotations

from typing import Any

OPTIONS: dict[str, Any] = {
    "master_weights": False,
    "state_dtype": None,
    "stochastic_rounding": False,
    "seed": 0,
    "block_size": 256,
    "min_8bit_size": 4096,
}
HALF = ("bfloat16", "float16")
FLOAT = ("float32", "float64", *HALF)
_SEED_LIMIT = 1 << 64


_NAMES: dict[Any, str | None] = {}  # dtype -> name: str() of a NumPy dtype costs microseconds


def dtype_name(dtype: Any) -> str | None:
    """'float32', 'float64', 'bfloat16' or 'float16' for a torch, NumPy or ml_dtypes dtype or a
    name; None for anything else."""
    if dtype is None:
        return None
    try:
        return _NAMES[dtype]
    except (KeyError, TypeError):
        pass
    # a scalar type (np.float32, ml_dtypes.bfloat16) by its name, a dtype by its text
    name = dtype.__name__ if isinstance(dtype, type) else str(dtype).removeprefix("torch.")
    name = {"half": "float16", "double": "float64"}.get(name, name)
    name = name if name in FLOAT else None
    try:
        _NAMES[dtype] = name
    except TypeError:  # unhashable
        pass
    return name


def state_name(dtype: Any) -> str | None:
    """dtype_name, and 'int8' for int8 state (torch.int8, np.int8, 'int8')."""
    if dtype is not None and not isinstance(dtype, bool):
        text = dtype.__name__ if isinstance(dtype, type) else str(dtype).removeprefix("torch.")
        if text == "int8":
            return "int8"
    return dtype_name(dtype)


def check_group(group: dict[str, Any]) -> None:
    """The settings of one param group, checked (ValueError/TypeError naming the key)."""
    for key in ("master_weights", "stochastic_rounding"):
        if not isinstance(group[key], bool):
            raise TypeError(f"{key} must be True or False, got {group[key]!r}")
    state = group["state_dtype"]
    if state is not None and state_name(state) not in ("float32", "bfloat16", "int8"):
        raise ValueError(f"state_dtype must be None, float32, bfloat16 or int8, got {state!r}")
    from . import _core

    _core.check_block_size(group["block_size"])  # a power of two from 32 to 65536
    least = group["min_8bit_size"]
    if isinstance(least, bool) or not hasattr(least, "__index__"):
        raise TypeError(f"min_8bit_size must be an integer, got {least!r}")
    if least.__index__() < 0:
        raise ValueError(f"min_8bit_size must be >= 0, got {least.__index__()}")
    seed = group["seed"]
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if not 0 <= seed.__index__() < _SEED_LIMIT:
        raise ValueError(f"seed must be in 0..2**64 - 1, got {seed.__index__()}")


def storage(param: str, group: dict[str, Any], where: str,
            numel: int | None = None) -> tuple[str, bool]:
    """(state dtype, has a master copy) of a param of dtype ``param`` and ``numel`` elements
    under the group's settings (int8 state: float32 below min_8bit_size elements; numel None:
    as for a large param). TypeError for a combination that makes no sense (float64 params
    with bfloat16 state)."""
    master = bool(group["master_weights"]) and param in HALF
    wanted = state_name(group["state_dtype"])
    if wanted is None:
        return ("float32" if master else param), master
    if wanted == "int8" and param != "float64" and numel is not None and \
            numel < group["min_8bit_size"].__index__():
        return "float32", master
    if param == "float64":
        raise TypeError(f"{where}: state_dtype={wanted} does not fit float64 params; float64 "
                        "params keep float64 state (state_dtype=None)")
    if param == "float16" and wanted == "bfloat16" and not master:
        raise TypeError(f"{where}: bfloat16 state for float16 params needs master_weights=True "
                        "(or state_dtype=None for float16 state, float32 for exact moments)")
    return wanted, master


STORAGE = ("master_weights", "state_dtype", "stochastic_rounding")  # must match to load
QUANTIZATION = ("block_size", "min_8bit_size")  # must match too, with int8 state


def check_loadable(loaded: dict[str, Any], current: dict[str, Any], where: str = "") -> None:
    """ValueError unless a checkpoint's storage settings are this optimizer's (the seed is
    restored from the checkpoint instead). ``where`` names the group in the message."""
    keys = STORAGE + (QUANTIZATION if current["state_dtype"] == "int8" else ())
    for key in keys:
        if loaded[key] != current[key]:
            raise ValueError(
                f"loaded state dict has {key}={loaded[key]!r}{where}, this optimizer "
                f"{key}={current[key]!r}; a checkpoint loads into an optimizer with the same "
                "mixed-precision settings")


def rounding(group: dict[str, Any]) -> tuple[bool, int]:
    """(stochastic, seed) as the core takes them."""
    return bool(group["stochastic_rounding"]), group["seed"].__index__()
