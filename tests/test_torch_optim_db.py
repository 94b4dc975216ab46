"""PyTorch's own optimizer test inputs, with fastoptim's classes substituted for torch's.

torch ships the option sets and the bad-input cases its test_optim.py runs for every optimizer
(``torch.testing._internal.common_optimizers.optim_db``). For the fused rules, every option
set (float32, float64 and, where torch supports it, complex64) must give the same trajectory and
state as ``torch.optim.X(foreach=False)``, and every error case the same exception type and
message, at the same moment (construction or step).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
common_optimizers = pytest.importorskip(
    "torch.testing._internal.common_optimizers", reason="needs torch's test helpers (expecttest)")
import fastoptim.torch as fo_torch  # noqa: E402
from fastoptim import _registry  # noqa: E402

OptimizerErrorEnum = common_optimizers.OptimizerErrorEnum
INFOS = {info.name: info for info in common_optimizers.optim_db}
# every registered rule torch.optim has (each must be in optim_db)
RULES = tuple(info["torch_name"] for rule, info in _registry.RULES.items()
              if _registry.torch_class(rule, torch) is not None)


def _inputs() -> list:
    cases = []
    for rule in RULES:
        info = INFOS[rule]
        dtypes = [torch.float32, torch.float64] + ([torch.complex64] if info.supports_complex
                                                   else [])
        for dtype in dtypes:
            for i, optim_input in enumerate(info.optim_inputs_func(device="cpu", dtype=dtype)):
                cases.append(pytest.param(rule, dtype, i, id=f"{rule}-{dtype}-{optim_input.desc}"))
    return cases


def _errors() -> list:
    cases = []
    for rule in RULES:
        errors = INFOS[rule].optim_error_inputs_func(device="cpu", dtype=torch.float32)
        for i, error in enumerate(errors):
            cases.append(pytest.param(rule, i, id=f"{rule}-{error.optimizer_error_input.desc}"))
    return cases


def _params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(7)
    real = {torch.complex64: torch.float32}.get(dtype, dtype)
    out = []
    for shape in ((5, 3), (17,), (1,), (4, 4)):
        t = torch.randn(*shape, generator=g, dtype=real)
        if dtype.is_complex:
            t = torch.complex(t, torch.randn(*shape, generator=g, dtype=real))
        out.append(torch.nn.Parameter(t))
    return out


def _set_grads(params: list[torch.nn.Parameter], step: int) -> None:
    for i, p in enumerate(params):
        if (step + i) % 5 == 4:
            p.grad = None  # a param without grad this step
            continue
        t = torch.arange(p.numel(), dtype=torch.float64) * (0.21 + 0.7 * step + i)
        grad = torch.sin(t) if not p.is_complex() else torch.complex(torch.sin(t), torch.cos(t))
        p.grad = grad.to(p.dtype).reshape(p.shape)


def _groups(params: list[torch.nn.Parameter], optim_input) -> list:
    if optim_input.params is None:
        return params
    groups = [dict(group) for group in optim_input.params]
    for k, group in enumerate(groups):
        group["params"] = params[k::len(groups)]
    return groups


def _kwargs(optim_input) -> dict:
    kwargs = dict(optim_input.kwargs)
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}


@pytest.mark.parametrize("rule,dtype,index", _inputs())
def test_torch_option_sets_match(rule: str, dtype: torch.dtype, index: int) -> None:
    optim_input = INFOS[rule].optim_inputs_func(device="cpu", dtype=dtype)[index]
    ref_params, our_params = _params(dtype), _params(dtype)
    ref_kwargs = {**_kwargs(optim_input), "foreach": False}
    ref_kwargs.pop("fused", None)
    ref = getattr(torch.optim, rule)(_groups(ref_params, optim_input), **ref_kwargs)
    ours = getattr(fo_torch, rule)(_groups(our_params, optim_input), **_kwargs(optim_input))
    for step in range(12):
        _set_grads(ref_params, step)
        _set_grads(our_params, step)
        ref.step()
        ours.step()
    tol = dict(rtol=1e-10, atol=0.0) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for a, b in zip(our_params, ref_params):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)
    for a, b in zip(our_params, ref_params):
        assert ours.state[a].keys() == ref.state[b].keys()
        for key, value in ref.state[b].items():
            torch.testing.assert_close(ours.state[a][key], value, **tol)


@pytest.mark.parametrize("rule,index", _errors())
def test_torch_error_cases_match(rule: str, index: int) -> None:
    error = INFOS[rule].optim_error_inputs_func(device="cpu", dtype=torch.float32)[index]
    optim_input = error.optimizer_error_input
    cls = getattr(fo_torch, rule)
    expect = (pytest.warns if issubclass(error.error_type, Warning) else pytest.raises)(
        error.error_type, match=error.error_regex)
    if error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with expect:
            cls(optim_input.params, **optim_input.kwargs)
    else:
        optimizer = cls(optim_input.params, **optim_input.kwargs)
        with expect:
            optimizer.step()
