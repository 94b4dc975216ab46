"""fastoptim: fused SIMD + OpenMP optimizer steps, exact to torch.optim.

Two fronts over one C++ core:

* ``fastoptim.SGD/Adagrad/Adadelta/RMSprop/Adam/AdamW`` update NumPy arrays (or anything with
  the buffer protocol or DLPack, torch CPU tensors included) in place: ``opt.step(grads)``.
* ``fastoptim.torch`` holds drop-in ``torch.optim.Optimizer`` subclasses of the same names.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._arrays import SGD, Adadelta, Adagrad, Adam, AdamW, Optimizer, RMSprop
from ._runtime import (
    available_simd_levels,
    get_num_threads,
    openmp_runtime,
    set_num_threads,
    set_simd_level,
    simd_level,
)

RMSProp = RMSprop

try:
    __version__ = version("fastoptim")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "Optimizer",
    "RMSProp",
    "RMSprop",
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
