"""fastoptim's OpenMP next to torch's in one process.

Linux wheels carry their own (auditwheel-renamed) libgomp and torch carries its own, so a process
may hold two OpenMP runtimes, each with a pool of worker threads per thread that starts a parallel
region. Each scenario runs in a fresh interpreter (import order and thread settings are
process-wide) and checks that:

* both import orders work and steps from several Python threads at once (array front, torch
  front, and torch.optim's own OpenMP kernels beside them) give exactly the serial results;
* the process does not oversubscribe: the OS thread count (/proc/self/task) never exceeds what
  the configured counts allow. A Python thread that runs a parallel region leads a team of at
  most N-1 extra threads per runtime (N: that runtime's configured count), so with W workers
  plus the main thread the bound is: threads at start + sampler + W + (W+1)(N_fastoptim-1) +
  (W+1)(N_torch-1); the pools of finished workers are released afterwards;
* fastoptim.get_num_threads() follows torch.get_num_threads() when torch is loaded,
  OMP_NUM_THREADS when it is not, and set_num_threads() overrides both; a step really uses that
  many threads (it adds exactly N-1 OS threads the first time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="counts OS threads through /proc/self/task"
)

TIMEOUT = 180  # seconds per child process; a deadlock between runtimes fails, not hangs


def run_child(code: str, **env: str | None) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    child_env = {k: v for k, v in os.environ.items() if k not in env}
    child_env.update({k: v for k, v in env.items() if v is not None})
    child_env.pop("FASTOPTIM_SIMD", None)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=child_env,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    assert result.returncode == 0, f"child failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- concurrent steps, both import orders ----------------------------------------------------

CONCURRENT = """
import json, os, sys, threading, time

ORDER, TORCH_THREADS, FO_THREADS, WORKERS = {order!r}, {torch_threads}, {fo_threads}, {workers}

def count():
    return len(os.listdir("/proc/self/task"))

if ORDER == "torch-first":
    import torch
    import fastoptim
else:
    import fastoptim
    import torch
import numpy as np
import fastoptim.torch as fot

torch.set_num_threads(TORCH_THREADS)
if FO_THREADS:
    fastoptim.set_num_threads(FO_THREADS)
n_fo, n_torch = fastoptim.get_num_threads(), torch.get_num_threads()
N, STEPS, REPEATS = 100_000, 4, 2  # N: above fastoptim's serial threshold and torch's grain

def array_front(seed):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(N).astype(np.float32), rng.standard_normal(777)]
    opt = fastoptim.Adam(params, lr=1e-2, weight_decay=0.1, amsgrad=True)
    for _ in range(STEPS):
        opt.step([rng.standard_normal(p.size).astype(p.dtype) for p in params])
    return [p.copy() for p in params]

def torch_job(seed, make_optimizer):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(N, generator=gen, requires_grad=True),
              torch.randn(33, 17, dtype=torch.float64, generator=gen, requires_grad=True)]
    opt = make_optimizer(params)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, dtype=p.dtype, generator=gen)
        opt.step()
    return [p.detach().numpy().copy() for p in params]

JOBS = {{
    "array front": array_front,
    "torch front": lambda s: torch_job(s, lambda ps: fot.AdamW(ps, lr=1e-2)),
    "torch.optim": lambda s: torch_job(s, lambda ps: torch.optim.RMSprop(
        ps, lr=1e-2, momentum=0.9, foreach=False)),
}}
plan = [(list(JOBS)[i % len(JOBS)], i) for i in range(WORKERS)]

base = count()
expected = {{(kind, seed): JOBS[kind](seed) for kind, seed in plan}}  # serial, main thread
bound = base + 1 + WORKERS + (WORKERS + 1) * (n_fo - 1) + (WORKERS + 1) * (n_torch - 1)

peak, stop, mismatches = count(), threading.Event(), []
def sample():
    global peak
    while not stop.is_set():
        peak = max(peak, count())
        time.sleep(0.0005)

barrier = threading.Barrier(WORKERS)
def work(kind, seed):
    barrier.wait()
    for r in range(REPEATS):
        got = JOBS[kind](seed)
        if not all(np.array_equal(a, b) for a, b in zip(got, expected[(kind, seed)])):
            mismatches.append(f"{{kind}} seed {{seed}} repeat {{r}}")

sampler = threading.Thread(target=sample)
sampler.start()
workers = [threading.Thread(target=work, args=job) for job in plan]
for w in workers:
    w.start()
for w in workers:
    w.join()
stop.set()
sampler.join()
settled = base + (n_fo - 1) + (n_torch - 1)  # main thread's pools only
deadline = time.monotonic() + 5
while count() > settled and time.monotonic() < deadline:
    time.sleep(0.01)
runtimes = sorted({{line.split()[-1].rsplit("/", 1)[-1] for line in open("/proc/self/maps")
                   if "libgomp" in line or "libomp" in line or "libiomp" in line}})
print(json.dumps(dict(base=base, peak=peak, bound=bound, after=count(), settled=settled,
                      n_fo=n_fo, n_torch=n_torch, mismatches=mismatches, runtimes=runtimes,
                      fo_runtime=fastoptim.openmp_runtime())))
"""


# Every thread setup and both import orders run by default (4-5 s each, a fresh interpreter with
# torch); the other pairings of the two run with -m exhaustive (CI).
CONCURRENT_CASES = [
    pytest.param(order, torch_threads, fo_threads, id=f"{setup}-{order}",
                 marks=() if (setup, order) in {("torch1-default", "torch-first"),
                                                 ("torch2-default", "fastoptim-first"),
                                                 ("torch1-fastoptim3", "fastoptim-first")}
                 else pytest.mark.exhaustive)
    for setup, torch_threads, fo_threads in [("torch1-default", 1, None),
                                             ("torch2-default", 2, None),
                                             ("torch1-fastoptim3", 1, 3)]
    for order in ["torch-first", "fastoptim-first"]
]


@pytest.mark.parametrize(("order", "torch_threads", "fo_threads"), CONCURRENT_CASES)
def test_concurrent_steps_exact_and_not_oversubscribed(
    order: str, torch_threads: int, fo_threads: int | None
) -> None:
    pytest.importorskip("torch")
    workers = 4
    code = CONCURRENT.format(
        order=order, torch_threads=torch_threads, fo_threads=fo_threads, workers=workers
    )
    out = run_child(code, OMP_NUM_THREADS=None)
    assert out["n_torch"] == torch_threads
    assert out["n_fo"] == (fo_threads or torch_threads), "default must follow torch"
    assert out["mismatches"] == [], "concurrent steps differ from the serial run"
    assert out["peak"] <= out["bound"], f"oversubscribed: {out}"
    assert out["after"] <= out["settled"], f"worker threads' OpenMP pools not released: {out}"
    if sys.platform.startswith("linux") and not out["fo_runtime"].startswith("none"):
        # GCC's libgomp on Linux: LLVM's libomp next to Intel's libiomp5 is the mix that breaks.
        assert "libgomp" in os.path.basename(out["fo_runtime"]), out["fo_runtime"]


# ---- the default thread count, and set_num_threads ------------------------------------------

STEP_THREADS = """
import json, os, sys
IMPORT_TORCH, TORCH_THREADS, SET = {import_torch}, {torch_threads}, {set_threads}

def count():
    return len(os.listdir("/proc/self/task"))

if IMPORT_TORCH:
    import torch
    torch.set_num_threads(TORCH_THREADS)
import numpy as np
import fastoptim

out = dict(torch_loaded="torch" in sys.modules)
if SET:
    fastoptim.set_num_threads(SET)
out["num_threads"] = fastoptim.get_num_threads()
params = [np.zeros(200_000, np.float32)]
opt = fastoptim.SGD(params, lr=0.1, momentum=0.9)
grads = [np.ones(200_000, np.float32)]
before = count()
opt.step(grads)  # the first parallel region of this process creates the pool
out["added"] = count() - before
opt.step(grads)
out["added_again"] = count() - before
out["param"] = float(params[0][0])
errors = []
for bad in (0, -1, 1.5, True, "2"):
    try:
        fastoptim.set_num_threads(bad)
    except ValueError:
        errors.append(repr(bad))
out["rejected"] = errors
out["num_threads_after_rejects"] = fastoptim.get_num_threads()
print(json.dumps(out))
"""


def step_threads(
    *, import_torch: bool, torch_threads: int = 1, set_threads: int | None = None, omp: str | None
) -> dict[str, Any]:
    code = STEP_THREADS.format(
        import_torch=import_torch, torch_threads=torch_threads, set_threads=set_threads
    )
    return run_child(code, OMP_NUM_THREADS=omp)


@pytest.mark.parametrize("omp", ["1", "3"])
def test_default_honours_omp_num_threads_without_torch(omp: str) -> None:
    out = step_threads(import_torch=False, omp=omp)
    assert not out["torch_loaded"], "fastoptim must not import torch by itself"
    assert out["num_threads"] == int(omp)
    assert out["added"] == int(omp) - 1  # a team of exactly OMP_NUM_THREADS threads
    assert out["added_again"] == out["added"]  # the pool is reused, not regrown
    assert out["param"] == pytest.approx(-0.1 - 0.1 * 1.9)


@pytest.mark.parametrize("torch_threads", [1, 3])
def test_default_follows_torch_when_loaded(torch_threads: int) -> None:
    pytest.importorskip("torch")
    # OMP_NUM_THREADS=2 would say otherwise: torch's setting wins once torch is loaded.
    out = step_threads(import_torch=True, torch_threads=torch_threads, omp="2")
    assert out["torch_loaded"]
    assert out["num_threads"] == torch_threads
    assert out["added"] == torch_threads - 1
    assert out["added_again"] == out["added"]


@pytest.mark.parametrize("import_torch", [False, True], ids=["no-torch", "torch"])
@pytest.mark.parametrize("threads", [1, 3])
def test_set_num_threads_overrides_default(import_torch: bool, threads: int) -> None:
    if import_torch:
        pytest.importorskip("torch")
    out = step_threads(import_torch=import_torch, torch_threads=2, set_threads=threads, omp="2")
    assert out["num_threads"] == threads
    assert out["added"] == threads - 1
    assert out["added_again"] == out["added"]
    assert out["rejected"] == ["0", "-1", "1.5", "True", "'2'"]
    assert out["num_threads_after_rejects"] == threads  # a rejected value changes nothing


# ---- fork after torch's parallel region --------------------------------------------------------

FORK_AFTER_TORCH = """
import json, os, signal, time
import torch          # first: fastoptim then shares torch's libgomp (one soname, one runtime)
import numpy as np
import fastoptim

torch.set_num_threads(2)
a = torch.randn(2000, 2000)
torch.mm(a, a)        # a parallel region of the shared runtime; fastoptim has run none
out = dict(runtime=fastoptim.openmp_runtime(), openmp=fastoptim._core.openmp_enabled())

def trained(threads):
    fastoptim.set_num_threads(threads)
    w = np.linspace(-1, 1, 300_000, dtype=np.float32)
    g = np.cos(np.arange(w.size, dtype=np.float32))
    opt = fastoptim.Adam([w], lr=0.1)
    for _ in range(2):
        opt.step([g])
    return w

read, write = os.pipe()
pid = os.fork()
if pid == 0:  # the child: 2 threads asked for, then 1; report, leave without cleanup
    try:
        two = trained(2)
        one = trained(1)
        os.write(write, b"1" if np.array_equal(one, two) else b"0")
    finally:
        os._exit(0)
os.close(write)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.05)
else:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    status = None
out["finished"] = status is not None
out["answer"] = os.read(read, 1).decode()
print(json.dumps(out))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_after_a_torch_parallel_region_steps_on_one_thread() -> None:
    """The parent ran only torch's OpenMP (never a fastoptim step) before the fork; in the child a
    2-thread fastoptim step must not try to start the inherited runtime's dead pool: it runs on
    one thread and gives the 1-thread result."""
    pytest.importorskip("torch")
    out = run_child(FORK_AFTER_TORCH, OMP_NUM_THREADS=None)
    if not out["openmp"]:
        pytest.skip("built without OpenMP")
    assert out["finished"], f"the step in the forked child hung ({out['runtime']})"
    assert out["answer"] == "1", "the child's 2-thread step differs from its 1-thread step"
