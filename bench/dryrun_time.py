#!/usr/bin/env python
"""Wall time of a Snakemake dry run of the paper DAG (config validation, plan, DAG).

A benchmark, not a test. Runs ``snakemake -n all_tables --config scale=paper --quiet``
``--repeats`` times from the repository root and prints each wall time, the median and
the spread. Nothing is executed or written by a dry run (``--quiet`` drops the job list).

Example (about 20 s on 2 CPU cores):
    .venv/bin/python bench/dryrun_time.py --out bench/dryrun_cpu.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _timing as T

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="paper")
    p.add_argument("--target", default="all_tables")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, help="write the raw figures as JSON here")
    args = p.parse_args(argv)
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
    if snakemake is None:
        raise SystemExit("snakemake not found next to this Python or on PATH")
    command = [snakemake, "-n", args.target, "--config", f"scale={args.scale}", "--quiet"]
    seconds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
        seconds.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    median = statistics.median(seconds)
    print(f"# cpu={T.cpu_model()}  {' '.join(command[1:])}")
    print(
        f"wall seconds: {', '.join(f'{s:.2f}' for s in seconds)}; median {median:.2f} "
        f"[{min(seconds):.2f}-{max(seconds):.2f}]"
    )
    meta = {"cpu": T.cpu_model(), "command": " ".join(["snakemake", *command[1:]]), "load_average": os.getloadavg()[0]}
    T.write_json(args.out, {"meta": meta, "seconds": seconds, "median": median})
    return 0


if __name__ == "__main__":
    sys.exit(main())
