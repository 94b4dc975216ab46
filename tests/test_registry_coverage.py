"""Every rule the core registers (``_core.rules()``) is covered wherever rules are gone over: the
demo, the bench, the C++ example, the qemu check, the trajectory data, the option grids and the
README's table. The lists derive from the registry; what stays per rule (a learning rate, a
reference, option sets) is checked here to name registered rules and options they have, and a
rule missing from a per-rule table that has no default fails here."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from collections.abc import Iterable
from pathlib import Path

import _support
import pytest
from fastoptim import _registry, bench, demo

ROOT = Path(__file__).resolve().parents[1]
RULES = _registry.RULES  # name -> the core's description
TORCH_NAMES = {info["torch_name"] for info in RULES.values()}
BY_TORCH_NAME = {info["torch_name"]: info for info in RULES.values()}


def _has_options(rule: str, options: dict) -> bool:
    return options.keys() <= RULES[rule]["defaults"].keys()


def _check_rules(what: str, rules: Iterable[str], every_rule: bool = True,
                 names: set[str] = TORCH_NAMES) -> None:
    """The rules a table names are registered ones, and (``every_rule``) all of them."""
    rules = set(rules)
    assert rules <= names, f"{what} names rules the registry does not have: {sorted(rules - names)}"
    if every_rule:
        assert names <= rules, f"{what} lacks registered rules: {sorted(names - rules)}"


def _check_options(what: str, pairs: Iterable[tuple[str, dict]]) -> None:
    """Each (rule, options) of a table passes only options the rule's constructor takes (the
    registry's args); the rules are checked first."""
    for rule, options in pairs:
        unknown = options.keys() - {name for name, *_ in BY_TORCH_NAME[rule]["args"]}
        assert not unknown, f"{what}: {rule} has no option {', '.join(sorted(unknown))}"


def _test_module(name: str):
    """A test module of this directory (as pytest imports it: by its name)."""
    return importlib.import_module(name)


def _qemu_check():
    spec = importlib.util.spec_from_file_location("qemu_check", ROOT / "tests" / "qemu_check.py")
    qemu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qemu_check)
    return qemu_check


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
    qemu_check = _qemu_check()
    assert qemu_check.REFERENCES.keys() == RULES.keys()
    _check_rules("qemu_check.STEPS_OF", qemu_check.STEPS_OF, every_rule=False,
                 names=set(RULES))
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
    for what in ("GRIDS", "STATE_KEYS", "RICH"):
        _check_rules(f"_support.{what}", getattr(_support, what))
    _check_options("_support.RICH", _support.RICH.items())
    for rule, grid in _support.GRIDS.items():
        assert grid, f"{rule}: no option grid (tests/_support.py _grid)"
        _check_options("_support.GRIDS", ((rule, options) for options in grid))


def test_bad_hyperparameters_cover_every_rule() -> None:
    table = _test_module("test_validation").BAD_HYPERPARAMETERS
    _check_rules("test_validation.BAD_HYPERPARAMETERS", table)
    for rule, cases in table.items():
        assert cases, rule
        _check_options("test_validation.BAD_HYPERPARAMETERS", ((rule, kw) for kw in cases))


def test_torch_front_variants_cover_every_rule() -> None:
    pytest.importorskip("torch")
    module = _test_module("test_torch_front")
    _check_rules("test_torch_front.VARIANTS", (rule for rule, _ in module.VARIANTS))
    _check_rules("test_torch_front.EXTRA_VARIANTS", (rule for rule, _ in module.EXTRA_VARIANTS),
                 every_rule=False)
    _check_options("test_torch_front.VARIANTS", module.VARIANTS)
    for rule, rich in _support.RICH.items():  # each rule at its RICH lr, and RICH
        for options in (dict(lr=rich["lr"]), rich):
            assert (rule, options) in module.VARIANTS, f"VARIANTS lack {rule} {options}"
    assert all(v in module.VARIANTS for v in module.EXTRA_VARIANTS)
    ids = [module._variant_id(v) for v in module.VARIANTS]
    assert len(set(ids)) == len(ids), "a variant twice"
    _check_rules("test_torch_front.CYCLES_MOMENTUM", module.CYCLES_MOMENTUM, every_rule=False)
    for rule in module.CYCLES_MOMENTUM:
        assert {"momentum", "betas"} & BY_TORCH_NAME[rule]["defaults"].keys(), rule


def test_other_per_rule_tables_name_registered_rules_and_options() -> None:
    """Tables of every rule (test_clip's AMP options), and tables of some rules whose other
    rules take a default (test_int8's options and learning rates, test_mixed_precision's)."""
    pytest.importorskip("torch")
    amp = _test_module("test_clip").AMP_OPTS
    _check_rules("test_clip.AMP_OPTS", amp)
    _check_options("test_clip.AMP_OPTS", amp.items())
    int8 = _test_module("test_int8")
    _check_rules("test_int8.OPTIONS", int8.OPTIONS, every_rule=False)
    _check_options("test_int8.OPTIONS", int8.OPTIONS.items())
    for module in (int8, _test_module("test_mixed_precision")):
        _check_rules(f"{module.__name__}.LR", module.LR, every_rule=False)


def test_readme_rule_table_lists_every_rule() -> None:
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"^\| rule \| options \|\n\|---\|---\|\n((?:\|.*\n)+)", readme, re.MULTILINE)
    assert table, "README's rule table moved: update this test"
    rows = [line.split("|")[1].strip() for line in table.group(1).splitlines()]
    assert sorted(rows) == sorted(TORCH_NAMES)
