"""`python -m fastoptim` (the demo): it trains with every rule, prints the loss table, and the
fastoptim and torch.optim curves coincide; without torch it still trains with the array front."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastoptim import _registry, demo

try:
    import torch
except ImportError:
    torch = None

# class name -> whether torch.optim has it, for every registered rule
RULES = {info["torch_name"]: _registry.torch_class(rule, torch) is not None
         for rule, info in _registry.RULES.items()}
RUN_NAMES = ("fastoptim.torch", "torch.optim", "fastoptim arrays")


def _run(args: list[str], cwd: Path, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"{prelude}import sys; from fastoptim.__main__ import main; sys.exit(main({args!r}))"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=dict(os.environ),
    )


def _loss_rows(text: str, optimizer: str) -> list[list[float]]:
    """Loss checkpoints of every table row of ``optimizer``."""
    rows = []
    for line in text.splitlines():
        if re.search(rf"(^|\s){re.escape(optimizer)}\s", line):
            after = line.split(optimizer, 1)[1].split()
            losses = [float(v) for v in after if re.fullmatch(r"\d+\.\d{4}", v)]
            if losses:  # a table row, not a sentence naming the optimizer
                rows.append(losses)
    return rows


def _loss_table(text: str) -> dict[str, dict[str, list[float]]]:
    """The loss table: rule class name -> run name -> loss checkpoints."""
    table: dict[str, dict[str, list[float]]] = {}
    rule = None
    for line in text.splitlines():
        first = re.match(r"(\w+)\(", line)
        if first:
            rule = first.group(1)
            table[rule] = {}
        for name in RUN_NAMES:
            if rule is not None and re.search(rf"(^|\s){re.escape(name)}\s", line):
                losses = [float(v) for v in line.split(name, 1)[1].split()
                          if re.fullmatch(r"\d+\.\d{4}", v)]
                if losses:  # a table row, not a sentence naming the run
                    table[rule][name] = losses
    return table


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_demo_default_command_trains_every_rule_under_both(tmp_path: Path) -> None:
    """Every registered rule learns on both fronts, and as torch.optim does where torch has it."""
    proc = _run(["--steps", "40"], tmp_path)  # no command: the demo is the default
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    table = _loss_table(out)
    assert list(table) == list(RULES)
    for name, in_torch in RULES.items():
        runs = table[name]
        assert set(runs) == set(RUN_NAMES) if in_torch else set(runs) >= {"fastoptim arrays"}
        reference = runs["torch.optim"] if in_torch else runs["fastoptim arrays"]
        for losses in runs.values():
            assert len(losses) == len(reference) >= 5, name
            assert losses[-1] < losses[0], name  # it learns
            np.testing.assert_allclose(losses, reference, rtol=1e-3, atol=1e-3)
    worst = float(re.search(r"all rules and steps: ([0-9.e+-]+)", out).group(1))
    assert worst < 1e-4
    assert "step µs" in out
    assert "100.0%" in proc.stderr  # the progress bar


def test_demo_without_torch_uses_the_array_front(tmp_path: Path) -> None:
    proc = _run(
        ["demo", "--steps", "30", "--rules", "adam,rmsprop", "--no-progress"],
        tmp_path,
        prelude="import sys; sys.modules['torch'] = None; ",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the first line says what the comparison needs and the command to get it
    first, rest = proc.stdout.split("\n", 1)
    assert first == demo.NO_TORCH_LINE and "pip install torch==2.13.0" in first
    assert "torch not installed" in rest
    rows = _loss_rows(rest, "fastoptim arrays")
    assert len(rows) == 2 and all(r[-1] < r[0] for r in rows)
    assert "torch.optim" not in rest and "fastoptim.torch" not in rest
    assert proc.stderr == ""
    bf16 = _bf16_rows(proc.stdout)  # the bfloat16 comparison on the array front (ml_dtypes)
    if importlib.util.find_spec("ml_dtypes") is None:
        assert "bfloat16 comparison skipped" in proc.stdout
    else:
        assert list(bf16) == BF16_NAMES
        assert all(r[-2] < r[0] for r in bf16.values())


BF16_NAMES = [name for name, _, _ in demo.BF16_RUNS]


def _bf16_rows(text: str) -> dict[str, list[float]]:
    """Rows of the bfloat16 table: name -> loss checkpoints, then the last-10% mean."""
    rows = {}
    names = [*BF16_NAMES, demo.TORCH_BF16]
    for line in text.splitlines():
        for name in names:
            if line.startswith(name + "  "):
                tokens = line[len(name) :].split()
                rows[name] = [float(t) for t in tokens if re.fullmatch(r"\d+\.\d{4}", t)]
    return rows


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_demo_bf16_comparison(tmp_path: Path) -> None:
    """AdamW in float32 and on bfloat16 params (nearest-even, stochastic rounding, master
    weights) and with int8 moments, side by side; nearest-even is torch's fused bfloat16 AdamW,
    and the master-weight, stochastic and int8 runs stay near float32."""
    proc = _run(["--steps", "60", "--rules", "sgd", "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "bfloat16: AdamW(lr=0.001, weight_decay=0.01) with fastoptim.torch" in out
    rows = _bf16_rows(out)
    assert list(rows) == [*BF16_NAMES, demo.TORCH_BF16]
    marks = len(demo.checkpoints(60))
    for name, values in rows.items():
        assert len(values) == marks + 1, name
        assert values[marks - 1] < values[0], name  # it learns
    fp32 = rows["fp32"]
    for name in ("bf16 stochastic rounding", "bf16 + master weights", "fp32 + int8 moments",
                 "bf16 + master + int8 moments"):
        np.testing.assert_allclose(rows[name], fp32, atol=0.02, err_msg=name)
    assert rows["fp32 + int8 moments"] != fp32  # the moments were quantized
    np.testing.assert_allclose(rows["bf16 nearest-even"], rows[demo.TORCH_BF16], atol=1e-3)
    diff = re.search(r"bf16 nearest-even vs torch fused bf16: ([0-9.e+-]+)", out)
    assert diff and float(diff.group(1)) < 1e-3
    assert f"trained {3 + len(BF16_NAMES) + 1} runs" in out  # SGD under three, the bf16 runs


def test_demo_bf16_comparison_can_be_skipped(tmp_path: Path) -> None:
    proc = _run(["--steps", "10", "--rules", "sgd", "--no-bf16", "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bfloat16" not in proc.stdout and not _bf16_rows(proc.stdout)


def test_demo_rejects_unknown_rule(tmp_path: Path) -> None:
    proc = _run(["--rules", "no-such-rule"], tmp_path)
    assert proc.returncode == 2
    assert "no-such-rule" in proc.stderr


def test_numpy_model_gradients_match_finite_differences() -> None:
    task = demo.make_task(
        steps=1, dtype="float64", samples=64, inputs=5, hidden=7, classes=3, batch=16
    )
    params = [a.copy() for a in task.init]
    x, y = task.x[task.batches[0]], task.y[task.batches[0]]
    _, grads = demo.numpy_loss_and_grads(params, x, y)
    rng = np.random.default_rng(1)
    for p, g in zip(params, grads):
        assert g.shape == p.shape and g.dtype == p.dtype
        for flat in rng.choice(p.size, size=min(4, p.size), replace=False):
            idx = np.unravel_index(flat, p.shape)
            old = p[idx]
            p[idx] = old + 1e-6
            up, _ = demo.numpy_loss_and_grads(params, x, y)
            p[idx] = old - 1e-6
            down, _ = demo.numpy_loss_and_grads(params, x, y)
            p[idx] = old
            assert (up - down) / 2e-6 == pytest.approx(g[idx], rel=1e-5, abs=1e-8)


def test_task_is_deterministic_and_batches_cover_the_data() -> None:
    a, b = demo.make_task(steps=20), demo.make_task(steps=20)
    np.testing.assert_array_equal(a.x, b.x)
    for u, v in zip(a.init, b.init):
        np.testing.assert_array_equal(u, v)
    assert len(a.batches) == 20 and a.x.dtype == np.float32
    first_epoch = np.concatenate(a.batches[: len(a.x) // len(a.batches[0])])
    assert sorted(first_epoch) == list(range(len(a.x)))


def test_sparkline_and_checkpoints() -> None:
    assert demo.sparkline([3.0, 2.0, 1.0], width=3) == "█▅▁"
    assert demo.sparkline([1.0, 1.0]) == "▁▁"
    assert demo.checkpoints(300) == [1, 51, 101, 150, 200, 250, 300]
    assert demo.checkpoints(3) == [1, 2, 3]


PROGRESS_LINE = re.compile(r"\]\s+([0-9.]+)%.*\s run (\d+)/(\d+): (.+)$")


@pytest.mark.parametrize("ml_dtypes_missing", [False, True])
def test_demo_progress_label_names_the_run_in_progress(
    tmp_path: Path, ml_dtypes_missing: bool
) -> None:
    """On a pipe the bar prints a line per 10%: each line's label is the run the percentage
    falls in (run k of n covers (k-1)/n .. k/n of the steps), never the next one; a bfloat16
    comparison that cannot run (no torch, no ml_dtypes) is not counted, labelled or shown as
    done."""
    if not ml_dtypes_missing and importlib.util.find_spec("ml_dtypes") is None:
        pytest.skip("needs ml_dtypes")
    prelude = "import sys; sys.modules['torch'] = None; "
    if ml_dtypes_missing:
        prelude += "sys.modules['ml_dtypes'] = None; "
    proc = _run(["--steps", "20", "--rules", "sgd,adam,adamax"], tmp_path, prelude)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [m for m in map(PROGRESS_LINE.search, proc.stderr.splitlines()) if m]
    total = 3 + (0 if ml_dtypes_missing else len(demo.BF16_RUNS))
    assert len(lines) >= 10
    seen = []
    for m in lines:
        pct, k, n, what = float(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
        assert n == total
        assert (k - 1) / n * 100 - 0.1 <= pct <= k / n * 100 + 0.1, m.group(0)
        seen.append(what)
    assert seen[0] == "SGD fastoptim arrays" and lines[-1].group(1) == "100.0"
    if ml_dtypes_missing:
        assert not any("bfloat16" in w or "bf16" in w for w in seen)
        assert "bfloat16 comparison skipped: bfloat16 arrays need ml_dtypes" in proc.stdout
        assert "trained 3 runs" in proc.stdout
    else:
        assert seen[-1] == "AdamW " + demo.BF16_RUNS[-1][0]
        assert f"trained {total} runs" in proc.stdout
