"""Benchmark: batched conv CDG of the thin XNOR-ResNet-18 against the plain per-weight loop.

The plain loop is the researchers' method: for every weight, copy the weights, move that one by
+-epsilon, and run the whole network twice. The batched path (:mod:`gradsweep.problems.xnor_cdg`)
computes the layers before the conv once, patches the one output channel a weight touches, skips
perturbations that flip no activation, and runs the rest of the network on perturbations stacked
along the batch axis.

    .venv/bin/python benchmarks/bench_xnor_cdg.py [--channels 8] [--batch 128] [--sample 2000]
        [--loop-sample 200] [--layers conv:-2 conv:1] [--device cpu|cuda] [--full]

For each layer: the same ``--sample`` seeded weights for both methods (the loop may time only its
first ``--loop-sample`` of them, then per-weight seconds are compared), central CDG at
``--epsilon``, both weight cases. It prints seconds, seconds per weight, the speedup, and the
largest difference between the two CDG gradients on the weights both computed (same numbers).
``--full`` adds, per layer, the batched seconds of the whole layer's CDG (every weight), the
figure the GPU table of the issue asks for.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradsweep.data import load  # noqa: E402
from gradsweep.problems.xnor_resnet import XnorResNet, pretrain, probe_batches  # noqa: E402
from gradsweep.seeding import generator  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def network(channels: int, weights: str, batch: int, device: torch.device, dtype: torch.dtype, steps: int) -> XnorResNet:
    """A briefly STE-pretrained net on synthetic 32x32 images (realistic BN statistics)."""
    cfg = {"channels": channels, "weights": weights, "ste": "clipped",
           "data": {"source": "synthetic", "image_size": 32, "train_size": 4 * batch, "batch_size": batch, "batches": 1},
           "pretrain": {"steps": steps, "batch_size": batch, "lr": 0.01, "optimizer": "adam", "checkpoint_every": 10 ** 9}}
    data = load(cfg["data"], seed=0).to(device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        net = pretrain(cfg, data, seed=0, dtype=dtype, device=device, checkpoint=Path(tmp) / "ck.pt")
    return XnorResNet(channels=channels, binary_weights=weights == "binary", weights=net["weights"],
                      state=net["state"], probe_batches=probe_batches(data, batch, 1, 0))


def cdg_batched(problem: XnorResNet, layer: str, index: torch.Tensor, eps: float) -> tuple[torch.Tensor, float]:
    """CDG of the weights ``index``, and the fraction of the 2 n moves that changed the loss."""
    point, batch = problem.point(), next(problem.batches())
    problem._prefix_cache = None  # time the layers before the conv too
    step = torch.full(index.shape, eps, dtype=problem.dtype, device=problem.device)
    both = problem.perturbed_loss_changes(point, batch, layer, torch.cat([index, index]), torch.cat([step, -step]))
    return (both[: index.numel()] - both[index.numel():]) / (2 * eps), float((both != 0).double().mean())


@torch.no_grad()
def cdg_loop(problem: XnorResNet, layer: str, index: torch.Tensor, eps: float) -> torch.Tensor:
    point, batch = problem.point(), next(problem.batches())
    out = []
    for i in index.tolist():
        losses = []
        for d in (eps, -eps):
            moved = {n: t.clone() for n, t in point.items()}
            moved[layer].view(-1)[i] += d
            losses.append(problem.loss(moved, batch))
        out.append((losses[0] - losses[1]) / (2 * eps))
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sample", type=int, default=2000, help="weights per layer (seeded)")
    ap.add_argument("--loop-sample", type=int, default=200, help="of those, how many the plain loop times")
    ap.add_argument("--layers", nargs="+", default=["conv:-2", "conv:1"])
    ap.add_argument("--weights", nargs="+", default=["binary", "fp"])
    ap.add_argument("--epsilon", type=float, default=0.01)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--pretrain-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--full", action="store_true", help="also time the whole layer's batched CDG")
    ap.add_argument("--chunk-mb", type=float, default=0, help="memory budget of one stacked chunk (0: the problem's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"device {device}, {torch.get_num_threads()} threads, c = {args.channels}, batch {args.batch}, "
          f"eps {args.epsilon}, {args.dtype}")
    header = f"{'weights':7} {'layer':16} {'shape':>16} {'n':>6} {'batched s':>10} {'loop n':>6} {'loop s':>8} " \
             f"{'speedup':>8} {'max |diff|':>11} {'max |g|':>9} {'moved':>8}" + (f" {'full layer s':>12}" if args.full else "")
    print(header)
    for weights in args.weights:
        problem = network(args.channels, weights, args.batch, device, dtype, args.pretrain_steps)
        if args.chunk_mb:
            problem.chunk_bytes = int(args.chunk_mb * 2 ** 20)
        for sel in args.layers:
            layer = problem.select_layers([sel])[0]
            w = problem.point()[layer]
            n = min(args.sample, w.numel())
            index = torch.randperm(w.numel(), generator=generator("bench_xnor_cdg", layer))[:n].to(device)
            cdg_batched(problem, layer, index[:8], args.epsilon)  # warm-up
            _sync(device)
            t = time.perf_counter()
            fast, moved = cdg_batched(problem, layer, index, args.epsilon)
            _sync(device)
            t_fast = time.perf_counter() - t
            m = min(args.loop_sample, n)
            t = time.perf_counter()
            slow = cdg_loop(problem, layer, index[:m], args.epsilon)
            _sync(device)
            t_loop = time.perf_counter() - t
            speedup = (t_loop / m) / (t_fast / n)
            diff = float((fast[:m] - slow).abs().max())
            row = f"{weights:7} {sel + ' ' + layer:16} {str(tuple(w.shape)):>16} {n:6d} {t_fast:10.3f} {m:6d} " \
                  f"{t_loop:8.2f} {speedup:7.1f}x {diff:11.2e} {float(slow.abs().max()):9.2e} {100 * moved:7.1f}%"
            if args.full:
                every = torch.arange(w.numel(), device=device)
                _sync(device)
                t = time.perf_counter()
                cdg_batched(problem, layer, every, args.epsilon)
                _sync(device)
                row += f" {time.perf_counter() - t:12.2f}"
            row += f"  per batch, all {w.numel()} weights: {t_fast * w.numel() / n:.1f} s (extrapolated)"
            print(row, flush=True)
    print("speedup = (loop seconds per weight) / (batched seconds per weight), on the same weights; "
          "max |diff| compares the two CDG gradients there; moved = share of the +-eps moves that changed "
          "the loss at all (the others flip no activation and cost no forward)")


if __name__ == "__main__":
    main()
