"""Run the fastoptim benchmark from a checkout: ``python bench/run.py [options]``.

A thin wrapper around ``python -m fastoptim bench`` (see ``--help``) that writes its JSON and
chart under ``bench/results/``. It needs fastoptim installed (``pip install .``): the compiled
core is not in the source tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from fastoptim.bench import main
except ImportError as exc:  # pragma: no cover - a message, not a feature
    sys.exit(f"cannot import fastoptim.bench ({exc}); install the package first: pip install .")

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_dir=Path(__file__).resolve().parent / "results"))
