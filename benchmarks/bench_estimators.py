"""CDG and NES, batched, against the plain per-coordinate / per-sample loops: prints a table.

    .venv/bin/python benchmarks/bench_estimators.py [--dim 64 --depth 3 --batch 16000
        --activation binary --epsilon 0.1 --sigma 0.01 --samples 500 5000 50000
        --plain-coordinates 64 --plain-samples 300 --dtype float32 --device cpu]

The toy of the notes (d = 64, depth 3, batch 16000, binary activations). Rows:

- ``cdg``: CDG (central) over every layer. The plain loop (two full forwards per coordinate) is
  timed on ``--plain-coordinates`` random coordinates and extrapolated to all of them; the
  difference is taken on those coordinates.
- ``nes-n``: NES with n samples. The plain loop (one full forward per sample, the same
  directions) is run on the first ``min(n, --plain-samples)`` directions and, where that is fewer
  than n, extrapolated; the difference is between the plain loop and the batched estimator with
  that many samples (NES's first m directions do not depend on n).

Targets on a 2-core CPU: CDG >= 100x faster than the plain loop, NES no slower at any n.
Each NES row also gives the batched NES's GFLOP/s (counting only its matmul FLOPs) and which
fraction of the fp32 matmul rate measured in the same run that is (2048^2 on a CPU, 8192^2 with
TF32 off on a GPU). ``benchmarks/bench_kernels.py`` compares the kernels side by side.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' reference loops

from gradsweep import estimators, seeding  # noqa: E402
from gradsweep.problems.toy_mlp import ToyMLP  # noqa: E402
from tests.reference_loops import cdg_plain, nes_plain  # noqa: E402


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 8192, repeats: int = 10) -> float:
    """Measured FLOP/s of one large square matmul (the reference for the NES fraction)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    seconds, _ = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * size**3 * repeats / seconds


def nes_matmul_flops(problem: ToyMLP, evaluations: int, batch: int) -> float:
    """2 * B * sum(out * in) per loss evaluation: the matmuls of one forward."""
    return 2.0 * evaluations * batch * sum(w.numel() for w in problem.point().values())


def max_difference(got: dict, want: dict, mask: dict | None = None) -> tuple[float, float]:
    """(max |got - want|, that relative to max |want|) over the entries in ``mask``."""
    diffs, scales = [], []
    for name, w in want.items():
        keep = mask[name] if mask is not None else torch.ones_like(w, dtype=torch.bool)
        if keep.any():
            diffs.append(float((got[name] - w)[keep].abs().max()))
            scales.append(float(w[keep].abs().max()))
    diff = max(diffs)
    return diff, diff / max(max(scales), 1e-300)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16000)
    ap.add_argument("--activation", default="binary", choices=["fp", "binary", "ternary", "2bit"])
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--sigma", type=float, default=0.01)
    ap.add_argument("--samples", type=int, nargs="+", default=[500, 5000, 50000])
    ap.add_argument("--plain-coordinates", type=int, default=64, help="coordinates the plain CDG loop is timed on")
    ap.add_argument("--plain-samples", type=int, default=300, help="most samples the plain NES loop runs")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--skip-cdg", action="store_true")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, on both sides of the ratio
    problem = ToyMLP(dim=args.dim, depth=args.depth, activation=args.activation, teacher_activation=None,
                     batch_size=args.batch, batches=1, seed=0, dtype=dtype, device=device)
    point, batch = problem.point(), next(problem.batches())
    layers = problem.layer_names()
    total = sum(point[n].numel() for n in layers)
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"toy d={args.dim} depth={args.depth} batch={args.batch} {args.activation} {args.dtype} "
          f"on {device} (torch threads: {threads}); {total} coordinates")

    header = f"{'estimator':<14}{'seconds':>10}{'plain s':>12}{'speedup':>10}{'max |diff|':>12}{'rel diff':>10}  plain loop"
    print(header, flush=True)

    def row(name: str, fast_s: float, plain_s: float, diff: float, rel: float, note: str) -> None:
        print(f"{name:<14}{fast_s:>10.3f}{plain_s:>12.2f}{plain_s / fast_s:>9.1f}x{diff:>12.2e}{rel:>10.1e}  {note}",
              flush=True)

    if not args.skip_cdg:
        cdg = estimators.get({"kind": "cdg", "epsilon": args.epsilon})
        cdg.estimate(problem, point, batch, layers[-1:], torch.Generator())  # warm-up
        fast_s, fast = timed(lambda: cdg.estimate(problem, point, batch, layers, torch.Generator()), device)
        rng = random.Random(0)
        picks = sorted(rng.sample(range(total), min(args.plain_coordinates, total)))
        offsets, coords, mask = 0, {}, {}
        for name in layers:
            n = point[name].numel()
            coords[name] = [p - offsets for p in picks if offsets <= p < offsets + n]
            m = torch.zeros(n, dtype=torch.bool, device=device)
            m[coords[name]] = True
            mask[name] = m.reshape(point[name].shape)
            offsets += n
        plain_s, plain = timed(lambda: cdg_plain(problem, point, batch, layers, args.epsilon, coordinates=coords), device)
        plain_full = plain_s * total / len(picks)
        diff, rel = max_difference(fast, plain, mask)
        row(f"cdg eps={args.epsilon:g}", fast_s, plain_full, diff, rel, f"{len(picks)} of {total} coords, extrapolated")

    # the reference rate: fp32 matmul at 8192^2 on a GPU, 2048^2 on a CPU, measured in this run
    peak = matmul_peak(device, dtype) if device.type == "cuda" else matmul_peak(device, dtype, size=2048, repeats=3)
    for n in args.samples:
        nes = estimators.get({"kind": "nes", "sigma": args.sigma, "samples": n})
        fast_s, _ = timed(lambda: nes.estimate(problem, point, batch, layers, seeding.generator("bench")), device)
        m = min(n, args.plain_samples)
        small = estimators.get({"kind": "nes", "sigma": args.sigma, "samples": m})
        u = small.directions(point, layers, seeding.generator("bench"))
        plain_s, plain = timed(lambda: nes_plain(problem, point, batch, layers, u, args.sigma), device)
        batched_m = small.estimate(problem, point, batch, layers, seeding.generator("bench"))
        diff, rel = max_difference(batched_m, plain)
        note = f"{m} samples" + (", extrapolated" if m < n else "")
        if peak is not None:
            reached = nes_matmul_flops(problem, n, args.batch) / fast_s
            note += f"; {reached / 1e9:.1f} GFLOP/s = {reached / peak:.0%} of the matmul rate {peak / 1e9:.1f}"
        row(f"nes n={n}", fast_s, plain_s * n / m, diff, rel, note)


if __name__ == "__main__":
    main()
