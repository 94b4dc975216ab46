"""fastoptim: fused SIMD + OpenMP optimizer steps, exact to torch.optim.

Two fronts over one C++ core:

* ``fastoptim.SGD``, ``fastoptim.Adam``, ...: one class per rule the core registers
  (``fastoptim._core.rules()``), updating NumPy arrays (or anything with the buffer protocol or
  DLPack, torch CPU tensors included) in place: ``opt.step(grads)``. The classes are made from
  the core's rule descriptions.
* ``fastoptim.torch`` holds drop-in ``torch.optim.Optimizer`` subclasses of the same names.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._arrays import _CLASSES, Optimizer
from ._runtime import (
    available_simd_levels,
    get_num_threads,
    openmp_runtime,
    set_num_threads,
    set_simd_level,
    simd_level,
)

globals().update(_CLASSES)
RMSProp = _CLASSES["RMSprop"]

try:
    __version__ = version("fastoptim")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [  # the rule classes come from the core
    *_CLASSES,
    "Optimizer",
    "RMSProp",
    "available_simd_levels",
    "get_num_threads",
    "openmp_runtime",
    "set_num_threads",
    "set_simd_level",
    "simd_level",
]


def __dir__() -> list[str]:
    # public names only (not the private submodules or the imports above)
    return sorted([*__all__, "__version__"])
