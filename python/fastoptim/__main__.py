"""python -m fastoptim [demo | bench | info] — see `python -m fastoptim --help`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and not argv[0].startswith("-") else "demo"
    if argv[:1] in (["-h"], ["--help"]) and command == "demo" and not argv[1:]:
        print(__doc__.strip())
        print("  demo   train a small model with each rule, fastoptim vs torch.optim (default)")
        print("  bench  time every rule and workload against torch; table, JSON and chart")
        print("  info   SIMD level, available levels, OpenMP runtime and thread count")
    if command == "demo":
        from .demo import main as run
    elif command == "bench":
        from .bench import main as run
    elif command == "info":
        from .info import main as run
    else:
        print(f"unknown command {command!r}; expected demo, bench or info", file=sys.stderr)
        return 2
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
