"""Layouts and element types of the torch front beyond contiguous real tensors: dense
non-contiguous layouts (channels_last, channels_last_3d, transposed, permuted) stepped in place
with state in the param's layout, gapped views staged, and complex params stepped as their
real view like torch — each exact to torch.optim.X(foreach=False)."""

from __future__ import annotations

import copy
import io

import pytest

torch = pytest.importorskip("torch")
import fastoptim.torch as fo_torch  # noqa: E402
from _support import REGISTRY, RICH, RULES, SCALAR_STATE_KEYS, reference_class  # noqa: E402


def _tol(dtype: torch.dtype) -> dict[str, float]:
    if dtype in (torch.float64, torch.complex128):
        return dict(rtol=1e-10, atol=0.0)
    return dict(rtol=1e-5, atol=1e-6)


LAYOUTS = {
    "channels_last": lambda t: t.reshape(4, 3, 5, 2).contiguous(
        memory_format=torch.channels_last),
    "channels_last_3d": lambda t: t.reshape(2, 3, 2, 5, 2).contiguous(
        memory_format=torch.channels_last_3d),
    "transposed": lambda t: t.reshape(12, 10).t(),
    "permuted": lambda t: t.reshape(3, 4, 10).permute(2, 0, 1),
}


def _grad_like(p: torch.Tensor, k: int) -> torch.Tensor:
    """A grad with the param's strides, as autograd makes for dense params."""
    g = torch.empty_like(p)
    g.copy_(torch.cos(torch.arange(p.numel(), dtype=p.dtype) * (0.37 + k)).reshape(p.shape))
    return g


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("rule", RULES)
def test_dense_layouts_step_in_place_like_torch(rule: str, layout: str) -> None:
    base = torch.linspace(-1, 1, 120, dtype=torch.float64)
    ref_p = torch.nn.Parameter(LAYOUTS[layout](base.clone()))
    fo_p = torch.nn.Parameter(LAYOUTS[layout](base.clone()))
    assert not fo_p.is_contiguous()
    ref = reference_class(rule)([ref_p], **RICH[rule])
    fo = getattr(fo_torch, rule)([fo_p], **RICH[rule])
    address, strides = fo_p.data_ptr(), fo_p.stride()
    for k in range(20):
        ref_p.grad, fo_p.grad = _grad_like(ref_p, k), _grad_like(fo_p, k)
        ref.step()
        fo.step()
    torch.testing.assert_close(fo_p.detach(), ref_p.detach(), **_tol(torch.float64))
    assert fo_p.data_ptr() == address and fo_p.stride() == strides
    plan = fo._fastoptim_plans[0]
    assert not plan.staged_params and not plan.staged_grads, "a dense layout was copied"
    for key, value in fo.state[fo_p].items():
        if key not in SCALAR_STATE_KEYS:
            assert value.stride() == strides, f"state '{key}' is not in the param's layout"
            torch.testing.assert_close(value, ref.state[ref_p][key], **_tol(torch.float64))


@pytest.mark.parametrize("rule", ["Adam", "SGD"])
def test_grad_in_another_layout_is_read_by_index(rule: str) -> None:
    """A contiguous grad for a channels_last param (or the reverse) pairs elements by index."""
    base = torch.linspace(-1, 1, 120, dtype=torch.float64)
    ref_p = torch.nn.Parameter(LAYOUTS["channels_last"](base.clone()))
    fo_p = torch.nn.Parameter(LAYOUTS["channels_last"](base.clone()))
    ref = reference_class(rule)([ref_p], **RICH[rule])
    fo = getattr(fo_torch, rule)([fo_p], **RICH[rule])
    for k in range(6):
        g = _grad_like(ref_p, k).contiguous()
        ref_p.grad, fo_p.grad = g.clone(), g.clone()
        ref.step()
        fo.step()
    torch.testing.assert_close(fo_p.detach(), ref_p.detach(), **_tol(torch.float64))


@pytest.mark.parametrize("rule", RULES)
def test_gapped_views_are_staged_and_exact(rule: str) -> None:
    ref_base = torch.linspace(-1, 1, 200, dtype=torch.float64).reshape(10, 20)
    fo_base = ref_base.clone()
    ref_p = torch.nn.Parameter(ref_base[:, ::2])
    fo_p = torch.nn.Parameter(fo_base[:, ::2])
    ref = reference_class(rule)([ref_p], **RICH[rule])
    fo = getattr(fo_torch, rule)([fo_p], **RICH[rule])
    for k in range(8):
        ref_p.grad, fo_p.grad = _grad_like(ref_p, k), _grad_like(fo_p, k)
        ref.step()
        fo.step()
    torch.testing.assert_close(fo_base, ref_base, **_tol(torch.float64))


def test_channels_last_cnn_trains_like_torch() -> None:
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                   torch.nn.Conv2d(8, 4, 3)).to(memory_format=torch.channels_last)

    ref_m, fo_m = model(), model()
    ref = torch.optim.Adam(ref_m.parameters(), lr=1e-2, foreach=False)
    fo = fo_torch.Adam(fo_m.parameters(), lr=1e-2)
    x = torch.randn(2, 3, 9, 9).to(memory_format=torch.channels_last)
    for _ in range(5):
        for m, opt in ((ref_m, ref), (fo_m, fo)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(fo_m.parameters(), ref_m.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not fo._fastoptim_plans[0].staged_params
    assert not fo._fastoptim_plans[0].staged_grads


# ---- complex params ----------------------------------------------------------------------------

def _complex_params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(5)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    return [torch.nn.Parameter(torch.complex(torch.randn(*s, generator=g, dtype=real),
                                             torch.randn(*s, generator=g, dtype=real)))
            for s in ((7,), (3, 5), (17,))]


def _complex_grads(ps, k: int) -> None:
    for i, p in enumerate(ps):
        n = p.numel()
        t = torch.arange(n, dtype=torch.float64) * (0.3 + k + i)
        p.grad = torch.complex(torch.cos(t), torch.sin(2 * t)).to(p.dtype).reshape(p.shape)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("rule", RULES)
def test_complex_params_like_torch(rule: str, dtype: torch.dtype) -> None:
    if not REGISTRY[rule]["complex_as_real"]:
        # Lion's sgn of a complex value is z / |z|, schedulefree's AdamW squares grad * grad:
        # a clear error, nothing changed
        fo_ps = _complex_params(dtype)
        before = [p.detach().clone() for p in fo_ps]
        fo = getattr(fo_torch, rule)(fo_ps, **RICH[rule])
        _complex_grads(fo_ps, 0)
        with pytest.raises(TypeError, match="param 0: complex params cannot be optimized by"):
            fo.step()
        assert all(torch.equal(p, b) for p, b in zip(fo_ps, before)) and not fo.state
        return
    ref_ps, fo_ps = _complex_params(dtype), _complex_params(dtype)
    ref = reference_class(rule)(ref_ps, **RICH[rule])
    fo = getattr(fo_torch, rule)(fo_ps, **RICH[rule])
    for k in range(50):
        _complex_grads(ref_ps, k)
        _complex_grads(fo_ps, k)
        ref.step()
        fo.step()
    for a, b in zip(fo_ps, ref_ps):
        torch.testing.assert_close(a.detach(), b.detach(), **_tol(dtype))
    for a, b in zip(fo_ps, ref_ps):
        for key, value in ref.state[b].items():
            assert fo.state[a][key].dtype == value.dtype
            torch.testing.assert_close(fo.state[a][key], value, **_tol(dtype))


@pytest.mark.parametrize("direction", ["torch->fastoptim", "fastoptim->torch"])
@pytest.mark.parametrize("rule", ["Adam", "RMSprop", "Adagrad", "SGD", "NAdam", "RAdam", "Adamax"])
def test_complex_state_dict_both_ways(rule: str, direction: str) -> None:
    dtype = torch.complex128
    first_ps, second_ps, ref_ps = (_complex_params(dtype) for _ in range(3))
    torch_cls, fo_cls = getattr(torch.optim, rule), getattr(fo_torch, rule)
    first_cls, second_cls = ((torch_cls, fo_cls) if direction == "torch->fastoptim"
                             else (fo_cls, torch_cls))
    kw = lambda cls: {"foreach": False} if cls is torch_cls else {}  # noqa: E731
    first = first_cls(first_ps, **RICH[rule], **kw(first_cls))
    ref = torch_cls(ref_ps, foreach=False, **RICH[rule])
    for k in range(5):
        _complex_grads(first_ps, k)
        _complex_grads(ref_ps, k)
        first.step()
        ref.step()
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = second_cls(second_ps, **RICH[rule], **kw(second_cls))
    second.load_state_dict(torch.load(buf))
    with torch.no_grad():
        for a, b in zip(second_ps, first_ps):
            a.copy_(b)
    for k in range(5, 10):
        _complex_grads(second_ps, k)
        _complex_grads(ref_ps, k)
        second.step()
        ref.step()
    for a, b in zip(second_ps, ref_ps):
        torch.testing.assert_close(a.detach(), b.detach(), **_tol(dtype))


def test_complex_deepcopy_steps_independently() -> None:
    ps = _complex_params(torch.complex64)
    opt = fo_torch.Adam(ps, lr=0.1)
    _complex_grads(ps, 0)
    opt.step()
    twin = copy.deepcopy(opt)
    qs = twin.param_groups[0]["params"]
    _complex_grads(qs, 1)
    before = [p.detach().clone() for p in ps]
    twin.step()
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, ps))


# ---- sparse grads ------------------------------------------------------------------------------

@pytest.mark.parametrize("rule,opts", [("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, momentum=0.9)),
                                       ("Adagrad", dict(lr=0.1, lr_decay=0.01))])
def test_sparse_grads_like_torch(rule: str, opts: dict) -> None:
    """nn.Embedding(sparse=True) with SGD and Adagrad, next to a dense layer in the same
    optimizer: exact to torch.optim.X(foreach=False), duplicate indices included."""
    def model():
        torch.manual_seed(0)
        return torch.nn.ModuleDict({"emb": torch.nn.Embedding(20, 4, sparse=True),
                                    "lin": torch.nn.Linear(4, 1)})

    ref_m, fo_m = model(), model()
    ref = reference_class(rule)(ref_m.parameters(), **opts)
    fo = getattr(fo_torch, rule)(fo_m.parameters(), **opts)
    for k in range(8):
        idx = torch.tensor([k % 20, (3 * k) % 20, k % 20, 7])  # duplicates coalesce
        for m, opt in ((ref_m, ref), (fo_m, fo)):
            opt.zero_grad()
            m["lin"](m["emb"](idx)).square().sum().backward()
            opt.step()
    for a, b in zip(fo_m.parameters(), ref_m.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule,opts", [("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, maximize=True)),
                                       ("Adagrad", dict(lr=0.1, lr_decay=0.01)),
                                       ("Adagrad", dict(lr=0.1, maximize=True,
                                                        initial_accumulator_value=0.2))])
def test_sparse_rows_are_fused_and_exact(rule: str, opts: dict, dtype: torch.dtype) -> None:
    """SGD without momentum and Adagrad step a sparse grad's rows in the fused kernel: only
    the touched rows change, duplicates are coalesced as torch does, same values as torch."""
    def emb():
        torch.manual_seed(1)
        return torch.nn.Embedding(50, 6, sparse=True).to(dtype)

    ref_m, fo_m = emb(), emb()
    ref = reference_class(rule)(ref_m.parameters(), **opts)
    fo = getattr(fo_torch, rule)(fo_m.parameters(), **opts)
    for k in range(10):
        idx = torch.tensor([(7 * k) % 50, (3 * k + 1) % 50, (7 * k) % 50, 49, 49])
        before = fo_m.weight.detach().clone()
        for m, opt in ((ref_m, ref), (fo_m, fo)):
            opt.zero_grad()
            (m(idx) * torch.linspace(-1, 1, 6, dtype=dtype)).sum().backward()
            opt.step()
        assert fo._fastoptim_plans[0].sparse, "the fused sparse path did not run"
        untouched = torch.ones(50, dtype=torch.bool)
        untouched[idx] = False
        assert torch.equal(fo_m.weight.detach()[untouched], before[untouched])
        tol = dict(rtol=1e-12, atol=0) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(fo_m.weight, ref_m.weight, **tol)
    for key, value in ref.state[ref_m.weight].items():
        torch.testing.assert_close(fo.state[fo_m.weight][key], value)


@pytest.mark.parametrize("opts", [dict(lr=0.1, momentum=0.9), dict(lr=0.1)])
def test_sparse_grads_under_gradscaler_like_torch(opts: dict) -> None:
    """GradScaler hands every fastoptim.torch step its scale and inf flag, on the fused sparse
    rows and on torch's own sparse path (SGD with momentum) alike."""
    results = []
    for cls, kw in ((torch.optim.SGD, {"foreach": False}), (fo_torch.SGD, {})):
        torch.manual_seed(1)
        emb = torch.nn.Embedding(30, 4, sparse=True)
        opt = cls(emb.parameters(), **opts, **kw)
        scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
        for k in range(6):
            opt.zero_grad()
            loss = emb(torch.tensor([k, 2 * k % 30, k])).square().sum()
            scaler.scale(loss).backward()
            if k == 3:
                emb.weight.grad._values()[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
        results.append(emb.weight.detach().clone())
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)
