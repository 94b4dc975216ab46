"""The rules the core registers (``_core.rules()``), for the code that goes over every rule: the
demo, the bench, the tests. Nothing outside the rule descriptions keeps a list of rules."""

from __future__ import annotations

from typing import Any

from . import _core

RULES: dict[str, dict[str, Any]] = {info["name"]: info for info in _core.rules()}


def torch_class(rule: str, torch: Any) -> type | None:
    """torch.optim's class of ``rule``, or None: not every registered rule is one of torch's
    (Lion, Schedule-Free), and those have no torch.optim contender or comparison."""
    if torch is None:
        return None
    return getattr(torch.optim, RULES[rule]["torch_name"], None)
