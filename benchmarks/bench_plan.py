"""``gradsweep plan`` on a very large sweep: seconds and peak memory. Prints figures, asserts nothing.

A spec of 10 million cells (two estimators x 5 hyper-parameters x 4 dims x 250,000 seeds) against
a results folder holding 1 million done cell files, planned by ``python -m gradsweep plan`` in a
fresh process: wall time, CPU time and peak resident memory (``ru_maxrss`` of the child). The spec
is expanded lazily and counted without materialising its cells, so memory grows with the done
cells (their ids), not with the sweep. Target (issue 12): < 30 s and < 1 GB on the 2-core
development machine.

The done files are one small valid cell file whose 16-digit cell id is replaced byte for byte by
each done cell's id (uncompressed, so the id is written literally): ``plan`` checks files by their
two ends and reads a sample of footers, so they are what it sees in a real folder. Writing a
million files takes a few minutes and about 1.5 GB; ``--workdir`` keeps them for the next run.

    python benchmarks/bench_plan.py                      # 10 M cells against 1 M done
    python benchmarks/bench_plan.py --seeds 25000 --done 100000   # 1 M against 100 k
    python benchmarks/bench_plan.py --workdir /tmp/bench-plan     # keep the folder for reruns
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """\
name: bench-plan-10m
problem: {{kind: toy_mlp, dim: {{grid: [4, 8, 16, 32]}}, data: {{batch_size: 64, batches: 1}}}}
estimator:
  - {{kind: cdg, epsilon: {{grid: [1.0, 0.1, 0.01, 0.001, 0.0001]}}}}
  - {{kind: nes, sigma: {{grid: [1.0, 0.1, 0.01, 0.001, 0.0001]}}}}
measure: {{lrs: [0.1]}}
seeds: {{arange: [0, {seeds}, 1]}}
device: cpu
"""


def _template(config: dict) -> tuple[bytes, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gradsweep.provenance import cell_provenance
    from gradsweep.store import KEY_CELL_ID, KEY_CONFIG, KEY_PROVENANCE

    stand_in = "0123456789abcdef"
    prov = json.dumps(cell_provenance(run_device="cpu", cell_seconds=0.05), default=str).encode()
    meta = {KEY_CELL_ID: stand_in.encode(), KEY_CONFIG: json.dumps(config).encode(), KEY_PROVENANCE: prov}
    table = pa.table({"cell_id": [stand_in], "record": ["probe"], "loss_decrease": [0.0]}).replace_schema_metadata(meta)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="NONE", use_dictionary=False, write_statistics=False)
    return sink.getvalue(), stand_in


def make_folder(spec: Path, folder: Path, done: int) -> None:
    from gradsweep.spec import load_spec

    sweep = load_spec(spec)
    cells = list(itertools.islice(sweep.iter_cells(), 0, done * 10, 10))[:done]  # every tenth cell
    template, stand_in = _template(cells[0].config)
    folder.mkdir(parents=True, exist_ok=True)
    marker = stand_in.encode()
    for cell in cells:
        with open(folder / f"{cell.id}.parquet", "wb") as f:
            f.write(template.replace(marker, cell.id.encode()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=250_000, help="seeds: cells = 40 x seeds (default 250,000: 10 M)")
    parser.add_argument("--done", type=int, default=1_000_000, help="done cell files in the folder (default 1 M)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the spec and folder here (default: a temporary folder)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        spec = workdir / f"plan-{args.seeds}.yaml"
        spec.write_text(SPEC.format(seeds=args.seeds))
        results = workdir / f"results-{args.seeds}-{args.done}"
        folder = results / "bench-plan-10m"
        if not folder.exists():
            t0 = time.perf_counter()
            make_folder(spec, folder, args.done)
            print(f"set-up: wrote {args.done:,} done cell files in {time.perf_counter() - t0:.0f} s")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "gradsweep", "plan", str(spec), "--results", str(results)],
            capture_output=True, text=True,
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        peak_gb = after.ru_maxrss / 1024**2  # KiB -> GiB; the largest child so far: this one
        print("\n".join("  | " + line for line in proc.stdout.splitlines()[:2]))
        print(
            f"plan: {40 * args.seeds:,} cells against {args.done:,} done: `gradsweep plan` {wall:.1f} s wall, "
            f"{cpu:.1f} s CPU, peak memory {peak_gb:.2f} GB, in a fresh process (target < 30 s and < 1 GB)"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
