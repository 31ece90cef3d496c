"""Benchmark: a results folder of about 1 million rows is read, aggregated and drawn.

The folder is synthetic but schema-true (written with ``gradsweep.results_schema``), shaped like
the notes' sweeps 1 and 2 at full size: toy MLP dims 8/16/32/64, binary and ternary activations,
raw and pretrained students; CDG (4 epsilons), NES (4 sigmas x 3 sample counts), STE (4 variants);
6 seeds; 10 batches x 50 lrs per cell, plus cosine rows for 3 layers and ``all``. That is 1,920
cells, 960,000 probe rows and 76,800 cosine rows, one Parquet file per cell.

    .venv/bin/python benchmarks/bench_analysis.py [--folder DIR] [--keep]

Prints the seconds of each stage (generation is not counted). The goal: under 20 s in all.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradsweep.results_schema import results_schema  # noqa: E402

DIMS = (8, 16, 32, 64)
ACTIVATIONS = ("binary", "ternary")
PRETRAIN = (None, 500)
SEEDS = range(6)
BATCHES = 10
LRS = np.round(np.linspace(0.01, 0.99, 50), 4)
LAYERS = ("linear:1", "linear:2", "linear:3", "all")


def _estimators() -> list[dict]:
    out = [{"estimator.kind": "cdg", "estimator.epsilon": e, "estimator.mode": "central"} for e in (1.0, 0.1, 0.01, 0.001)]
    out += [
        {"estimator.kind": "nes", "estimator.sigma": s, "estimator.samples": n, "estimator.antithetic": False,
         "estimator.shaping": "none", "estimator.seed": 0}
        for s in (1.0, 0.1, 0.01, 0.001) for n in (500, 5000, 50000)
    ]
    out += [{"estimator.kind": "ste", "estimator.variant": v} for v in ("clipped", "steep2", "polynomial", "swish_sign")]
    for e in out:
        if e.get("estimator.variant") == "clipped":
            e["estimator.threshold"] = 1.0
    return out


def generate(folder: Path) -> int:
    """Write the synthetic folder; returns the number of rows."""
    schema = results_schema()
    rng = np.random.default_rng(0)  # benchmark data only; gradsweep's own draws use gradsweep.seeding
    folder.mkdir(parents=True, exist_ok=True)
    rows = 0
    probe_n, cos_n = BATCHES * len(LRS), BATCHES * len(LAYERS)
    n = probe_n + cos_n
    record = pa.array(["probe"] * probe_n + ["cosine"] * cos_n)
    batch = pa.array(np.concatenate([np.repeat(np.arange(BATCHES), len(LRS)), np.repeat(np.arange(BATCHES), len(LAYERS))]))
    lr_col = pa.array(np.concatenate([np.tile(LRS, BATCHES), np.full(cos_n, np.nan)]), mask=np.arange(n) >= probe_n)
    layer = pa.array([None] * probe_n + list(LAYERS) * BATCHES, pa.string())
    reference = pa.array([None] * probe_n + ["cdg(epsilon=0.1)"] * cos_n, pa.string())
    i = 0
    for dim in DIMS:
        for act in ACTIVATIONS:
            for steps in PRETRAIN:
                for k, est in enumerate(_estimators()):
                    for seed in SEEDS:
                        i += 1
                        params = {
                            "problem.kind": "toy_mlp", "problem.dim": dim, "problem.depth": 3, "problem.activation": act,
                            "problem.data.batch_size": 16000, "problem.data.batches": BATCHES,
                            "problem.pretrain.steps": steps, "problem.pretrain.batch_size": 16000 if steps else None,
                            "problem.pretrain.lr": 0.01 if steps else None, "problem.pretrain.optimizer": "adam" if steps else None,
                            **est, "params": "all", "measure.reference.kind": "cdg", "measure.reference.epsilon": 0.1,
                            "measure.reference.mode": "central", "measure.evaluate": "plain", "dtype": "float32",
                            "device": "cpu", "seed": seed,
                        }
                        peak = 0.5 / (1 + k % 7) / np.sqrt(dim / 8)
                        lr = np.tile(LRS, BATCHES)
                        decrease = peak * 4 * lr * (1 - lr) + rng.normal(0, 0.02, probe_n)
                        cells = {
                            "sweep": "bench", "cell_id": f"{i:016x}", "experiment": "probe", **params,
                        }
                        metrics = {
                            "record": record, "batch": batch, "lr": lr_col, "layer": layer, "reference": reference,
                            "loss_before": pa.array(np.concatenate([np.ones(probe_n), np.full(cos_n, np.nan)]), mask=np.arange(n) >= probe_n),
                            "loss_decrease": pa.array(np.concatenate([decrease, np.zeros(cos_n)]), mask=np.arange(n) >= probe_n),
                            "cosine": pa.array(np.concatenate([np.zeros(probe_n), rng.uniform(-0.2, 1, cos_n)]), mask=np.arange(n) < probe_n),
                            "estimator_seconds": pa.array(np.full(n, 0.001 * (k + 1))),
                        }
                        columns = []
                        for f in schema:
                            if f.name in metrics:
                                columns.append(metrics[f.name].cast(f.type))
                            elif cells.get(f.name) is not None:
                                columns.append(pa.array([cells[f.name]] * n, f.type))
                            else:
                                columns.append(pa.nulls(n, f.type))
                        pq.write_table(pa.Table.from_arrays(columns, schema=schema), folder / f"{i:016x}.parquet")
                        rows += n
    return rows


class Clock:
    """Wall and CPU seconds since the previous lap."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None, help="reuse or create the synthetic folder here")
    parser.add_argument("--keep", action="store_true", help="keep a temporary folder")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="bench-analysis-")) / "bench"
    if not any(folder.glob("*.parquet")) if folder.exists() else True:
        t = time.perf_counter()
        rows = generate(folder)
        print(f"generate  {time.perf_counter() - t:7.2f} s  ({rows:,} rows, not counted)")

    timings: dict[str, tuple[float, float]] = {}
    clock = Clock()
    t0, c0 = time.perf_counter(), time.process_time()
    from gradsweep.analysis import aggregate  # noqa: E402  (imports are part of the cost a user pays)
    from gradsweep.analysis.cli import _markdown, _section_module, report_location, summary_tables  # noqa: E402
    from gradsweep.analysis.core import load_results  # noqa: E402
    from gradsweep.analysis.html import SectionResult, plotly_js, write_index  # noqa: E402
    from gradsweep.analysis.interactive import filter_values  # noqa: E402
    from gradsweep.analysis.sections import SECTIONS  # noqa: E402
    timings["import"] = clock.lap()

    data = load_results(folder)
    timings["load"] = clock.lap()
    aggregate.summary(data)
    aggregate.cosine_table(data.records("cosine"))
    table = aggregate.best_spread(data)
    timings["aggregate"] = clock.lap()
    out = report_location(folder)  # what `gradsweep report FOLDER` writes: every section, as build_report runs them
    (out / "figures").mkdir(parents=True, exist_ok=True)
    sections = []
    for name in SECTIONS:
        module = _section_module(name)
        sections.append(SectionResult(name, module.TITLE, module.section(data, out / "figures")))
        timings[f"draw {name}"] = clock.lap()
    csv, readable = summary_tables(data, table)
    csv.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(_markdown(readable))
    plotly_js()
    write_index(data, sections, readable, out, filter_values(data))
    timings["tables+html"] = clock.lap()
    total = (time.perf_counter() - t0, time.process_time() - c0)

    figures = sum(len(s.figures) for s in sections)
    interactive = sum(1 for s in sections for f in s.figures if f.plot is not None)
    page = (out / "index.html").stat().st_size / 1e6
    print(f"rows {len(data.rows):,}, cells {len(data.cells):,}, configs {data.cells['config'].nunique():,},"
          f" figures {figures} ({interactive} interactive), index.html {page:.1f} MB")
    print(f"{'stage':<12} {'wall s':>7} {'cpu s':>7}   (cpu: this process, all threads; on a shared machine wall > cpu)")
    for stage, (wall, cpu) in timings.items():
        print(f"{stage:<12} {wall:7.2f} {cpu:7.2f}")
    print(f"{'total':<12} {total[0]:7.2f} {total[1]:7.2f}   (goal: under 20 s)")
    if args.folder is None and not args.keep:
        shutil.rmtree(folder.parent)
    elif not args.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
