"""Generate tests/data/reference_trajectories.json: short trajectories of each rule's reference
(torch.optim with foreach=False, or for a rule torch lacks the op-by-op reference of
tests/references.py) that the C++ tests (cpp/tests/test_trajectories.cpp) and the Python tests
compare against, so the two fronts cannot drift from the references, or from each other.

Run from anywhere (needs torch; the output is checked in, the tests never need torch to read it):

    python tests/data/make_reference.py            # rewrites reference_trajectories.json
    python tests/data/make_reference.py --check    # exit 1 if the checked-in file is stale

File format (JSON, version 1)
-----------------------------
{
  "format": "fastoptim-reference-trajectories",
  "version": 1,
  "torch_version": "2.13.0",          # torch that produced the numbers
  "cases": [ case, ... ]
}

case = {
  "name":      "adam_amsgrad_float32",   # unique
  "optimizer": "Adam",                   # the rule's class name (_core.rules()' torch_name):
                                         #   torch.optim's, or tests/references.py's for a
                                         #   rule torch lacks (Lion)
  "rule":      "adam",                   # the rule's name (_core.rules()' name); every
                                         #   registered rule has cases in both dtypes
  "dtype":     "float32",                # or "float64": params, grads and state
  "options":   {"lr": 0.01, "betas": [0.9, 0.999], ...},
               # keyword arguments of the reference's constructor, with its names
               # (betas as a list); torch's foreach=False is implied and not listed
  "shapes":    [[5], [2, 3]],            # one entry per param
  "params":    [[...], [...]],           # initial values, flattened row-major
  "steps": [                             # one entry per optimizer step, in order
    {
      "lr":     0.01,                    # param_groups[0]["lr"] in effect for this step
      "grads":  [[...], null],           # per param, flattened; null: p.grad is None (skipped)
      "params": [[...], [...]]           # every param after the step, flattened
    }, ...
  ],
  "final_state": [                       # torch's state_dict()["state"][i] after the last step
    {"step": 10, "exp_avg": [...], "exp_avg_sq": [...]},   # buffers flattened; "step" a number;
    ...                                  # keys whose value is None are left out; {} if no state
  ]
}

Besides "step", NAdam has one more per-param scalar, "mu_product" (the product of its momentum
coefficients mu_1 ... mu_t): a number, torch's 0-d float32 value written exactly (torch keeps it
in float32 for float64 params too, and rounds each product to float32). Every other state entry
is a buffer shaped like its param.

Every number is written with Python's repr (shortest round-trip decimal), so float64 values
parse back exactly and float32 values are exact float32 values written as decimals (parse as
double, then cast to float, and the value is exact).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: references.py
import references  # noqa: E402

from fastoptim import _registry  # noqa: E402

OUT = Path(__file__).with_name("reference_trajectories.json")
# the registry's rule name of each class name
RULE_NAMES = {info["torch_name"]: name for name, info in _registry.RULES.items()}
STEPS = 10
SHAPES = ([5], [2, 3])
SKIP = {(3, 1)}  # (step, param): grad None


def lr_at(step: int, base: float) -> float:
    return base if step < 6 else base * 0.5  # a mid-run lr change, as a scheduler makes


CONFIGS: list[tuple[str, str, dict]] = [
    ("SGD", "plain", dict(lr=0.1)),
    ("SGD", "momentum_dampening_wd", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", "nesterov_maximize", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adagrad", "plain", dict(lr=0.1)),
    ("Adagrad", "all", dict(lr=0.1, lr_decay=0.01, weight_decay=0.05,
                            initial_accumulator_value=0.1, eps=1e-6, maximize=True)),
    ("Adadelta", "plain", dict()),
    ("Adadelta", "all", dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.05, maximize=True)),
    ("RMSprop", "plain", dict(lr=0.01)),
    ("RMSprop", "momentum_centered_wd", dict(lr=0.01, alpha=0.9, momentum=0.8, centered=True,
                                             weight_decay=0.01)),
    ("RMSprop", "centered_maximize", dict(lr=0.01, centered=True, maximize=True, eps=1e-6)),
    ("Adam", "plain", dict(lr=0.01)),
    ("Adam", "amsgrad_wd", dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.05, amsgrad=True)),
    ("Adam", "maximize_decoupled", dict(lr=0.01, maximize=True, decoupled_weight_decay=True,
                                        weight_decay=0.1)),
    ("AdamW", "plain", dict(lr=0.01)),
    ("AdamW", "amsgrad_maximize", dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True)),
    # New configurations go at the end: a case's random numbers come from its index here.
    ("NAdam", "plain", dict()),
    ("NAdam", "l2_maximize", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05,
                                  momentum_decay=0.01, maximize=True)),
    ("NAdam", "decoupled_momentum_decay", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.1,
                                               decoupled_weight_decay=True)),
    # RAdam: beta2 0.999 and 0.9 are unrectified for steps 1-5 and rectified from step 6 (of the
    # 10); beta2 0.6 (rho_inf 4) never is
    ("RAdam", "plain", dict(lr=0.01)),
    ("RAdam", "switch_l2_maximize", dict(lr=0.01, betas=(0.9, 0.9), eps=1e-6, weight_decay=0.05,
                                         maximize=True)),
    ("RAdam", "unrectified_decoupled", dict(lr=0.01, betas=(0.5, 0.6), weight_decay=0.1,
                                            decoupled_weight_decay=True)),
    ("Adamax", "plain", dict()),
    ("Adamax", "all", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.05, maximize=True)),
    ("Lion", "plain", dict(lr=0.01)),
    ("Lion", "wd_betas", dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.5)),
    ("AdEMAMix", "plain", dict(lr=0.01)),
    # both warm-ups end within the 10 steps (alpha at step 5, beta3 at step 8)
    ("AdEMAMix", "warmups_betas", dict(lr=0.01, betas=(0.5, 0.9, 0.99), alpha=2.0, t_alpha=5,
                                       t_beta3=8, eps=1e-3, weight_decay=0.1)),
    # Schedule-Free: train() before the first step; warm-up across the lr change at step 6
    ("AdamWScheduleFree", "plain", dict(lr=0.01)),
    ("AdamWScheduleFree", "warmup_r_wd", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6,
                                              weight_decay=0.05, warmup_steps=8, r=0.5,
                                              weight_lr_power=1.0)),
    ("SGDScheduleFree", "plain", dict(lr=0.1)),
    ("SGDScheduleFree", "warmup_r_wd", dict(lr=0.2, momentum=0.5, weight_decay=0.05,
                                            warmup_steps=8, r=1.0, weight_lr_power=0.0)),
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def flat(t: torch.Tensor) -> list[float]:
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def make_case(index: int, optimizer: str, label: str, options: dict, dtype_name: str) -> dict:
    dtype = DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(1000 + index)
    params = [
        torch.nn.Parameter((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype))
        for shape in SHAPES
    ]
    initial = [flat(p) for p in params]
    if hasattr(references, optimizer):  # a rule torch lacks
        opt = getattr(references, optimizer)(params, **options)
        if hasattr(opt, "train"):  # Schedule-Free starts in eval mode, where a step raises
            opt.train()
    else:
        opt = getattr(torch.optim, optimizer)(params, foreach=False, **options)
    base_lr = opt.param_groups[0]["lr"]
    steps = []
    for step in range(STEPS):
        lr = lr_at(step, base_lr)
        opt.param_groups[0]["lr"] = lr
        grads: list[list[float] | None] = []
        for i, p in enumerate(params):
            g = (torch.randn(p.shape, generator=gen, dtype=torch.float64)).to(dtype)
            if (step, i) in SKIP:
                p.grad = None
                grads.append(None)
            else:
                p.grad = g
                grads.append(flat(g))
        opt.step()
        steps.append({"lr": lr, "grads": grads, "params": [flat(p) for p in params]})
    state = opt.state_dict()["state"]
    final_state = []
    for i in range(len(params)):
        entry = {}
        for key, value in state.get(i, {}).items():
            if value is None:
                continue
            if key == "step":
                entry[key] = int(float(value))
            elif key == "mu_product":
                entry[key] = float(value)
            else:
                entry[key] = flat(value)
        final_state.append(entry)
    json_options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
    return {
        "name": f"{optimizer.lower()}_{label}_{dtype_name}",
        "optimizer": optimizer,
        "rule": RULE_NAMES[optimizer],
        "dtype": dtype_name,
        "options": json_options,
        "shapes": [list(s) for s in SHAPES],
        "params": initial,
        "steps": steps,
        "final_state": final_state,
    }


def build() -> str:
    cases = []
    for index, (optimizer, label, options) in enumerate(CONFIGS):
        for dtype_name in DTYPES:
            cases.append(make_case(index, optimizer, label, options, dtype_name))
    header = {
        "format": "fastoptim-reference-trajectories",
        "version": 1,
        "torch_version": torch.__version__.split("+")[0],
    }
    # One case per line: compact, and a regenerated file diffs case by case.
    head = json.dumps(header)[:-1]
    body = ",\n".join(json.dumps(case) for case in cases)
    return f'{head}, "cases": [\n{body}\n]}}\n'



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the checked-in file")
    args = parser.parse_args()
    text = build()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: rerun {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
