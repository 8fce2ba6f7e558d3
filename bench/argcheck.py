"""Check that a bench script's command line parses, without running it (bench/gpu.sh --dry-run).

    python bench/argcheck.py bench/decode.py --device cuda --backend cuda-graph

Runs the script as ``__main__`` with ``argparse.ArgumentParser.parse_args`` replaced by one that parses
(argparse's own checks: unknown options, choices, types) and then stops with exit status 0; a command
line that does not parse exits 2 with argparse's message, as the script would. The script's imports run.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path


class Parsed(Exception):
    """Raised by the replaced ``parse_args`` once the arguments parsed."""


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: argcheck.py SCRIPT [ARGS...]")
    script = Path(sys.argv[1])
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        parsed = original(self, args, namespace)
        print(f"{script}: arguments parse: {' '.join(sys.argv[1:])}")
        raise Parsed(parsed)

    argparse.ArgumentParser.parse_args = parse_only
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path.insert(0, str(script.resolve().parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except Parsed:
        return
    raise SystemExit(f"{script}: it never parsed its arguments")


if __name__ == "__main__":
    main()
