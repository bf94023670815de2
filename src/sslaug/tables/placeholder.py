"""Placeholder entry point for a cell whose method or protocol is not implemented yet.

Writes ``{"status": "not_implemented", "reason": ...}`` and no metric, so the table
shows the gap and never a number.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sslaug.io import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reason", required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    atomic_write_json(args.out, {"status": "not_implemented", "reason": args.reason, "metrics": {}})
    print(f"placeholder written: {args.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
