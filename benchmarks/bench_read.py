"""Reading a results folder of many tiny cells: seconds and peak memory of ``store.read_results``.

    .venv/bin/python benchmarks/bench_read.py                    # 20,000 and 100,000 cells
    .venv/bin/python benchmarks/bench_read.py --cells 2000 --dataset   # also the plain pyarrow.dataset read
    .venv/bin/python benchmarks/bench_read.py --modes quick verify     # the checks of plan/status and run/resume

Each folder is made quickly by writing cell files directly, not by running cells: one real tiny
cell (2 probe rows, the declared 130-column schema, snappy) is encoded once as a template whose
``cell_id`` column is stored uncompressed, and each file is that template with its own id patched
in (the data page, the statistics and the footer's ``gradsweep.cell_id``). The files have the
size and layout of real tiny cells; they carry no page checksums, which ``read_results`` does not
check (``run`` and ``resume`` do). Each measurement runs in a fresh process, so its peak RSS
(``ru_maxrss``) is its own. Prints one line per measurement; note the load (``uptime``) beside
any figure you keep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLACEHOLDER = "zzzzzzzzzzzzzzzz"  # 16 characters, like a cell id, and found nowhere else in a file


def template() -> bytes:
    """The bytes of one real tiny cell file, its cell id being :data:`PLACEHOLDER`."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gradsweep.provenance import cell_provenance
    from gradsweep.spec import load_spec
    from gradsweep.store import cell_table

    spec = (
        "name: bench\nexperiment: probe\nproblem: {kind: toy_mlp, dim: 8, data: {batch_size: 64, batches: 1}}\n"
        "estimator: {kind: cdg, epsilon: 0.1}\nmeasure: {lrs: [0.1, 1.0]}\nseeds: [0]\n"
    )
    cell = load_spec(spec, source="bench").cells[0]
    rows = pd.DataFrame({"record": "probe", "batch": [0, 0], "lr": [0.1, 1.0], "loss_decrease": [0.01, 0.02]})
    table = cell_table("bench", PLACEHOLDER, cell.config, rows, cell_provenance(run_device="cpu", cell_seconds=0.05))
    meta = table.schema.metadata
    bare = table.replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    compression = {name: ("NONE" if name == "cell_id" else "SNAPPY") for name in bare.column_names}
    with pq.ParquetWriter(sink, bare.schema, compression=compression, store_schema=False, use_dictionary=False) as w:
        w.write_table(bare)
        w.add_key_value_metadata(meta)
    data = sink.getvalue().to_pybytes()
    assert data.count(PLACEHOLDER.encode()) >= 2, "the placeholder must appear in the data and the footer"
    return data


def make_folder(folder: Path, cells: int) -> float:
    """``cells`` tiny cell files in ``folder`` (kept between runs); the seconds it took."""
    folder.mkdir(parents=True, exist_ok=True)
    have = sum(1 for _ in os.scandir(folder))
    if have == cells:
        return 0.0
    start = time.perf_counter()
    data = template()
    needle = PLACEHOLDER.encode()
    for i in range(cells):
        cell_id = f"{i:016x}"
        with open(folder / f"{cell_id}.parquet", "wb") as f:
            f.write(data.replace(needle, cell_id.encode()))
    return time.perf_counter() - start


MEASURE = r"""
import json, resource, sys, time, warnings
import pyarrow.compute as pc
mode, folder = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "dataset":  # what read_results did before: one dataset over every file
    import pyarrow.dataset as ds
    from gradsweep.results_schema import results_schema
    from gradsweep.store import results_files
    table = ds.dataset(list(results_files(folder).paths), format="parquet", schema=results_schema()).to_table()
elif mode in ("quick", "verify"):  # what plan/status (quick) and run/resume (verify) check per file
    from gradsweep.store import SweepStore
    scan = SweepStore(folder).scan(full=mode == "verify")
    assert not scan.invalid, list(scan.invalid.items())[:3]
    import pyarrow as pa
    table = pa.table({"cell_id": sorted(scan.done)})
else:
    from gradsweep.store import read_results
    kwargs = {"columns": ["cell_id", "lr", "loss_decrease"]} if mode == "columns" else {}
    if mode == "filter":
        kwargs = {"columns": ["cell_id", "loss_decrease"], "filter": pc.field("lr") > 0.5}
    table = read_results(folder, **kwargs)
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": table.num_rows, "columns": table.num_columns, "seconds": seconds, "peak_rss_mb": rss,
                  "table_mb": table.nbytes / 2**20}))
"""


def measure(mode: str, folder: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, mode, str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gradsweep-bench-read")
    parser.add_argument("--dataset", action="store_true", help="also time the plain pyarrow.dataset read (the old way)")
    parser.add_argument("--modes", nargs="+", default=["all", "columns", "filter"],
                        help="all | columns | filter (read_results), quick | verify (the scans of plan and run)")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for cells in args.cells:
        folder = args.workdir / f"cells-{cells}"
        made = make_folder(folder, cells)
        print(f"{cells} cells in {folder}" + (f" (written in {made:.1f} s)" if made else " (reused)"))
        for mode in args.modes + (["dataset"] if args.dataset else []):
            r = measure(mode, folder)
            if "error" in r:
                print(f"  {mode:<8} failed: {r['error']}")
            else:
                print(f"  {mode:<8} {r['seconds']:7.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                      f"{r['rows']} rows x {r['columns']} columns ({r['table_mb']:.0f} MB as Arrow)")


if __name__ == "__main__":
    main()
