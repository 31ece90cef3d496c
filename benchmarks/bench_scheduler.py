"""Scheduler and planner figures: prints them, asserts nothing.

1. ``sweep``: N cells of about 50 ms each on a local Ray with C CPUs. Efficiency = ideal / wall,
   where ideal = (sum of the cells' measured ``cell_seconds``) / C. Two kinds of cell:
   ``real`` (a toy probe of dim 32, batch 32768, clipped STE: about 50 ms of real work on one core) and
   ``delay`` (a probe of dim 4, batch 64, a few ms, plus a ``GRADSWEEP_CELL_DELAY``-style
   sleep of 45 ms: mostly the scheduler's overhead, as the sleep leaves the CPUs to the driver). Wall time counts
   from submission to the last file written; Ray's start-up is printed apart.
2. ``plan``: ``gradsweep plan`` on a 200,000-cell spec against a folder holding 100,000 done
   cells (small valid Parquet files with the gradsweep footer metadata), in a fresh process,
   with the spec expansion timed apart.

    python benchmarks/bench_scheduler.py                 # both, 2,000 cells, both cell kinds
    python benchmarks/bench_scheduler.py sweep --cells 500 --kind delay
    python benchmarks/bench_scheduler.py plan
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP_SPEC = """\
name: bench-sweep
problem: {{kind: toy_mlp, dim: {dim}, depth: 3, data: {{batch_size: {batch}, batches: 1}}}}
estimator: {{kind: ste, variant: clipped}}
measure: {{lrs: [0.01, 0.1, 1.0]}}
seeds: {{arange: [0, {n}, 1]}}
resources: {{cpu: 1, gpu: 0}}
device: cpu
"""

PLAN_SPEC = """\
name: bench-plan
problem: {kind: toy_mlp, dim: {grid: [4, 8, 16, 32]}, data: {batch_size: 64, batches: 1}}
estimator: {kind: ste}
measure: {lrs: [0.1]}
seeds: {arange: [0, 50000, 1]}
device: cpu
"""


def bench_sweep(n: int, kind: str, cpus: int, workdir: Path) -> None:
    import pyarrow.compute as pc
    import ray

    from gradsweep.executors import FaultHooks
    from gradsweep.executors.ray_executor import RayExecutor, ensure_ray
    from gradsweep.runner import run
    from gradsweep.spec import load_spec
    from gradsweep.store import read_results

    spec = workdir / f"sweep-{kind}.yaml"
    # real: a probe whose own work is about 50 ms on one core; delay: a tiny probe (a few ms)
    # plus a 45 ms sleep, which leaves the CPUs to the scheduler
    dim, batch, delay = (32, 32768, 0.0) if kind == "real" else (4, 64, 0.045)
    spec.write_text(SWEEP_SPEC.format(n=n, dim=dim, batch=batch))
    sweep = load_spec(spec)
    t0 = time.perf_counter()
    ensure_ray(num_cpus=cpus)
    startup = time.perf_counter() - t0
    hooks = FaultHooks(delay=delay)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    result = run(sweep, workdir / kind, RayExecutor(hooks=hooks), stream=io.StringIO())
    wall = time.perf_counter() - t0
    driver_cpu = time.process_time() - cpu0
    table = read_results(workdir / kind / sweep.name)
    per_cell = table.group_by("cell_id").aggregate([("cell_seconds", "max")]).column("cell_seconds_max")
    total = pc.sum(per_cell).as_py()
    ideal = total / cpus
    print(
        f"sweep [{kind}] {n} cells on {cpus} CPUs: done {result.done}, failed {len(result.failed)}; "
        f"mean cell {1000 * total / n:.1f} ms; wall {wall:.1f} s, ideal {ideal:.1f} s, "
        f"efficiency {100 * ideal / wall:.1f}%; driver CPU {driver_cpu:.1f} s (Ray start-up {startup:.1f} s, not counted)"
    )
    ray.shutdown()


def _make_done_folder(folder: Path, ids: list[str], config: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gradsweep.provenance import cell_provenance
    from gradsweep.store import KEY_CELL_ID, KEY_CONFIG, KEY_PROVENANCE

    folder.mkdir(parents=True, exist_ok=True)
    prov = json.dumps(cell_provenance(run_device="cpu", cell_seconds=0.05), default=str).encode()
    for cell_id in ids:
        meta = {KEY_CELL_ID: cell_id.encode(), KEY_CONFIG: json.dumps(config).encode(), KEY_PROVENANCE: prov}
        table = pa.table({"cell_id": [cell_id], "record": ["probe"], "loss_decrease": [0.0]}).replace_schema_metadata(meta)
        pq.write_table(table, folder / f"{cell_id}.parquet")


def bench_plan(workdir: Path) -> None:
    from gradsweep.spec import load_spec

    spec = workdir / "plan.yaml"
    spec.write_text(PLAN_SPEC)
    t0 = time.perf_counter()
    sweep = load_spec(spec)
    expand = time.perf_counter() - t0
    folder = workdir / "results" / sweep.name
    if not folder.exists():
        t0 = time.perf_counter()
        _make_done_folder(folder, [c.id for c in sweep.cells[::2]], sweep.cells[0].config)
        print(f"plan: wrote 100,000 done cell files in {time.perf_counter() - t0:.0f} s (set-up)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "gradsweep", "plan", str(spec), "--results", str(workdir / "results")],
        capture_output=True, text=True,
    )
    total = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    print(proc.stdout.splitlines()[1].strip())
    print(
        f"plan: {len(sweep.cells):,} cells against {len(sweep.cells[::2]):,} done: `gradsweep plan` "
        f"{total:.2f} s wall, {cpu:.2f} s CPU, in a fresh process (spec expansion alone: {expand:.2f} s "
        f"wall in-process); target < 5 s. Wall time is inflated on a shared machine; CPU time is not"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", choices=("all", "sweep", "plan"), default="all")
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--kind", choices=("real", "delay", "both"), default="both")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temporary folder)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.what in ("all", "sweep"):
            for kind in (("real", "delay") if args.kind == "both" else (args.kind,)):
                bench_sweep(args.cells, kind, args.cpus, workdir)
        if args.what in ("all", "plan"):
            bench_plan(workdir)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
