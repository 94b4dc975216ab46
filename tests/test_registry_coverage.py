"""Every rule the core registers (``_core.rules()``) is covered wherever rules are gone over: the
demo, the bench, the C++ example, the qemu check, the trajectory data, the option grids and the
README's table. The lists derive from the registry; what stays per rule (a learning rate, a
reference, option sets) is checked here to name registered rules and options they have, and a
rule missing from a per-rule table that has no default fails here."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import _support
from fastoptim import _registry, bench, demo

ROOT = Path(__file__).resolve().parents[1]
RULES = _registry.RULES  # name -> the core's description
TORCH_NAMES = {info["torch_name"] for info in RULES.values()}


def _has_options(rule: str, options: dict) -> bool:
    return options.keys() <= RULES[rule]["defaults"].keys()


def test_demo_trains_every_rule() -> None:
    rules = demo.demo_rules()
    assert list(rules) == list(RULES)
    assert demo.DEMO_OPTIONS.keys() <= RULES.keys()
    for rule, (name, options) in rules.items():
        assert name == RULES[rule]["torch_name"] and _has_options(rule, options), rule


def test_bench_runs_every_rule() -> None:
    assert list(bench.RULES) == list(RULES)
    for rule, (name, options) in bench.RULES.items():
        assert name == RULES[rule]["torch_name"] and _has_options(rule, options), rule


def test_cpp_example_trains_every_rule() -> None:
    source = (ROOT / "cpp" / "examples" / "logistic_regression.cpp").read_text()
    assert "rules::for_each_rule" in source  # every rule of rules::All, not a list
    table = re.search(r"kLearningRates\[\] = \{(.*?)\};", source, re.DOTALL)
    assert table, "the example's learning-rate table moved: update this test"
    listed = re.findall(r'\{"(\w+)",', table.group(1))
    assert listed and set(listed) <= RULES.keys(), listed


def test_qemu_check_has_a_reference_for_every_rule() -> None:
    spec = importlib.util.spec_from_file_location("qemu_check", ROOT / "tests" / "qemu_check.py")
    qemu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qemu_check)
    assert qemu_check.REFERENCES.keys() == RULES.keys()
    for rule, (name, _, _, option_sets) in qemu_check.registered_rules().items():
        assert name == RULES[rule]["torch_name"]
        assert option_sets and all(_has_options(rule, o) for o in option_sets), rule


def test_trajectory_data_has_every_rule_in_both_dtypes() -> None:
    data = json.loads((ROOT / "tests" / "data" / "reference_trajectories.json").read_text())
    covered = {(c["rule"], c["optimizer"], c["dtype"]) for c in data["cases"]}
    for rule, info in RULES.items():
        for dtype in ("float32", "float64"):
            assert (rule, info["torch_name"], dtype) in covered, (rule, dtype)
    assert {rule for rule, _, _ in covered} <= RULES.keys()


def test_option_grids_cover_every_rule() -> None:
    for table in (_support.GRIDS, _support.STATE_KEYS, _support.RICH):
        assert table.keys() == TORCH_NAMES
    for name, grid in _support.GRIDS.items():
        assert grid, name


def test_readme_rule_table_lists_every_rule() -> None:
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"^\| rule \| options \|\n\|---\|---\|\n((?:\|.*\n)+)", readme, re.MULTILINE)
    assert table, "README's rule table moved: update this test"
    rows = [line.split("|")[1].strip() for line in table.group(1).splitlines()]
    assert sorted(rows) == sorted(TORCH_NAMES)
