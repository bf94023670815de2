"""Index of all tables of one scale: one Markdown page with every table in order."""

from __future__ import annotations

import argparse
from pathlib import Path

from sslaug.io import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("tables", nargs="+", type=Path, help="the tables' Markdown files")
    args = parser.parse_args(argv)
    parts = [f"# All paper tables at scale {args.scale}\n"]
    for path in args.tables:
        text = path.read_text()
        parts.append(text.replace("\n# ", "\n## ").replace("# ", "## ", 1))
    atomic_write_text(args.out, "\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
