from __future__ import annotations

import fastoptim
import pytest
from fastoptim import _runtime

LEVELS = fastoptim.available_simd_levels()

# The suite runs many tiny torch models; intra-op threads only add fork/join (and, on a busy
# 2-core machine, spinning) to them. Thread splits of fastoptim's own kernels are tested with
# explicit set_num_threads() calls.
try:
    import torch
except ImportError:  # wheels for platforms without torch: the array-front tests still run
    torch = None
    collect_ignore = ["test_exactness.py", "test_torch_front.py"]
else:
    torch.set_num_threads(1)


@pytest.fixture(params=LEVELS)
def simd_level(request: pytest.FixtureRequest) -> str:
    """Runs the test once per SIMD level this CPU and build support; restores the level."""
    previous = fastoptim.simd_level()
    fastoptim.set_simd_level(request.param)
    assert fastoptim.simd_level() == request.param
    try:
        yield request.param
    finally:
        fastoptim.set_simd_level(previous)


@pytest.fixture
def restore_threads() -> None:
    """Lets a test call fastoptim.set_num_threads; puts the previous setting back."""
    pinned = _runtime._num_threads
    before = fastoptim.get_num_threads()
    try:
        yield
    finally:
        fastoptim.set_num_threads(before)
        _runtime._num_threads = pinned


@pytest.fixture(autouse=True)
def _level_and_threads_unchanged() -> None:
    """No test may leak a SIMD level or thread count into the next one."""
    level, threads = fastoptim.simd_level(), fastoptim.get_num_threads()
    yield
    assert fastoptim.simd_level() == level
    assert fastoptim.get_num_threads() == threads
