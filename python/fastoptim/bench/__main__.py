"""python -m fastoptim.bench [options]: the same as python -m fastoptim bench."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
