"""`wardgate`: the user's client. Login, connect and status arrive with client-based access (issue 7)."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wardgate", description="Wardgate user client")
    parser.add_argument("--version", action="version", version=f"wardgate {version('wardgate')}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
