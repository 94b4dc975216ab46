"""`import fastoptim.torch as optim` replaces `import torch.optim as optim`: every public name of
torch.optim resolves (a torch release that adds one fails here), submodule imports work, the
fused classes are fastoptim's and the rest are torch's own objects, and dir()/__all__ hold public
names only."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import fastoptim
import pytest
from fastoptim import _registry

torch = pytest.importorskip("torch")
import fastoptim.torch as fo_torch  # noqa: E402

# Every registered rule is fused; those torch.optim has replace torch's class of the same name.
FUSED = {info["torch_name"] for info in _registry.RULES.values()}


@pytest.mark.parametrize("name", sorted(torch.optim.__all__))
def test_every_torch_optim_name_resolves(name: str) -> None:
    ours, theirs = getattr(fo_torch, name), getattr(torch.optim, name)
    assert name in fo_torch.__all__
    if name in FUSED:  # torch.optim has it, so it subclasses torch's
        assert ours is not theirs and issubclass(ours, theirs)
        assert ours.__module__.startswith("fastoptim.torch")
    else:
        assert ours is theirs


def test_fused_list_is_exact() -> None:
    assert set(fo_torch.FUSED) == FUSED
    assert FUSED <= set(fo_torch.__all__) and FUSED <= set(fastoptim.__all__)
    assert fo_torch.RMSProp is fo_torch.RMSprop


SUBMODULE_IMPORTS = [
    "from fastoptim.torch.lr_scheduler import OneCycleLR, StepLR, LRScheduler",
    "from fastoptim.torch.swa_utils import AveragedModel, SWALR",
    "from fastoptim.torch.optimizer import Optimizer",
    "import fastoptim.torch.lr_scheduler as s; s.CosineAnnealingLR",
    "import fastoptim.torch as optim; optim.lr_scheduler.StepLR; optim.swa_utils.SWALR",
]
# Each statement with no fastoptim module imported before it, in one interpreter (importing torch
# once, not once per statement): fastoptim's modules are dropped from sys.modules in between.
FRESH_IMPORTS = """
import json, sys, traceback
failures = {}
for statement in json.loads(sys.argv[1]):
    for name in [m for m in sys.modules if m == "fastoptim" or m.startswith("fastoptim.")]:
        del sys.modules[name]
    try:
        exec(statement, {})
    except BaseException:
        failures[statement] = traceback.format_exc()
print(json.dumps(failures))
"""


def test_submodule_imports() -> None:
    """Each statement works; a statement that cannot (the last) is reported, so the check can
    fail."""
    broken = "import fastoptim.torch.no_such_module"
    out = subprocess.run([sys.executable, "-c", FRESH_IMPORTS,
                          json.dumps([*SUBMODULE_IMPORTS, broken])],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    failures = json.loads(out.stdout.strip().splitlines()[-1])
    assert "ModuleNotFoundError" in failures.pop(broken, "")
    assert not failures, "\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_submodules_are_torchs() -> None:
    assert importlib.import_module("fastoptim.torch.lr_scheduler") is torch.optim.lr_scheduler
    assert importlib.import_module("fastoptim.torch.swa_utils") is torch.optim.swa_utils


def test_scheduler_and_swa_drive_a_fused_optimizer() -> None:
    import fastoptim.torch as optim

    model = torch.nn.Linear(3, 1)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10)
    swa = optim.swa_utils.AveragedModel(model)
    for _ in range(10):
        opt.zero_grad()
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
        sched.step()
        swa.update_parameters(model)
    assert opt.param_groups[0]["lr"] != 0.1


@pytest.mark.parametrize("module", [fastoptim, fo_torch])
def test_dir_and_all_hold_public_names_only(module) -> None:
    for name in module.__all__:
        assert not name.startswith("_") and hasattr(module, name)
    for name in dir(module):
        assert not name.startswith("_") or name == "__version__", name
        assert name not in {"np", "copy", "is_", "Any", "torch", "annotations", "sys",
                            "state_slots", "importlib"}, name


def test_torch_names_in_a_star_import() -> None:
    scope: dict = {}
    exec("from fastoptim.torch import *", scope)
    assert {"Adam", "lr_scheduler", "NAdam", "Optimizer", "swa_utils"} <= scope.keys()
