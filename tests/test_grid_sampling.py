"""The default run's sample of each grid (tests/conftest.py, _support.pairwise_sample): within each
rule, every pair of factor values that occurs in the grid (option values with the registry's
defaults filled in, dtype, front, SIMD level, layout, ...) occurs in a sampled point, and every
rule of the core's registry is in every grid. The points left out run under -m exhaustive."""

from __future__ import annotations

import itertools

import pytest
from _support import REGISTRY, pairwise_sample
from conftest import GRID_POINTS

# The grids the suite marks; a module collected without its grid means the mark was lost.
MARKED = {
    "test_exactness": {"test_option_grid", "test_option_grid_array_front_torch_tensors",
                       "test_option_grid_torch_front_reused_grads",
                       "test_param_groups_lr_changes_none_grads", "test_sizes"},
    "test_simd_threads": {"test_levels_bit_identical", "test_threads_bit_identical"},
    "test_torch_front": {"test_non_contiguous_params_and_grads",
                         "test_checkpoint_continues_on_same_trajectory"},
    "test_mixed_precision": {"test_a_write_to_the_param_becomes_the_master"},
}


def _pairs_by_rule(points: list[dict]) -> dict:
    """{rule: {((factor, value), (factor, value)), ...}}, written out here independently of
    _support.factor_pairs so that a sampler that misses a pair cannot hide behind it."""
    out: dict = {}
    for point in points:
        pairs = out.setdefault(point.get("rule"), set())
        for a, b in itertools.combinations(sorted(point), 2):
            pairs.add(((a, point[a]), (b, point[b])))
    return out


def test_pairwise_sample_of_a_known_grid() -> None:
    """Four two-valued factors and a three-valued one (48 points, 5 of them infeasible): the
    sample covers every feasible pair, is far smaller, and is the same every time."""
    points = [dict(rule=r, a=a, b=b, c=c, d=d)
              for r, a, b, c, d in itertools.product("xyz", (0, 1), (0, 1), (0, 1), (0, 1))
              if not (r == "z" and a == 1 and b == 1)]
    sample = pairwise_sample(points)
    assert sample == pairwise_sample(points)
    assert len(sample) <= 3 * 6
    assert _pairs_by_rule([points[i] for i in sample]) == _pairs_by_rule(points)
    # infeasible pairs are not asked for: rule z never has a=1 with b=1
    assert (("a", 1), ("b", 1)) not in _pairs_by_rule(points)["z"]


def test_every_grid_sample_covers_every_pair(request: pytest.FixtureRequest) -> None:
    grids = request.config.stash.get(GRID_POINTS, {})
    if not grids:
        pytest.skip("no grid test collected in this session")
    collected = {module for module, _ in grids}
    for module in collected & set(MARKED):
        assert MARKED[module] <= {name for m, name in grids if m == module}, \
            f"{module}: a grid test is no longer marked @pytest.mark.grid"
    for (module, name), (points, sample) in grids.items():
        assert len(sample) < len(points), f"{module}::{name}: nothing left out of the sample"
        want = _pairs_by_rule(points)
        got = _pairs_by_rule([points[i] for i in sorted(sample)])
        if any("rule" in p for p in points):
            assert set(want) == set(REGISTRY), f"{module}::{name}: rules {sorted(want)}"
        for rule, pairs in want.items():
            missing = sorted(pairs - got.get(rule, set()), key=repr)
            assert not missing, f"{module}::{name} [{rule}]: not sampled: {missing[:5]}"
