"""`python -m harness run SUITE [--limit N] [--out DIR]` | `python -m harness list`

Runs a suite (a built-in name from harness/suites/ or a YAML file): every variant on every task, with a cache
so that a rerun computes only what changed. Writes predictions (a JSON line per item), results.json,
results.md and plots into harness-results/<suite>/ (or --out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a suite")
    run.add_argument("suite", help="a built-in suite name or a suite YAML file")
    run.add_argument("--limit", type=int, help="only the first N items of each task (a quick look)")
    run.add_argument("--out", help="where to write (default: harness-results/<suite name>)")
    commands.add_parser("list", help="built-in tasks, suites and variant kinds")
    args = parser.parse_args(argv)

    from harness.suite import builtin_suites, load_suite, run_suite
    from tljax.cache import enable_compilation_cache
    from harness.tasks import builtin_tasks
    from harness.variants import KINDS
    from tljax.errors import InputError

    enable_compilation_cache()  # most of a small suite's time on a CPU is compiling
    if args.command == "list":
        print("tasks:   " + ", ".join(builtin_tasks()))
        print("suites:  " + ", ".join(builtin_suites()))
        print("variant kinds: " + ", ".join(KINDS))
        return 0
    try:
        if args.limit is not None and args.limit < 1:
            raise InputError(f"--limit must be at least 1, got {args.limit}")
        suite = load_suite(args.suite)
        out = Path(args.out) if args.out else Path("harness-results") / suite.name
        runs = out / "runs" if args.out else Path("harness-results") / "runs"  # trained runs, shared by the suites
        rows = run_suite(suite, out, args.limit, say=lambda line: print(line, file=sys.stderr), runs_dir=runs)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((out / "results.md").read_text())
    print(f"written to {out}/: results.json, results.md, predictions/, plots/ ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
