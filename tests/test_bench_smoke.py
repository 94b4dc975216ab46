"""The benchmark: the CI smoke run (`python -m fastoptim bench --quick`) finishes and prints its
table, and the pieces it trusts (busy-round detection from /proc, medians, redo of busy rounds,
workload shapes) do what they claim. Nothing here asserts a timing."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastoptim import _registry, bench
from fastoptim.bench import (
    CpuSnapshot,
    ProgressBar,
    Settings,
    measurement,
    other_cpu_use,
    read_cpu_jiffies,
    read_own_jiffies,
    summarize,
)

try:
    import torch
except ImportError:
    torch = None

ON_LINUX_PROC = Path("/proc/stat").exists() and Path("/proc/self/stat").exists()


def _run(
    args: list[str], cwd: Path, timeout: float = 240, prelude: str = ""
) -> subprocess.CompletedProcess:
    code = f"{prelude}import sys; from fastoptim.__main__ import main; sys.exit(main({args!r}))"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


# ---- the smoke run -------------------------------------------------------------------------------


# The whole default smoke run (every rule and workload, both sections): about half a minute, so
# it runs with the exhaustive grids (CI); every session runs the bench without torch end to end.
@pytest.mark.exhaustive
def test_quick_bench_prints_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = _run(
        ["bench", "--quick", "--json", str(out), "--png", str(tmp_path / "c.png")], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for word in ("ms/step", "G elem/s", "% roofline", "fastoptim arrays", "roofline"):
        assert word in text
    rules = list(bench.RULES)  # the default: every rule
    assert rules == list(_registry.RULES)
    for rule in rules:
        assert f"\n{bench.RULES[rule][0]} " in text
    for workload in ("1x10k", "1x100k", "GPT-2 small", "tiny MLP"):
        assert workload in text
    assert "100.0%" in proc.stderr  # the progress bar reached its end

    doc = json.loads(out.read_text())
    assert doc["machine"]["cpu_model"]
    assert doc["date"] and doc["simd_level"] and doc["threads"] == [1, 2]
    assert doc["dtype"] == "float32"
    cells = doc["results"]
    assert len(cells) == len(rules) * 4 * 2
    assert {c["rule"] for c in cells} == set(rules)
    gpt2 = next(c for c in cells if c["workload"] == "gpt2")
    assert gpt2["tensors"] == 148
    for cell in cells:
        roof = cell["contenders"]["roofline"]
        assert len(roof["samples_ms"]) == 3 and roof["median_ms"] > 0
        assert roof["pct_of_roofline"] == pytest.approx(100.0)
        assert len(cell["rounds"]) >= 3
        unavailable = {}
        if torch is not None:
            expected = {"fastoptim.torch", "fastoptim.arrays", "roofline"}
            if _registry.torch_class(cell["rule"], torch) is None:  # said so, with the reason
                unavailable = dict.fromkeys(bench.TORCH_CONTENDERS, "torch.optim has no")
            else:
                expected |= {"torch.foreach", "torch.forloop"}
                if bench.torch_fused(cell["rule"], torch):
                    expected.add("torch.fused")
                assert cell["contenders"]["torch.foreach"]["gelem_per_s"] > 0
            assert set(cell["contenders"]) == expected, cell["errors"]
        assert cell["errors"].keys() == unavailable.keys(), cell["errors"]
        for kind, reason in unavailable.items():
            assert cell["errors"][kind].startswith(f"unavailable: {reason}")
    if torch is not None:
        assert doc["torch_version"] == torch.__version__
    # the default runs the mixed-precision section too (its own tests: test_bench_mixed.py)
    assert doc["sections"] == ["rules", "mixed"]
    mixed_cells = doc["mixed_precision"]["results"]
    assert len(mixed_cells) == len(bench.DEFAULT_LAYOUTS) * 2 * 2
    assert {c["workload"] for c in mixed_cells} == {"100m", "gpt2"}
    assert "Mixed precision summary" in text


# An end-to-end bench run with torch (10-30 s): with -m exhaustive (CI).
@pytest.mark.exhaustive
def test_bench_float64_variant_and_markdown(tmp_path: Path) -> None:
    proc = _run(
        [
            "bench",
            "--quick",
            "--rules",
            "adam,rmsprop,sgd",
            "--workloads",
            "4097,mlp",
            "--threads",
            "2",
            "--dtype",
            "float64",
            "--variant",
            "amsgrad,centered",
            "--variant",
            "nesterov",
            "--markdown",
            "--json",
            str(tmp_path / "b.json"),
            "--png",
            "",
            "--no-progress",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| Adam(amsgrad) |" in proc.stdout
    assert "| RMSprop(centered) |" in proc.stdout
    assert "| SGD(nesterov) |" in proc.stdout
    assert "float64" in proc.stdout
    assert proc.stderr.count("%") == 0  # --no-progress
    doc = json.loads((tmp_path / "b.json").read_text())
    adam = next(c for c in doc["results"] if c["rule"] == "adam")
    assert adam["options"]["amsgrad"] is True and adam["dtype"] == "float64"


def test_bench_without_torch_runs_array_front_and_roofline(tmp_path: Path) -> None:
    proc = _run(
        [
            "bench",
            "--quick",
            "--rules",
            "adam",
            "--workloads",
            "10m",
            "--threads",
            "1",
            "--json",
            str(tmp_path / "n.json"),
            "--png",
            "",
        ],
        tmp_path,
        prelude="import sys; sys.modules['torch'] = None; ",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch is not installed" in proc.stderr
    assert "fastoptim arrays" in proc.stdout and "roofline" in proc.stdout
    assert "torch foreach" not in proc.stdout and "fastoptim.torch" not in proc.stdout
    doc = json.loads((tmp_path / "n.json").read_text())
    assert doc["torch_version"] is None
    assert set(doc["results"][0]["contenders"]) == {"fastoptim.arrays", "roofline"}


# An end-to-end bench run with torch (10-30 s): with -m exhaustive (CI).
@pytest.mark.exhaustive
def test_quick_run_is_a_smoke_run_and_writes_no_file_by_default(tmp_path: Path) -> None:
    """--quick prints what it is and no verdict (no 'busy' flag, no '*' median, no target, no
    'NO'); without --json/--png no run writes a file (the current directory stays empty)."""
    proc = _run(
        ["bench", "--quick", "--rules", "adamw", "--workloads", "4097", "--threads", "1",
         "--layouts", "bf16", "--no-progress"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert bench.report.SMOKE_NOTE in out
    assert "busy" not in out and " NO" not in out and ">= " not in out and "*" not in out
    assert "Mixed precision summary\n" in out and "targets from issue 8" not in out
    assert "wrote" not in out
    assert list(tmp_path.iterdir()) == []


def test_full_run_defaults_write_no_file(tmp_path: Path) -> None:
    args = bench.build_parser().parse_args([])
    assert args.json == "" and args.png == ""
    # bench/run.py (the published runs) keeps its results folder as the default
    args = bench.build_parser(default_dir=tmp_path).parse_args([])
    assert args.json == str(tmp_path / "fastoptim-bench.json")
    assert args.png == str(tmp_path / "fastoptim-bench.png")


def test_verdicts_only_outside_smoke_runs() -> None:
    """The formatting decides: the same measured rows print 'NO', a target and 'busy' in a full
    run, and none of them in a smoke run."""
    rows = [
        {"check": "bf16-master: % of roofline", "workload": "gpt2", "workload_label": "GPT-2",
         "threads": 1, "fastoptim": "fastoptim.torch", "value": 50.0, "unit": "%",
         "target": 90, "met": False},
    ]
    full = bench.format_summary(rows)
    assert ">= 90%" in full and "50.0% NO" in full
    smoke = bench.format_summary(rows, smoke=True)
    assert "50.0%" in smoke and "NO" not in smoke and ">=" not in smoke
    entry = {"rounds_used": 3, "samples_ms": [1.0, 1.0, 1.0], "clean": False}
    assert bench.report.rounds_text(entry, smoke=False) == "3/3 busy"
    assert bench.report.rounds_text(entry, smoke=True) == "3/3"


def test_bench_rejects_unknown_names(tmp_path: Path) -> None:
    for args in (
        ["--rules", "no-such-rule"],
        ["--variant", "fancy"],
        ["--workloads", "huge"],
        ["--contenders", "jax"],
        ["--rules", "adagrad", "--variant", "amsgrad"],
    ):
        proc = _run(["bench", "--quick", "--json", "", *args], tmp_path)
        assert proc.returncode == 2, args
        assert proc.stderr.strip()


# ---- busy detection ------------------------------------------------------------------------------


def test_read_cpu_jiffies_parses_the_aggregate_line(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 40 1000 7 3 2 1 50 0\ncpu0 60 5 20 500 4 2 1 1 50 0\nintr 12345\n")
    busy, total = read_cpu_jiffies(str(stat))
    assert busy == 100 + 5 + 40 + 3 + 2 + 1  # user nice system irq softirq steal; guest is in user
    assert total == busy + 1000 + 7
    assert read_cpu_jiffies(str(tmp_path / "missing")) is None


def test_read_own_jiffies_handles_odd_process_names(tmp_path: Path) -> None:
    stat = tmp_path / "self_stat"
    # comm may contain spaces and parentheses; utime and stime are fields 14 and 15
    fields = ["S", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "1234", "56", "0", "0"]
    stat.write_text("4242 (my (odd) name) " + " ".join(fields) + "\n")
    assert read_own_jiffies(str(stat)) == 1234 + 56
    assert read_own_jiffies(str(tmp_path / "missing")) is None


def test_other_cpu_use_subtracts_own_time() -> None:
    before = CpuSnapshot(busy=1000, total=5000, own=300)
    # 200 busy jiffies machine-wide, 190 of them ours: quiet
    quiet = other_cpu_use(before, CpuSnapshot(busy=1200, total=5400, own=490))
    assert quiet.jiffies == 10 and quiet.capacity == 400 and not quiet.busy
    # 200 busy, 100 ours: someone else used 25% of the machine
    noisy = other_cpu_use(before, CpuSnapshot(busy=1200, total=5400, own=400))
    assert noisy.jiffies == 100 and noisy.busy and noisy.fraction == pytest.approx(0.25)
    # tick rounding slack: a couple of jiffies over a short interval is not activity
    short = other_cpu_use(before, CpuSnapshot(busy=1003, total=5010, own=301))
    assert short.jiffies == 2 and not short.busy
    # the threshold is a share of capacity
    assert not other_cpu_use(
        before, CpuSnapshot(busy=1200, total=5400, own=400), threshold=0.3
    ).busy


@pytest.mark.skipif(not ON_LINUX_PROC, reason="needs /proc")
def test_busy_detection_sees_another_process_and_not_itself() -> None:
    own_before = read_own_jiffies()
    start = time.process_time()
    while time.process_time() - start < 0.3:  # our own CPU work
        pass
    assert read_own_jiffies() - own_before >= 15

    before = bench.take_snapshot()
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass",
        ],
        timeout=120,
        check=False,
    )
    after = bench.take_snapshot()
    assert child.returncode == 0
    use = other_cpu_use(before, after)
    assert use.jiffies >= 25  # the child's 0.4 s of CPU (100 ticks/s), plus whatever else ran
    assert use.busy


# ---- medians and rounds --------------------------------------------------------------------------


def test_summarize_uses_clean_rounds() -> None:
    s = summarize([5.0, 1.0, 2.0, 100.0, 3.0], [False, False, False, True, False])
    assert s.median == 2.5 and s.used == 4 and s.clean
    odd = summarize([4.0, 1.0, 9.0], [False, False, False])
    assert odd.median == 4.0 and odd.used == 3
    all_busy = summarize([4.0, 8.0, 6.0], [True, True, True])
    assert all_busy.median == 6.0 and all_busy.used == 3 and not all_busy.clean
    assert summarize([], []).median is None
    with pytest.raises(ValueError):
        summarize([1.0], [])


def _fake_snapshots(
    monkeypatch: pytest.MonkeyPatch, busy_rounds: set[int], contenders: int = 2
) -> None:
    """take_snapshot() as measure_cell calls it (before a round, then after each contender's
    block): round i is busy when i is in busy_rounds, the other process showing up during the
    first block."""
    state = {"calls": 0, "busy": 0, "total": 0}

    def fake() -> CpuSnapshot:
        rnd, position = divmod(state["calls"], contenders + 1)
        state["calls"] += 1
        if position:
            state["total"] += 100
            state["busy"] += 80 if rnd in busy_rounds and position == 1 else 0
        return CpuSnapshot(busy=state["busy"], total=state["total"], own=0)

    monkeypatch.setattr(measurement, "take_snapshot", fake)


def _contenders() -> tuple[list[bench.Contender], dict[str, int]]:
    calls = {"a": 0, "b": 0}

    def make(name: str) -> bench.Contender:
        def step() -> None:
            calls[name] += 1

        return bench.Contender(name, step)

    return [make("a"), make("b")], calls


def _cell() -> bench.CellResult:
    return bench.CellResult(
        rule="adam",
        label="Adam",
        options={},
        workload="w",
        workload_label="w",
        elements=1000,
        tensors=1,
        threads=1,
        dtype="float32",
    )


def test_busy_rounds_are_redone_within_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_snapshots(monkeypatch, busy_rounds={0, 2})
    contenders, calls = _contenders()
    cell = _cell()
    bar = ProgressBar(4, enabled=False)
    bench.measure_cell(contenders, cell, Settings(rounds=3, warmup=1, min_time=0, max_redo=5), bar)
    assert [r["busy"] for r in cell.rounds] == [True, False, True, False, False]
    assert [r["kept"] for r in cell.rounds] == [False, True, False, True, True]
    for name in ("a", "b"):
        entry = cell.contenders[name]
        assert len(entry["samples_ms"]) == 3 and entry["clean"]
        assert entry["flagged"] == [False, False, False]
        assert entry["median_ms"] == pytest.approx(sorted(entry["samples_ms"])[1])
        assert calls[name] == 1 + 5  # warm-up, one step per round (min_time=0)
    assert [r["order"] for r in cell.rounds[:2]] == [["a", "b"], ["b", "a"]]  # interleaved
    assert cell.rounds[0]["other_cpu_jiffies_by_contender"] == {"a": 80, "b": 0}
    assert cell.rounds[2]["other_cpu_jiffies_by_contender"] == {"a": 80, "b": 0}
    assert cell.rounds[1]["other_cpu_jiffies"] == 0
    assert bar.done == bar.total


def test_busy_rounds_are_kept_and_flagged_when_the_budget_runs_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_snapshots(monkeypatch, busy_rounds={0, 1, 2})
    contenders, _ = _contenders()
    cell = _cell()
    bench.measure_cell(
        contenders,
        cell,
        Settings(rounds=3, warmup=1, min_time=0, max_redo=1),
        ProgressBar(4, enabled=False),
    )
    assert [r["kept"] for r in cell.rounds] == [False, True, True, True]
    entry = cell.contenders["a"]
    assert entry["flagged"] == [True, True, False] and entry["clean"]
    assert entry["median_ms"] == entry["samples_ms"][2]  # the only quiet round
    table = bench.format_table([cell])
    assert "1/3" in table


def test_failing_contender_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_snapshots(monkeypatch, busy_rounds=set())
    contenders, _ = _contenders()

    def broken() -> None:
        raise RuntimeError("no kernel")

    cell = _cell()
    bench.measure_cell(
        [*contenders, bench.Contender("torch.fused", broken)],
        cell,
        Settings(rounds=2, warmup=1, min_time=0, max_redo=0),
        ProgressBar(3, enabled=False),
    )
    assert "no kernel" in cell.errors["torch.fused"]
    assert set(cell.contenders) == {"a", "b"}
    assert "n/a" in bench.format_table([cell])


# ---- workloads, options, progress bar ------------------------------------------------------------


def test_workload_shapes() -> None:
    gpt2 = bench.make_workload("gpt2")
    assert len(gpt2.shapes) == 148 and gpt2.elements == 124_439_808
    assert gpt2.shapes[0] == (50257, 768) and gpt2.shapes[1] == (1024, 768)
    mlp = bench.make_workload("mlp")
    assert sorted(set(mlp.shapes)) == [(64,), (64, 64)]
    assert mlp.shapes.count((64,)) == 300 and mlp.shapes.count((64, 64)) == 100
    assert mlp.elements == 428_800
    assert bench.make_workload("100m").shapes == ((100_000_000,),)
    assert bench.make_workload("10m", scale=1e-3).shapes == ((10_000,),)
    small = bench.make_workload("gpt2", scale=1e-3)
    assert len(small.shapes) == 148 and small.elements < 200_000
    assert bench.parse_count("2.5k") == 2500
    for bad in ("0", "1.5", "lots", "-3m"):
        with pytest.raises(ValueError):
            bench.parse_count(bad)


def test_rule_options_apply_variants_to_their_rules() -> None:
    assert bench.rule_options("adam", ["amsgrad"]) == ("Adam(amsgrad)", {"amsgrad": True})
    assert bench.rule_options("sgd", ["amsgrad"]) == ("SGD", {"lr": 1e-3, "momentum": 0.9})
    label, options = bench.rule_options("rmsprop", ["centered", "momentum"])
    assert label == "RMSprop(centered,momentum)"
    assert options == {"centered": True, "momentum": 0.9}


def test_state_plan_matches_the_rule() -> None:
    assert bench.state_plan("adam", {})[0] == ["exp_avg", "exp_avg_sq"]
    assert bench.state_plan("adam", {"amsgrad": True})[0] == [
        "exp_avg",
        "exp_avg_sq",
        "max_exp_avg_sq",
    ]
    slots, init, _ = bench.state_plan("adagrad", {"initial_accumulator_value": 0.5})
    assert slots == ["sum"] and init == [0.5]
    assert bench.state_plan("sgd", {"momentum": 0.0})[0] == []


def test_progress_bar_on_a_pipe() -> None:
    stream = io.StringIO()
    bar = ProgressBar(20, stream=stream)
    for _ in range(20):
        bar.advance(1, label="x")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert 2 <= len(lines) <= 12  # one line per 10%, not one per update
    assert "100.0%" in lines[-1]
    assert math.isclose(bar.done, bar.total)


@pytest.mark.parametrize("rule", list(bench.RULES))
def test_contenders_step_the_shared_buffers(rule: str) -> None:
    """Every contender updates the one copy of params and state (what keeps a 100M workload
    at one copy): its optimizer state holds the shared buffers, and a step changes them."""
    options = bench.RULES[rule][1]
    slots, init, _ = bench.state_plan(rule, options)
    buffers = bench.Buffers([(37,), (5, 3)], "float32", torch)
    kinds = bench.CONTENDERS if torch is not None else ("fastoptim.arrays", "roofline")
    for kind in kinds:
        if kind in bench.TORCH_CONTENDERS and not (
            bench.torch_fused(rule, torch) if kind == "torch.fused"
            else _registry.torch_class(rule, torch)
        ):
            continue
        buffers.state_buffers(len(slots), init)
        before_params = [a.copy() for a in buffers.param_arrays]
        before_states = [[a.copy() for a in arrays] for arrays in buffers.state_arrays]
        contender = bench.build_contender(kind, rule, options, slots, buffers, threads=1)
        contender.step()
        for i, p in enumerate(buffers.param_arrays):
            assert not np.array_equal(p, before_params[i]), (kind, i)
        for k in range(len(slots)):
            for i, a in enumerate(buffers.state_arrays[k]):
                assert not np.array_equal(a, before_states[k][i]), (kind, slots[k], i)
        opt = contender.keep
        if kind == "fastoptim.arrays":
            for i in range(2):
                for k, slot in enumerate(slots):
                    assert opt.state[i][slot] is buffers.state_arrays[k][i]
        elif kind != "roofline":
            for i, p in enumerate(buffers.params):
                for k, slot in enumerate(slots):
                    assert opt.state[p][slot] is buffers.states[k][i], (kind, slot)


# The rules torch.optim has without a fused CPU kernel (torch 2.13: Adadelta, RMSprop, NAdam,
# RAdam, Adamax).
UNFUSED = [rule for rule in bench.RULES
           if _registry.torch_class(rule, torch) is not None and not bench.torch_fused(rule, torch)]


@pytest.mark.skipif(torch is None, reason="needs torch")
@pytest.mark.parametrize("rule", UNFUSED)
def test_torch_contenders_of_the_unfused_rules(rule: str) -> None:
    """No torch fused contender, and torch's foreach and for-loop ones step the shared buffers
    from state they made themselves (scalar state such as NAdam's mu_product included), each
    param with its own step counter."""
    slots = bench.state_plan(rule, bench.RULES[rule][1]).slots
    scalar_slots = {name for name, _ in _registry.RULES[rule]["scalar_slots"]}
    for variants in ([], ["weight_decay"], ["maximize"], ["decoupled"]):
        _, options = bench.rule_options(rule, variants)
        buffers = bench.Buffers([(37,), (5, 3)], "float32", torch)
        buffers.state_buffers(len(slots), [0.0] * len(slots))
        for kind in ("torch.foreach", "torch.forloop"):
            before = [a.copy() for a in buffers.param_arrays]
            contender = bench.build_contender(kind, rule, options, slots, buffers, threads=1)
            contender.step()
            contender.step()
            for p, was in zip(buffers.param_arrays, before):
                assert not np.array_equal(p, was), (kind, variants)
            for i, p in enumerate(buffers.params):
                state = contender.keep.state[p]
                assert float(state["step"]) == 3  # the probe's step, then two of its own
                assert scalar_slots <= state.keys()
                for k, slot in enumerate(slots):
                    assert state[slot] is buffers.states[k][i]
        with pytest.raises(RuntimeError, match="no fused"):
            bench.build_contender("torch.fused", rule, options, slots, buffers, threads=1)


@pytest.mark.skipif(torch is None, reason="needs torch")
def test_torch_contenders_of_a_rule_torch_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered rule torch.optim has no class for: each torch contender is unavailable, with
    the reason, and the bench's own contenders still run."""
    monkeypatch.setattr(_registry, "torch_class",
                        lambda rule, torch: None if rule == "adamax" else getattr(
                            torch.optim, _registry.RULES[rule]["torch_name"]))
    slots = bench.state_plan("adamax", {}).slots
    buffers = bench.Buffers([(37,)], "float32", torch)
    buffers.state_buffers(len(slots), [0.0] * len(slots))
    assert all(bench.contenders.listed(kind, "adamax", torch) for kind in bench.CONTENDERS)
    for kind in bench.TORCH_CONTENDERS:
        with pytest.raises(RuntimeError, match="^unavailable: torch.optim has no Adamax"):
            bench.build_contender(kind, "adamax", {}, slots, buffers, threads=1)
    for kind in ("fastoptim.torch", "fastoptim.arrays", "roofline"):
        bench.build_contender(kind, "adamax", {}, slots, buffers, threads=1).step()


def test_variants_pass_only_options_the_rule_has() -> None:
    for rule, info in _registry.RULES.items():
        for variant in bench.VARIANTS:
            label, options = bench.rule_options(rule, [variant])
            assert options.keys() <= info["defaults"].keys(), (rule, variant)
            applied = bench.applied_variants(rule, [variant]) == [variant]
            name = info["torch_name"]
            assert label == (f"{name}({variant})" if applied else name), (rule, variant)
    assert bench.rule_options("adagrad", ["amsgrad", "nesterov", "centered"]) == ("Adagrad", {})
    assert bench.rule_options("adamw", ["weight_decay"]) == ("AdamW", {})  # its default already
    assert bench.rule_options("sgd", ["no-momentum"]) == (
        "SGD(no-momentum)", {"lr": 1e-3, "momentum": 0.0})


BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_int8_scripts_print_their_rows() -> None:
    """bench/int8_step.py and bench/int8_contenders.py (the README's int8 rows) run on a tiny
    tensor and print one row per thread count and contender (a contender not installed says
    so instead)."""
    step = subprocess.run([sys.executable, str(BENCH_DIR / "int8_step.py"), "--elements", "8192",
                           "--threads", "1,2", "--steps", "2"],
                          capture_output=True, text=True, timeout=240)
    assert step.returncode == 0, step.stderr[-2000:]
    rows = [line.split() for line in step.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"] and all(row[-1].endswith("x") for row in rows)
    kinds = ["fastoptim.int8", "fastoptim.fp32", "bitsandbytes"]
    out = subprocess.run([sys.executable, str(BENCH_DIR / "int8_contenders.py"), "--workloads",
                          "8192", "--threads", "1", "--steps", "2", "--warmup", "1",
                          "--contenders", ",".join(kinds)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    for kind in kinds:
        line = next(line for line in out.stdout.splitlines()
                    if line.startswith("1x") and f" {kind} " in line)
        assert "not installed" in line or line.split()[-1].endswith("x"), line
