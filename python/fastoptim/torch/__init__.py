"""fastoptim.torch: ``import fastoptim.torch as optim`` in place of ``import torch.optim as optim``.

This package mirrors ``torch.optim``: every public name resolves, including the submodules
(``lr_scheduler``, ``swa_utils``, ``optimizer``; ``from fastoptim.torch.lr_scheduler import
OneCycleLR`` works). SGD, Adagrad, Adadelta, RMSprop, Adam and AdamW are fastoptim's fused
subclasses of their torch.optim namesakes (one C++ call per step); every other name is torch's
own object, unchanged.
"""

from __future__ import annotations

import sys as _sys

from torch.optim import (
    ASGD,
    LBFGS,
    Adafactor,
    Adamax,
    Muon,
    NAdam,
    Optimizer,
    RAdam,
    Rprop,
    SparseAdam,
    lr_scheduler,
    swa_utils,
    swap_in_optimizer_params_and_state,
)

from ._optimizers import SGD, Adadelta, Adagrad, Adam, AdamW, RMSProp, RMSprop

# `import fastoptim.torch.lr_scheduler` and `from fastoptim.torch.swa_utils import AveragedModel`
# find torch's modules themselves: same classes, same isinstance checks.
for _name in ("lr_scheduler", "swa_utils", "optimizer"):
    _sys.modules[f"{__name__}.{_name}"] = _sys.modules[f"torch.optim.{_name}"]
optimizer = _sys.modules["torch.optim.optimizer"]  # `from torch.optim.optimizer import ...`

__all__ = [
    "ASGD",
    "LBFGS",
    "SGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "FUSED",
    "Muon",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSProp",
    "RMSprop",
    "Rprop",
    "SparseAdam",
    "lr_scheduler",
    "swa_utils",
    "swap_in_optimizer_params_and_state",
]

# The classes fastoptim fuses; every other name is torch's own.
FUSED = ("SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW")


def __dir__() -> list[str]:
    return sorted([*__all__, "optimizer"])


del _name
