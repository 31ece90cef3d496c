"""Time to the first result: a one-cell sweep end to end, against a bare ``ray.init()``. Prints, asserts nothing.

Each variant is a fresh process, timed from its start to its exit, run alternately (a, b, c, d,
a, b, ...) so that a change in the machine's load hits each alike; three repeats, min and median,
with the load average (``uptime``) before and after.

- ``ray.init()``: ``python -c "import ray; ray.init(); ray.shutdown()"``, the floor with Ray;
- ``run --ray``: ``gradsweep run one-cell.yaml --ray`` (embedded local Ray, started in the
  background while the spec is planned and the results folder checked);
- ``run``: ``gradsweep run one-cell.yaml``: a sweep estimated at a few seconds of work runs
  in-process (the output says so);
- ``run --local``: the in-process executor, asked for.

Targets (issue 15): ``run --ray`` within ``ray.init()`` + 2 s; ``run`` under 5 s.

    python benchmarks/bench_startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_CELL = """\
name: one-cell
problem: {kind: toy_mlp, dim: 8, depth: 3, data: {batch_size: 256, batches: 1}}
estimator: {kind: cdg, epsilon: 0.1}
measure: {lrs: [0.01, 0.1, 1.0]}
seeds: [0]
device: cpu
"""


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADSWEEP_")}
    env["RAY_DISABLE_IMPORT_WARNING"] = "1"
    print(f"before: {_uptime()}")
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "one-cell.yaml"
        spec.write_text(ONE_CELL)
        variants = {
            "ray.init()": lambda i: [sys.executable, "-c", "import ray; ray.init(); ray.shutdown()"],
            "run --ray": lambda i: [sys.executable, "-m", "gradsweep", "run", str(spec), "--results", f"{tmp}/ray{i}", "--ray"],
            "run": lambda i: [sys.executable, "-m", "gradsweep", "run", str(spec), "--results", f"{tmp}/auto{i}"],
            "run --local": lambda i: [sys.executable, "-m", "gradsweep", "run", str(spec), "--results", f"{tmp}/local{i}", "--local"],
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(args.repeats):
            for name, argv in variants.items():
                t0 = time.perf_counter()
                proc = subprocess.run(argv(i), env=env, capture_output=True, text=True)
                times[name].append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{proc.stderr}")
                if name == "run" and i == 0:
                    said = [line for line in proc.stderr.splitlines() if "in this process" in line]
                    print(f"`run` said: {said[0] if said else '(nothing about running in-process)'}")
    floor = min(times["ray.init()"])
    print(f"{'variant':<14}{'min s':>8}{'median s':>10}{'min - ray.init() s':>20}   runs")
    for name, values in times.items():
        extra = f"{min(values) - floor:>20.1f}" if name != "ray.init()" else f"{'':>20}"
        print(f"{name:<14}{min(values):>8.1f}{statistics.median(values):>10.1f}{extra}   "
              + ", ".join(f"{v:.1f}" for v in values))
    print(f"after: {_uptime()}")


if __name__ == "__main__":
    main()
