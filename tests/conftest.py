from __future__ import annotations

import os

import fastoptim
import pytest
from _support import grid_factors, pairwise_sample
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


def _train_at_construction() -> None:
    """Schedule-Free's optimizers start in eval mode, where a step raises (as schedulefree's):
    the rule-generic tests drive every optimizer as a training loop does, after train(). In the
    test process, each class of a rule with a transform to the stepping mode (its target True:
    train) runs it at construction: fastoptim's two fronts and tests/references.py (not the
    official classes). tests/test_schedule_free.py checks the eval-mode start on optimizers
    given back to it by eval(), which is what a fresh one is."""
    import functools

    classes = [fastoptim] + ([__import__("fastoptim.torch").torch] if torch else [])
    if torch:
        import references

        classes.append(references)
    for info in fastoptim._core.rules():
        names = [name for name, _, to in info["transforms"] if to]
        for module in classes if names else ():
            cls = getattr(module, info["torch_name"])
            init = cls.__init__

            @functools.wraps(init)
            def __init__(self, *args, __init=init, __names=names, **kwargs) -> None:  # noqa: N807
                __init(self, *args, **kwargs)
                for name in __names:
                    getattr(self, name)()

            cls.__init__ = __init__


_train_at_construction()


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


# ---- grids: a pairwise sample by default, the rest under -m exhaustive ---------------------------

# Per grid test (module, function): the factors of every collected point, and the sampled indices.
GRID_POINTS = pytest.StashKey[dict]()
# (sampled, total) points, as the pytest-xdist workers report them to the controller.
GRID_COUNTS = pytest.StashKey[tuple]()


@pytest.hookimpl(tryfirst=True)  # before -m/-k deselect, so that -m sees the marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    grids: dict[tuple[str, str], list[pytest.Item]] = {}
    for item in items:
        if item.get_closest_marker("grid") is not None and hasattr(item, "callspec"):
            grids.setdefault((item.module.__name__, item.originalname), []).append(item)
    # A point named on the command line (test_x.py::test_f[id]) runs, sampled or not.
    named = {arg.split("::", 1)[1] for arg in config.args if "::" in arg and "[" in arg}
    config.stash[GRID_POINTS] = {}
    for key, group in grids.items():
        points = [grid_factors(item.callspec.params) for item in group]
        sample = set(pairwise_sample(points))
        config.stash[GRID_POINTS][key] = (points, sample)
        for i, item in enumerate(group):
            if i not in sample and item.nodeid.split("::", 1)[1] not in named:
                item.add_marker(pytest.mark.exhaustive)


def _grid_counts(config: pytest.Config) -> tuple[int, int]:
    grids = config.stash.get(GRID_POINTS, {})
    return (sum(len(sample) for _, sample in grids.values()),
            sum(len(points) for points, _ in grids.values()))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: tell the controller
        session.config.workeroutput["grid_counts"] = _grid_counts(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """-n auto: a worker per core, at most 4 (each imports torch: about 0.7 GB)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # pytest-xdist's controller
    counts = getattr(node, "workeroutput", {}).get("grid_counts")
    if counts:
        node.config.stash[GRID_COUNTS] = tuple(counts)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    sampled, total = config.stash.get(GRID_COUNTS, None) or _grid_counts(config)
    if total > sampled and config.option.markexpr == "not exhaustive":
        terminalreporter.write_line(
            f"grids: ran the pairwise sample, {sampled} of {total} points; "
            f"the other {total - sampled}: pytest -m exhaustive")
