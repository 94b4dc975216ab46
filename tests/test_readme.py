"""What a new user reads is what runs: every fenced code block of the READMEs is either run here
exactly as written (```python blocks, each in a fresh interpreter) or carries a marker comment on
the line right before it that says why not and names what covers it:

    <!-- excerpt: <why it is not run here>; covered by <path>::<name> -->

where <path> is a file of the repository and <name> a test function in it (a .py file) or a
string it contains (a CI script's stage). The README's C++ blocks are compiled and run against
the installed package by .ci/cpp.sh (stage "README C++ blocks"); here they are only checked to be
whole programs."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READMES = ("README.md", "bench/README.md", "cpp/src/kernels/README.md")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
MARKER = re.compile(r"^<!--\s*excerpt:\s*(?P<why>.*?);\s*covered by\s+(?P<what>\S+?)::(?P<name>.+?)\s*-->$")
BLOCK_TIMEOUT = 120  # seconds; the blocks are meant to take a few


@dataclass(frozen=True)
class Block:
    file: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # the line right before the fence when it is an HTML comment

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}:{self.lang or 'text'}"


def blocks_of(text: str, file: str) -> list[Block]:
    """Every fenced block: its language, code and the comment line right before it."""
    lines = text.splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        end = i + 1
        while end < len(lines) and not lines[end].startswith(fence[0] * len(fence)):
            end += 1
        if end == len(lines):
            raise ValueError(f"{file}:{i + 1}: code block never closed")
        before = lines[i - 1].strip() if i > 0 else ""
        marker = before if before.startswith("<!--") else None
        out.append(Block(file, i + 1, lang, "\n".join(lines[i + 1 : end]) + "\n", marker))
        i = end + 1
    return out


def marker_problem(block: Block, root: Path = ROOT) -> str | None:
    """None when the block runs here or its marker names something that exists."""
    if block.marker is None:
        if block.lang == "python":
            return None
        return (f"{block.id}: only ```python blocks run here; mark this one "
                "'<!-- excerpt: why; covered by path::test -->' on the line before it")
    m = MARKER.match(block.marker)
    if not m:
        return f"{block.id}: malformed marker {block.marker!r}"
    path = root / m.group("what")
    name = m.group("name")
    if not path.is_file():
        return f"{block.id}: marker names {m.group('what')}, which does not exist"
    text = path.read_text()
    if path.suffix == ".py":
        tree = ast.parse(text)
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if name not in names or not name.startswith("test_"):
            return f"{block.id}: marker names test {name}, not in {m.group('what')}"
    elif name not in text:
        return f"{block.id}: marker names {name!r}, not found in {m.group('what')}"
    return None


def all_blocks() -> list[Block]:
    return [b for f in READMES for b in blocks_of((ROOT / f).read_text(), f)]


BLOCKS = all_blocks()
RUNNABLE = [b for b in BLOCKS if b.lang == "python" and b.marker is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_readme_has_blocks_and_python_ones_run() -> None:
    assert {b.file for b in BLOCKS} >= {"README.md", "bench/README.md"}
    assert len(RUNNABLE) >= 5


def test_every_block_runs_or_names_what_covers_it() -> None:
    problems = [p for b in BLOCKS if (p := marker_problem(b))]
    assert not problems, "\n".join(problems)


def test_cpp_blocks_are_whole_programs() -> None:
    """.ci/cpp.sh compiles and runs each ```cpp block of README.md on its own."""
    cpp = [b for b in BLOCKS if b.file == "README.md" and b.lang == "cpp"]
    assert cpp
    for b in cpp:
        assert "#include <fastoptim/" in b.code and re.search(r"\bint main\(", b.code), b.id
        assert b.marker and "README C++ blocks" in b.marker, b.id
    assert "README C++ blocks" in (ROOT / ".ci/cpp.sh").read_text()


def _block_param(block: Block):
    # A distributed block starts a gloo group (8-10 s with torch): the default run leaves it to
    # -m exhaustive (CI), next to tests/test_distributed.py, which checks the same setups'
    # results against torch.optim by default.
    distributed = "init_process_group" in block.code
    return pytest.param(block, id=block.id, marks=pytest.mark.exhaustive if distributed else ())


@pytest.mark.parametrize("block", [_block_param(b) for b in RUNNABLE])
def test_python_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    """In a fresh interpreter, in an empty directory. The distributed blocks say to start them
    with torchrun: they get torchrun's environment for one process (a gloo group of one)."""
    if "torch" in block.code:
        pytest.importorskip("torch")
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
    )
    proc = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"{block.id}\n{block.code}\n{proc.stderr[-3000:]}"


# ---- the checks can fail -----------------------------------------------------------------------


def test_an_unmarked_shell_block_or_a_dead_marker_is_reported() -> None:
    text = "\n".join([
        "```bash", "pip install .", "```",
        "<!-- excerpt: slow; covered by tests/test_readme.py::test_no_such_test -->",
        "```bash", "make", "```",
        "<!-- excerpt: slow; covered by tests/test_readme.py::"
        "test_every_block_runs_or_names_what_covers_it -->",
        "```sh", "make", "```",
        "<!-- excerpt: slow; covered by .ci/cpp.sh::README C++ blocks -->",
        "```cpp", "int main() {}", "```",
        "<!-- excerpt: slow; covered by .ci/nope.sh::x -->",
        "```", "x", "```",
        "```python", "print(1)", "```",
    ])
    blocks = blocks_of(text, "X.md")
    assert [b.lang for b in blocks] == ["bash", "bash", "sh", "cpp", "", "python"]
    problems = [marker_problem(b) for b in blocks]
    assert problems[0] and "only ```python blocks run here" in problems[0]
    assert problems[1] and "test_no_such_test" in problems[1]
    assert problems[2] is None and problems[3] is None and problems[5] is None
    assert problems[4] and "does not exist" in problems[4]


def test_a_broken_python_block_fails(tmp_path: Path) -> None:
    """What test_python_block_runs_as_written sees when a README edit breaks an example: the
    GradScaler fragment as it once was (no imports, no model)."""
    broken = 'scaler = torch.amp.GradScaler("cpu")\nfor x, y in batches:\n    pass\n'
    proc = subprocess.run([sys.executable, "-c", broken], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "NameError" in proc.stderr
