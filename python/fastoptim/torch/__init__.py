"""fastoptim.torch: ``import fastoptim.torch as optim`` in place of ``import torch.optim as optim``.

This package mirrors ``torch.optim``: every public name resolves, including the submodules
(``lr_scheduler``, ``swa_utils``, ``optimizer``; ``from fastoptim.torch.lr_scheduler import
OneCycleLR`` works). The rules the C++ core describes (``FUSED``: one class per rule
of ``fastoptim._core.rules()``) are fastoptim's fused subclasses of their torch.optim namesakes
(one C++ call per step); every other name is torch's own object, unchanged.

The fused classes step float32, float64, bfloat16 and float16 params (16-bit params as torch's
``fused=True`` does: state in the param's dtype, float32 math, one rounding per store) and take
six keyword-only arguments after torch's: ``master_weights``, ``state_dtype`` (int8: blockwise
8-bit moments), ``stochastic_rounding``, ``seed``, ``block_size`` and ``min_8bit_size``
(param-group keys, saved in state_dict; see ``fastoptim._precision``). ``AdamW8bit`` and
``Adam8bit`` are AdamW and Adam with int8 state (torchao's and bitsandbytes' names).
"""

from __future__ import annotations

import sys as _sys

import torch.optim as _torch_optim

from ._optimizers import CLASSES as _CLASSES
from ._optimizers import EIGHT_BIT as _EIGHT_BIT

# torch.optim's public names: its own objects, except the fused classes.
globals().update({name: getattr(_torch_optim, name) for name in _torch_optim.__all__})
globals().update(_CLASSES)
globals().update(_EIGHT_BIT)  # AdamW8bit, Adam8bit: AdamW and Adam with int8 state
RMSProp = _CLASSES["RMSprop"]

# `import fastoptim.torch.lr_scheduler` and `from fastoptim.torch.swa_utils import AveragedModel`
# find torch's modules themselves: same classes, same isinstance checks.
for _name in ("lr_scheduler", "swa_utils", "optimizer"):
    _sys.modules[f"{__name__}.{_name}"] = _sys.modules[f"torch.optim.{_name}"]
optimizer = _sys.modules["torch.optim.optimizer"]  # `from torch.optim.optimizer import ...`

# The classes fastoptim fuses; every other name is torch's own.
FUSED = tuple(_CLASSES)

__all__ = sorted({*_torch_optim.__all__, *_CLASSES, *_EIGHT_BIT, "RMSProp", "FUSED"})


def __dir__() -> list[str]:
    return sorted([*__all__, "optimizer"])


del _name
