"""The references of the rules torch.optim lacks (tests/references.py) against the official
implementations the registry names, wherever they install: the same params and state, bit for
bit, over the rule's option grid, in float32 and float64. Every other test compares fastoptim
with tests/references.py, so this is what ties fastoptim to the official implementation."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from _support import (  # noqa: E402
    GRIDS,
    REGISTRY,
    RICH,
    has_torch_reference,
    official_class,
    ready_to_step,
)

import references  # noqa: E402

OWN_REFERENCE = [rule for rule in REGISTRY if not has_torch_reference(rule)]


def test_every_rule_torch_lacks_has_a_reference() -> None:
    for rule in OWN_REFERENCE:
        assert hasattr(references, rule), f"tests/references.py has no {rule}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("rule", OWN_REFERENCE)
def test_reference_is_the_official_implementation_bit_for_bit(rule: str, dtype) -> None:
    official = official_class(rule)
    for options in [RICH[rule], *GRIDS[rule]]:
        gen = torch.Generator().manual_seed(7)
        init = [torch.randn(s, generator=gen, dtype=dtype) for s in ((17,), (3, 5))]
        ours = [torch.nn.Parameter(p.clone()) for p in init]
        theirs = [torch.nn.Parameter(p.clone()) for p in init]
        a = ready_to_step(getattr(references, rule)(ours, **options), rule)
        b = ready_to_step(official(theirs, **options), rule)
        for step in range(50):
            for x, y in zip(ours, theirs):
                g = torch.randn(x.shape, generator=gen, dtype=dtype)
                if step == 3:  # an exact zero and a NaN-free sign(0) case
                    g[0] = 0.0
                x.grad, y.grad = g.clone(), g.clone()
            a.step()
            b.step()
        for x, y in zip(ours, theirs):
            assert torch.equal(x, y), (rule, options)
        # without empty states: schedulefree's train() leaves one per param it visits
        sa, sb = ({k: v for k, v in o.state_dict()["state"].items() if v} for o in (a, b))
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].keys() == sb[k].keys()
            for name in sa[k]:
                assert torch.equal(sa[k][name], sb[k][name]), (rule, options, name)
