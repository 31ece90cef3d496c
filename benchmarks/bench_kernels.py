"""The toy's batched kernels side by side: NES against the matmul rate, CDG against the plain loop.

    .venv/bin/python benchmarks/bench_kernels.py [--dims 32 64] [--threads 1 2] [--batch 16000]
        [--samples 500] [--repeats 3] [--baseline REV] [--plain-coordinates 8]
        [--activation binary] [--device cpu|cuda] [--skip-nes] [--skip-cdg]

For each (threads, d) the contenders run in turns, ``--repeats`` rounds, and each row gives the
min and median of wall seconds and (on a CPU) of process CPU seconds, which a busy shared
machine inflates less than wall time. Contenders:

- ``matmul``: one fp32 2048 x 2048 matmul (TF32 off on CUDA), the reference rate;
- ``nes``: NES with ``--samples`` directions (the estimator, directions drawn and all); its
  GFLOP/s count the minimum work, 2 B (sum of out * in) per direction, and ``of matmul`` is that
  rate over the matmul rate of the same rounds (min over min; the CPU-time column likewise);
- ``cdg``: CDG (central, eps 0.1) over every weight; ``vs plain`` is the plain loop's time
  (``tests/reference_loops.cdg_plain``, two full forwards per coordinate, timed on
  ``--plain-coordinates`` coordinates per round and extrapolated to all) over CDG's;
- ``--baseline REV``: the same estimators on the toy whose batched paths are
  ``gradsweep/problems/toy_batched.py`` as of git revision REV (the "before" of a change),
  in the same rounds. The largest difference to the current code is printed.

The load average is printed before and after: on a shared machine, say it next to the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' reference loops

from gradsweep import estimators, seeding  # noqa: E402
from gradsweep.problems.toy_mlp import ToyMLP  # noqa: E402
from tests.reference_loops import cdg_plain  # noqa: E402


def baseline_class(rev: str) -> type:
    """``ToyMLP`` with the batched paths of ``toy_batched.py`` at git revision ``rev``."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:gradsweep/problems/toy_batched.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "toy_batched_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("toy_batched_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return type("BaselineToyMLP", (module.ToyBatchedMixin, ToyMLP), {})


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16000)
    ap.add_argument("--activation", default="binary", choices=["binary", "ternary", "2bit"])
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plain-coordinates", type=int, default=8)
    ap.add_argument("--baseline", default=None, help="git revision whose toy_batched.py is the 'before'")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--matmul-size", type=int, default=2048)
    ap.add_argument("--skip-nes", action="store_true")
    ap.add_argument("--skip-cdg", action="store_true")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, on both sides of the ratio
    classes = {"": ToyMLP}
    if args.baseline:
        classes[f" @{args.baseline}"] = baseline_class(args.baseline)
    print(f"torch {torch.__version__} on {device}; {load()}", flush=True)
    threads_list = args.threads if device.type == "cpu" else [torch.get_num_threads()]
    for threads in threads_list:
        torch.set_num_threads(threads)
        for dim in args.dims:
            run_one(args, device, dim, threads, classes)
    print(load())


def run_one(args: argparse.Namespace, device: torch.device, dim: int, threads: int, classes: dict[str, type]) -> None:
    kw = dict(dim=dim, depth=args.depth, activation=args.activation, teacher_activation=None,
              batch_size=args.batch, batches=1, seed=0, dtype=torch.float32, device=device)
    problems = {suffix: cls(**kw) for suffix, cls in classes.items()}
    point, batch = problems[""].point(), next(problems[""].batches())
    layers = problems[""].layer_names()
    weights = sum(point[n].numel() for n in layers)
    nes = estimators.get({"kind": "nes", "sigma": 0.01, "samples": args.samples})
    cdg = estimators.get({"kind": "cdg", "epsilon": 0.1})
    m = args.matmul_size
    a, b = (torch.randn(m, m, device=device) for _ in range(2))
    c = torch.empty(m, m, device=device)

    jobs: dict[str, Callable[[], object]] = {"matmul": lambda: [torch.mm(a, b, out=c) for _ in range(3)]}
    for suffix, problem in problems.items():
        if not args.skip_nes:
            jobs["nes" + suffix] = lambda p=problem: nes.estimate(p, point, batch, layers, seeding.generator("bench"))
        if not args.skip_cdg:
            def run_cdg(p=problem):
                p._forward_cache = None  # time the base forward too
                return cdg.estimate(p, point, batch, layers, torch.Generator())
            jobs["cdg" + suffix] = run_cdg
    picks = torch.randperm(weights, generator=torch.Generator().manual_seed(0))[: args.plain_coordinates].sort().values
    coords, start = {}, 0
    for name in layers:
        n = point[name].numel()
        coords[name] = [int(k) - start for k in picks if start <= k < start + n]
        start += n
    if not args.skip_cdg and args.plain_coordinates:
        jobs["cdg plain loop"] = lambda: cdg_plain(problems[""], point, batch, layers, 0.1, coordinates=coords)

    for fn in jobs.values():  # warm-up (first-touch pages, lazy init)
        if fn is not jobs.get("cdg plain loop"):
            fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in jobs}
    outputs: dict[str, object] = {}
    for _ in range(args.repeats):
        for name, fn in jobs.items():
            wall, cpu, outputs[name] = timed(fn, device)
            times[name].append((wall, cpu))

    print(f"\nd={dim} depth={args.depth} batch={args.batch} {args.activation} float32, {threads} thread(s), "
          f"{weights} weights, NES n={args.samples}; {load()}")
    print(f"{'contender':<22}{'wall min':>9}{'wall med':>9}{'cpu min':>9}{'cpu med':>9}  figures")
    mm_flops = 2 * m**3 * 3
    mm_wall = min(t[0] for t in times["matmul"])
    mm_cpu = min(t[1] for t in times["matmul"])
    nes_flops = 2.0 * args.samples * args.batch * weights
    for name, ts in times.items():
        walls, cpus = [t[0] for t in ts], [t[1] for t in ts]
        wall_min, cpu_min = min(walls), min(cpus)
        if name == "matmul":
            note = f"{mm_flops / mm_wall / 1e9:.1f} GFLOP/s (cpu time: {mm_flops / mm_cpu / 1e9:.1f})"
        elif name.startswith("nes"):
            note = (f"{nes_flops / wall_min / 1e9:.1f} GFLOP/s = {mm_wall / mm_flops * nes_flops / wall_min:.0%} of matmul "
                    f"(cpu time: {mm_cpu / mm_flops * nes_flops / cpu_min:.0%})")
        elif name.startswith("cdg") and name != "cdg plain loop" and "cdg plain loop" in times:
            plain = times["cdg plain loop"]
            scale = weights / max(1, len(picks))
            note = (f"{min(t[0] for t in plain) * scale / wall_min:.0f}x the plain loop "
                    f"(cpu time: {min(t[1] for t in plain) * scale / cpu_min:.0f}x)")
        elif name == "cdg plain loop":
            scale = weights / max(1, len(picks))
            note = f"{len(picks)} coordinates; all {weights}: {wall_min * scale:.1f} s wall, {cpu_min * scale:.1f} s cpu"
        else:
            note = ""
        print(f"{name:<22}{wall_min:>9.3f}{statistics.median(walls):>9.3f}{cpu_min:>9.3f}{statistics.median(cpus):>9.3f}  {note}")
    for kind in ("nes", "cdg"):
        for suffix in classes:
            if suffix and f"{kind}{suffix}" in outputs:
                got, want = outputs[kind], outputs[f"{kind}{suffix}"]
                diff = max(float((got[n] - want[n]).abs().max()) for n in want)
                scale = max(float(w.abs().max()) for w in want.values())
                print(f"{kind}: max |current - baseline| = {diff:.2e} (max |g| {scale:.2e})")
    if "cdg plain loop" in outputs and "cdg" in outputs:
        plain, got = outputs["cdg plain loop"], outputs["cdg"]
        diff = max(float((got[n].reshape(-1)[coords[n]] - plain[n].reshape(-1)[coords[n]]).abs().max())
                   for n in layers if coords[n])
        print(f"cdg: max |batched - plain loop| on the timed coordinates = {diff:.2e}")


if __name__ == "__main__":
    main()
