"""Benchmark: CDG on one 3x3 conv of a user-defined binary CNN, chain fast path vs plain loop.

The network is written as a user would (a class with its own ``forward``, gradsweep's ``Sign``
and ``BinaryConv2d`` marking the binary parts) and trained for a few STE steps in a plain torch
loop (``Sign(surrogate="clipped")``), so BN statistics and weights are realistic. It then becomes
a :class:`~gradsweep.problems.torch_module.TorchModuleProblem` and central CDG of one binary conv
is computed two ways on the same seeded weights:

- batched: :meth:`TorchModuleProblem.perturbed_loss_changes` (the torch.fx chain fast path: the
  layers before the conv once, the K moved channels in one conv, only the (image, weight) pairs
  whose sign flips through the rest), the prefix cache cleared so its cost is included;
- plain loop: for every weight, copy the point, move that weight by +-epsilon, run the whole
  network twice (``problem.loss``).

The two run alternately, ``--repeats`` times; min and median seconds per weight are printed, with
the speedup of the medians, the largest difference between the two CDG gradients, and ``uptime``
load before and after (the machine is shared: read figures next to the load).

    .venv/bin/python benchmarks/bench_torch_module_cdg.py [--channels 16] [--image 16] [--batch 64]
        [--layer conv:2] [--loop-sample 100] [--repeats 3] [--epsilon 0.1] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradsweep.nn import BinaryConv2d, Sign  # noqa: E402
from gradsweep.problems.torch_module import TorchModuleProblem, builtin_batches  # noqa: E402
from gradsweep.seeding import generator  # noqa: E402


class UserBinaryCNN(nn.Module):
    """fp stem; three binary 3x3 convs with BN and sign (the second strided); pool; fp head."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.stem, self.bn0, self.act0 = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), Sign("clipped")
        self.conv1, self.bn1, self.act1 = BinaryConv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), Sign("clipped")
        self.conv2, self.bn2, self.act2 = BinaryConv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), Sign("clipped")
        self.conv3 = BinaryConv2d(c, 2 * c, 3, stride=2, padding=1, bias=False)
        self.bn3, self.act3 = nn.BatchNorm2d(2 * c), Sign("clipped")
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(2 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.stem(x)))
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.fc(self.pool(x).flatten(1))


def trained(c: int, image: int, batch: int, steps: int) -> tuple[nn.Module, list]:
    """The user's own STE training loop (Adam, synthetic images), then the probe batch."""
    torch.manual_seed(0)
    net = UserBinaryCNN(c)
    train = builtin_batches("synthetic_images", {"image_size": image, "batch_size": batch, "batches": steps}, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    for x, y in train:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    probe = builtin_batches("synthetic_images", {"image_size": image, "batch_size": batch, "batches": 1}, seed=2)
    return net, probe


def cdg_batched(problem: TorchModuleProblem, layer: str, index: torch.Tensor, eps: float) -> tuple[torch.Tensor, float]:
    point, batch = problem.point(), next(problem.batches())
    problem._prefix_cache = None  # time the layers before the conv too
    step = torch.full(index.shape, eps, dtype=problem.dtype)
    both = problem.perturbed_loss_changes(point, batch, layer, torch.cat([index, index]), torch.cat([step, -step]))
    return (both[: index.numel()] - both[index.numel():]) / (2 * eps), float((both != 0).double().mean())


@torch.no_grad()
def cdg_loop(problem: TorchModuleProblem, layer: str, index: torch.Tensor, eps: float) -> torch.Tensor:
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


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--image", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--layer", default="conv:3", help="a 3x3 binary conv (conv:1 is the fp stem)")
    ap.add_argument("--loop-sample", type=int, default=100, help="weights the plain loop times per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    net, probe = trained(args.channels, args.image, args.batch, args.train_steps)
    problem = TorchModuleProblem(net, probe, dtype=torch.float32)
    layer = problem.select_layers([args.layer])[0]
    w = problem.point()[layer]
    assert problem.fast_path(layer) is None, problem.fast_path(layer)
    every = torch.arange(w.numel())
    loop_index = torch.randperm(w.numel(), generator=generator("bench_torch_module_cdg", layer))[:args.loop_sample]
    print(f"{torch.get_num_threads()} threads, c = {args.channels}, image {args.image}, batch {args.batch}, "
          f"layer {args.layer} = {layer} {tuple(w.shape)} ({w.numel()} weights), eps {args.epsilon}, float32")
    print(f"before: {load()}")
    cdg_batched(problem, layer, every[:8], args.epsilon)  # warm-up
    fast_s, loop_s = [], []
    for r in range(args.repeats):
        t = time.perf_counter()
        fast, moved = cdg_batched(problem, layer, every, args.epsilon)
        fast_s.append((time.perf_counter() - t) / every.numel())
        t = time.perf_counter()
        slow = cdg_loop(problem, layer, loop_index, args.epsilon)
        loop_s.append((time.perf_counter() - t) / loop_index.numel())
        print(f"  repeat {r + 1}: batched {fast_s[-1] * 1e3:.3f} ms/weight ({fast_s[-1] * every.numel():.2f} s for "
              f"the layer), loop {loop_s[-1] * 1e3:.2f} ms/weight, {load()}", flush=True)
    diff = float((fast[loop_index] - slow).abs().max())
    print(f"after: {load()}")
    print(f"{'method':8} {'min ms/weight':>14} {'median ms/weight':>17}")
    print(f"{'batched':8} {min(fast_s) * 1e3:14.3f} {statistics.median(fast_s) * 1e3:17.3f}")
    print(f"{'loop':8} {min(loop_s) * 1e3:14.3f} {statistics.median(loop_s) * 1e3:17.3f}")
    print(f"speedup (median / median): {statistics.median(loop_s) / statistics.median(fast_s):.1f}x, "
          f"(min / min): {min(loop_s) / min(fast_s):.1f}x; max |g_batched - g_loop| = {diff:.2e} "
          f"(max |g| {float(slow.abs().max()):.2e}); moves that changed the loss: {100 * moved:.1f}%")


if __name__ == "__main__":
    main()
