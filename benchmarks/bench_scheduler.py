"""Scheduler and planner figures: prints them, asserts nothing.

1. ``sweep``: N small cells on C CPUs, run side by side, alternating, three repeats, by
   - ``gradsweep``: :func:`gradsweep.runner.run` with the Ray executor on an embedded local Ray;
   - ``pool``: a plain ``concurrent.futures.ProcessPoolExecutor`` with C workers running the same
     cell wrapper (the cell, its table, its Parquet encoding) and the driver writing one Parquet file
     per cell as it completes: the best a hand-written script does on one machine;
   - ``tune``: Ray Tune (if installed), one trial per cell writing its own Parquet file, on the
     first ``--tune-cells`` cells only (its trials cost seconds each on a loaded machine).
   Efficiency = ideal / wall, where ideal = (sum of the cells' measured ``cell_seconds``) / C:
   building and encoding a cell's Parquet file counts as overhead, not as cell time. Wall time
   counts from submission to the last file written, on warm workers (Ray's start-up and the
   first import of torch in every worker are done before, and printed apart). Two kinds of cell:
   ``real`` (a toy probe of dim 32, batch 12,000, clipped STE: about 20 ms of real work on one core)
   and ``delay`` (a probe of dim 4, batch 64, plus a 20 ms sleep, which leaves the CPUs to the
   scheduler). Targets (issue 15): gradsweep >= 90% efficient on 20 ms cells and within 10% of
   the pool's wall time.
2. ``plan``: ``gradsweep plan`` on a 200,000-cell spec against a folder holding 100,000 done
   cells (small valid Parquet files with the gradsweep footer metadata), in a fresh process,
   with the spec expansion timed apart. (10 million cells: ``benchmarks/bench_plan.py``.)

    python benchmarks/bench_scheduler.py                 # both, 500 cells, both cell kinds
    python benchmarks/bench_scheduler.py sweep --cells 500 --kind real --repeats 3
    python benchmarks/bench_scheduler.py plan
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

SWEEP_SPEC = """\
name: bench-sweep
problem: {{kind: toy_mlp, dim: {dim}, depth: 3, data: {{batch_size: {batch}, batches: 1}}}}
estimator: {{kind: ste, variant: clipped}}
measure: {{lrs: [0.01, 0.1, 1.0]}}
seeds: {{arange: [{first}, {last}, 1]}}
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

KINDS = {"real": (32, 12000, 0.0), "delay": (4, 64, 0.020)}  # dim, batch, sleep per cell


def _spec(workdir: Path, kind: str, n: int, offset: int) -> Path:
    """A spec of n cells, seeds from ``offset`` on."""
    dim, batch, _ = KINDS[kind]
    spec = workdir / f"sweep-{kind}-{offset}.yaml"
    spec.write_text(SWEEP_SPEC.format(first=offset, last=offset + n, dim=dim, batch=batch))
    return spec


def _one_thread() -> None:
    """Pool worker initialiser: one torch thread per worker, as Ray gives a 1-CPU task."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    import gradsweep.cell  # noqa: F401  (warm: imported before the clock starts)


def _pool_cell(sweep: str, cell_id: str, config: dict, delay: float):
    from gradsweep.executors.base import FaultHooks, execute_cell

    return execute_cell(sweep, cell_id, config, device="cpu", hooks=FaultHooks(delay=delay))


def _efficiency(folder: Path, cpus: int, wall: float) -> tuple[float, float]:
    import pyarrow.compute as pc

    from gradsweep.store import read_results

    table = read_results(folder)
    per_cell = table.group_by("cell_id").aggregate([("cell_seconds", "max")]).column("cell_seconds_max")
    total = pc.sum(per_cell).as_py()
    return total / len(per_cell), 100 * (total / cpus) / wall


def run_gradsweep(spec: Path, out: Path, delay: float) -> float:
    from gradsweep.executors import FaultHooks
    from gradsweep.executors.ray_executor import RayExecutor
    from gradsweep.runner import run
    from gradsweep.spec import load_spec

    sweep = load_spec(spec)
    t0 = time.perf_counter()
    result = run(sweep, out, RayExecutor(hooks=FaultHooks(delay=delay)), stream=io.StringIO())
    wall = time.perf_counter() - t0
    assert result.done == result.total, result
    return wall


def run_pool(pool: ProcessPoolExecutor, spec: Path, out: Path, delay: float) -> float:
    from gradsweep.spec import load_spec
    from gradsweep.store import SweepStore

    sweep = load_spec(spec)
    store = SweepStore.for_sweep(out, sweep.name)
    t0 = time.perf_counter()
    store.create()
    futures = [pool.submit(_pool_cell, sweep.name, c.id, c.config, delay) for c in sweep.cells]
    for future in as_completed(futures):
        outcome = future.result()
        store.write_cell(outcome.cell_id, outcome.data)
    return time.perf_counter() - t0


def run_tune(spec: Path, out: Path, delay: float, cpus: int) -> float:
    from ray import tune

    from gradsweep.spec import load_spec
    from gradsweep.store import SweepStore

    sweep = load_spec(spec)
    folder = SweepStore.for_sweep(out, sweep.name)
    folder.create()
    cells = {c.id: c.config for c in sweep.cells}
    path = folder.path

    def trainable(params: dict) -> dict:
        cid = params["cell"]
        outcome = _pool_cell(sweep.name, cid, cells[cid], delay)
        with open(f"{path}/.{cid}.tmp", "wb") as f:
            f.write(outcome.data)
        os.replace(f"{path}/.{cid}.tmp", f"{path}/{cid}.parquet")
        return {"seconds": outcome.seconds}

    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"cell": tune.grid_search(list(cells))},
        tune_config=tune.TuneConfig(max_concurrent_trials=cpus),
        run_config=tune.RunConfig(storage_path=str(out / "_tune"), verbose=0),
    )
    tuner.fit()
    return time.perf_counter() - t0


def bench_sweep(n: int, kind: str, cpus: int, repeats: int, workdir: Path, tune_repeats: int = 1,
                tune_cells: int = 20) -> None:
    import ray

    from gradsweep.executors.ray_executor import ensure_ray

    delay = KINDS[kind][2]
    t0 = time.perf_counter()
    ensure_ray(num_cpus=cpus)
    startup = time.perf_counter() - t0
    try:
        import ray.tune  # noqa: F401

        has_tune = True
    except ImportError:
        has_tune = False
    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=cpus, initializer=_one_thread)
    list(pool.map(abs, range(cpus)))  # start and warm every worker
    pool_startup = time.perf_counter() - t0
    # warm Ray's workers too: import torch and the cell code in each before the clock starts
    run_gradsweep(_spec(workdir, kind, 2 * cpus, 10**6), workdir / "warm", delay)
    print(f"sweep [{kind}] {n} cells on {cpus} CPUs (Ray start-up {startup:.1f} s, pool start-up "
          f"{pool_startup:.1f} s, both apart; load {os.getloadavg()[0]:.1f})")
    rows: dict[str, list[tuple[float, float, float]]] = {"gradsweep": [], "pool": [], "tune": []}
    for r in range(repeats):
        for name in ("gradsweep", "pool", "tune"):
            if name == "tune" and (not has_tune or r >= tune_repeats):
                continue
            # the same cells for each runner, in a folder of its own; Tune's trials cost seconds each
            # on a loaded 2-core machine, so it gets the first tune_cells of them
            spec = _spec(workdir, kind, min(n, tune_cells) if name == "tune" else n, 0)
            out = workdir / f"{name}-{kind}-{r}"
            if name == "gradsweep":
                wall = run_gradsweep(spec, out, delay)
            elif name == "pool":
                wall = run_pool(pool, spec, out, delay)
            else:
                wall = run_tune(spec, out, delay, cpus)
            mean, eff = _efficiency(out / "bench-sweep", cpus, wall)
            rows[name].append((wall, mean, eff))
            print(f"  repeat {r + 1} {name}: wall {wall:.2f} s, mean cell {1000 * mean:.1f} ms, efficiency {eff:.1f}% "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    pool.shutdown()
    print(f"  {'runner':<11}{'wall s (min / median)':>24}{'mean cell ms':>14}{'efficiency % (max / median)':>30}")
    for name, values in rows.items():
        if not values:
            print(f"  {name:<11}  (Ray Tune not installed, or --tune-repeats 0)")
            continue
        walls, means, effs = zip(*values)
        print(f"  {name:<11}{min(walls):>12.2f} / {statistics.median(walls):<9.2f}{1000 * statistics.median(means):>14.1f}"
              f"{max(effs):>18.1f} / {statistics.median(effs):<9.1f}")
    if rows["pool"] and rows["gradsweep"]:
        ratio = statistics.median(w for w, _, _ in rows["gradsweep"]) / statistics.median(w for w, _, _ in rows["pool"])
        print(f"  gradsweep wall / pool wall (medians): {ratio:.2f} (target <= 1.10)")


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
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--kind", choices=("real", "delay", "both"), default="both")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tune-cells", type=int, default=20, help="cells given to Ray Tune (default 20)")
    parser.add_argument("--tune-repeats", type=int, default=1,
                        help="repeats of Ray Tune, whose per-trial overhead makes it slow (default 1; 0: none)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temporary folder)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.what in ("all", "sweep"):
            for kind in (("real", "delay") if args.kind == "both" else (args.kind,)):
                bench_sweep(args.cells, kind, args.cpus, args.repeats, workdir, args.tune_repeats, args.tune_cells)
        if args.what in ("all", "plan"):
            bench_plan(workdir)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
