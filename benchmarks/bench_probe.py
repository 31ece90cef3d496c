"""Probe costs on the toy: the estimate and the lr scan, per batch. Prints a table; not a test.

    .venv/bin/python benchmarks/bench_probe.py [--device cpu|cuda] [--dim 64] [--repeat 3]

Rows: the STE / autograd estimate at batch 16000 (the notes' probe batch), and the batched lr
scan (``experiments.step_losses``: every lr in a few ``problem.losses`` calls) for the notes'
50-lr grid at batch 16000 and a fine grid at batch 256 (the sr-STE scans use 50,000 lrs; this
measures 5,000 and reports lrs per second). Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import time

import torch

from gradsweep import estimators
from gradsweep.devices import describe, resolve_device, synchronize
from gradsweep.experiments import normalized, step_losses
from gradsweep.problems.toy_mlp import ToyMLP


def toy(dim: int, batch: int, device: torch.device) -> ToyMLP:
    return ToyMLP(dim=dim, depth=3, activation="binary", teacher_activation=None, batch_size=batch,
                  batches=1, seed=0, dtype=torch.float32, device=device)


def best(fn, repeat: int, device: torch.device) -> float:
    times = []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device: {describe(device)}, torch threads: {torch.get_num_threads()}, d = {args.dim}, depth 3, binary")
    print(f"{'what':<44} {'seconds':>9} {'per second':>14}")

    big = toy(args.dim, 16000, device)
    point, batch = big.point(), next(big.batches())
    layers = list(point)
    for kind in ["ste", "autograd"]:
        est = estimators.get(kind)
        s = best(lambda: est.estimate(big, point, batch, layers, torch.Generator()), args.repeat, device)
        print(f"{kind + ' estimate, batch 16000':<44} {s:>9.4f} {1 / s:>11.1f} /s")

    direction, _ = normalized(estimators.get("ste").estimate(big, point, batch, layers, torch.Generator()))
    for rows, count, problem in [(16000, 50, big), (256, 5000, toy(args.dim, 256, device))]:
        pt, bt = problem.point(), next(problem.batches())
        lrs = torch.linspace(0.01, 0.99, count)
        s = best(lambda: step_losses(problem, pt, bt, direction, lrs), args.repeat, device)
        print(f"{f'lr scan, {count} lrs, batch {rows}':<44} {s:>9.4f} {count / s:>10.0f} lr/s")


if __name__ == "__main__":
    main()
