"""`wardgate-agent`: the node agent's entry point (the WireGuard data plane arrives with issue 7)."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wardgate-agent", description="Wardgate node agent")
    parser.add_argument("--version", action="version", version=f"wardgate-agent {version('wardgate')}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
