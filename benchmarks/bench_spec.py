"""How fast the spec layer expands a large sweep: prints cells/s (no assertions).

    .venv/bin/python benchmarks/bench_spec.py [--cells-per-seed 10000] [--seeds 20]

The spec is the notes' toy sweep blown up: dims x NES sigma x samples x batch sizes x a CDG and
an STE union entry, crossed with the seeds. ``gradsweep plan`` on 200,000 cells must stay under
5 s in total, so load_spec (parse + validate + expand + canonicalise + ids) should take well
under 3 s for it.
"""

from __future__ import annotations

import argparse
import time

from gradsweep.spec import load_spec


def make_spec(seeds: int) -> str:
    dims = list(range(2, 102, 10))  # 10
    sigmas = [10.0 ** -k for k in range(10)]  # 10
    samples = [100 * (k + 1) for k in range(10)]  # 10
    batches = [1000 * (k + 1) for k in range(9)]  # 9 x (100 NES + 10 CDG + 1 STE) = 999... per dim
    return f"""
name: bench
problem:
  kind: toy_mlp
  dim: {{grid: {dims}}}
  data: {{batch_size: {{grid: {batches}}}}}
estimator:
  - {{kind: nes, sigma: {{grid: {sigmas}}}, samples: {{grid: {samples}}}}}
  - {{kind: cdg, epsilon: {{grid: {sigmas}}}}}
  - {{kind: ste, variant: {{grid: [clipped, steep2]}}}}
measure:
  lrs: {{linspace: [0.01, 0.99, 50]}}
  reference: {{kind: cdg, epsilon: 0.1}}
seeds: {{arange: [0, {seeds}, 1]}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=18)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    text = make_spec(args.seeds)
    best = best_cpu = float("inf")
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        sweep = load_spec(text)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    n = len(sweep.cells)
    # CPU time is the figure to compare on a shared machine; wall time is what a user waits.
    print(f"load_spec: {n:,} cells in {best:.2f} s wall, {best_cpu:.2f} s CPU (best of {args.repeat}) "
          f"= {n / best:,.0f} cells/s wall, {n / best_cpu:,.0f} cells/s CPU")


if __name__ == "__main__":
    main()
