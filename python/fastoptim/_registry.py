"""The rules the core registers (``_core.rules()``), for the code that goes over every rule: the
demo, the bench, the tests. Nothing outside the rule descriptions keeps a list of rules."""

from __future__ import annotations

from typing import Any

from . import _core

RULES: dict[str, dict[str, Any]] = {info["name"]: info for info in _core.rules()}


def ready_to_train(opt: Any) -> Any:
    """``opt`` (either front's optimizer) as a training loop starts it: the rule's transforms
    to its training mode run (a transform whose target is True: Schedule-Free's train(); its
    optimizers start in eval mode, where a step raises). Returns opt."""
    for name, _, to in opt._info["transforms"]:
        if to:
            getattr(opt, name)()
    return opt


def torch_class(rule: str, torch: Any) -> type | None:
    """torch.optim's class of ``rule`` when torch.optim is the rule's reference, or None: a
    rule torch lacks (Lion) names another reference and has no torch.optim contender or
    comparison."""
    info = RULES[rule]
    if torch is None or info["reference"] != f"torch.optim.{info['torch_name']}":
        return None
    return getattr(torch.optim, info["torch_name"])
