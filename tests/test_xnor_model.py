"""The thin XNOR-ResNet-18: shapes, layer addressing, binary functions and their STE backward,
and STE pretraining that resumes from its checkpoint after a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradsweep.spec.validate import validate_kind
import torch

from gradsweep.problems.surrogates import surrogate
from gradsweep.problems.xnor_net import Ctx, activation, architecture, binary_sign, binary_weight, logits
from gradsweep.problems.xnor_resnet import build, pretrain, pretrained


# tiny tensors on a shared 2-core machine: one thread avoids thread-pool contention
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(**pretrain) -> dict:
    cfg = {
        "kind": "xnor_resnet18", "channels": 2, "weights": "binary", "ste": "clipped", "bn": "running",
        "data": {"source": "synthetic", "path": None, "batch_size": 8, "batches": 2, "image_size": 8, "train_size": 64},
        "pretrain": None, "coords": {"sample": None},
    }
    if pretrain:
        cfg["pretrain"] = {"steps": 12, "batch_size": 16, "lr": 0.01, "optimizer": "adam", "weight_decay": 1e-4,
                           "schedule": "cosine", "checkpoint_every": 2, "augment": True, **pretrain}
    return validate_kind("problem", cfg)  # canonical, as a cell passes it


@pytest.mark.parametrize("c", [1, 2, 3, 8])
def test_shapes_and_conv_addressing(c: int, tmp_path: Path) -> None:
    cfg = tiny_cfg()
    cfg["channels"] = c
    problem = build(cfg, seed=0, dtype=torch.float32, device=torch.device("cpu"), cache_dir=tmp_path)
    convs = problem.indexed_layers["conv"]
    assert len(convs) == 16
    first, eighth, second_last = problem.select_layers(["conv:1", "conv:8", "conv:-2"])
    assert (first, eighth, second_last) == ("layer1.0.conv1", "layer2.1.conv2", "layer4.1.conv1")
    point = problem.point()
    assert point[first].shape == (c, c, 3, 3)
    assert point[eighth].shape == (2 * c, 2 * c, 3, 3)
    assert point[second_last].shape == (8 * c, 8 * c, 3, 3)
    assert point["layer2.0.shortcut"].shape == (2 * c, c, 1, 1)
    assert point["fc"].shape == (10, 8 * c)
    assert list(point)[0] == "stem" and list(point)[-1] == "fc"
    x, y = next(problem.batches())
    assert x.shape == (8, 3, 8, 8) and y.shape == (8,)
    assert problem.loss(point, (x, y)).shape == ()
    out = logits(problem.blocks, point, problem.state, torch.randn(3, 3, 32, 32), problem.ctx())
    assert out.shape == (3, 10)


def test_bad_layer_selector_names_the_count(tmp_path: Path) -> None:
    problem = build(tiny_cfg(), seed=0, dtype=torch.float32, device=torch.device("cpu"), cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"'conv:17' selects no layer: this problem has 16 conv layers"):
        problem.select_layers(["conv:17"])
    with pytest.raises(ValueError, match="problem.channels"):
        architecture(0)


def test_binary_activation_forward_and_its_surrogate_backward() -> None:
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    assert binary_sign(x).tolist() == [-1, -1, -1, 1, 1, 1, 1]  # sign(0) = +1
    for variant in ("identity", "clipped", "steep2", "polynomial", "swish_sign"):
        s = surrogate(variant)
        out = activation(x, Ctx(surrogate=s))
        assert out.tolist() == binary_sign(x).tolist()
        dy = torch.arange(1.0, 8.0)
        (grad,) = torch.autograd.grad((out * dy).sum(), x)
        torch.testing.assert_close(grad, s.derivative(x.detach()) * dy)
    assert not activation(x, Ctx()).requires_grad  # the plain sign carries no gradient


def test_binary_weights_are_alpha_sign_with_a_clipped_straight_through_backward() -> None:
    w = torch.tensor([[0.5, -1.5, 0.0, 2.0], [-0.25, 0.25, 0.75, -0.5]], dtype=torch.float64).view(2, 1, 2, 2)
    w.requires_grad_(True)
    q = binary_weight(w)
    alpha = torch.tensor([1.0, 0.4375], dtype=torch.float64).view(2, 1, 1, 1)
    torch.testing.assert_close(q, alpha * torch.tensor([[1, -1, 1, 1], [-1, 1, 1, -1]], dtype=torch.float64).view(2, 1, 2, 2))
    dy = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    (grad,) = torch.autograd.grad((q * dy).sum(), w)
    s = binary_sign(w.detach())
    # d/dW [alpha_o sign(W)] with sign's backward 1{|W| <= 1}, alpha_o = mean |W[o]| exactly
    # (d|W|/dW = torch.sign(W), 0 at W = 0)
    d_abs = torch.sign(w.detach())
    expected = alpha * dy * (w.detach().abs() <= 1) + d_abs / 4 * (dy * s).sum(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("weights", ["binary", "fp"])
def test_ste_gradient_reaches_every_binary_conv(weights: str, tmp_path: Path) -> None:
    cfg = tiny_cfg()
    cfg["weights"] = weights
    problem = build(cfg, seed=1, dtype=torch.float64, device=torch.device("cpu"), cache_dir=tmp_path)
    point = {n: t.clone().requires_grad_(True) for n, t in problem.point().items()}
    batch = next(problem.batches())
    loss = problem.loss(point, batch, surrogate=surrogate("identity"))
    grads = torch.autograd.grad(loss, [point[n] for n in problem.indexed_layers["conv"]])
    assert all(g.abs().sum() > 0 for g in grads)


def test_bn_batch_mode_uses_batch_statistics(tmp_path: Path) -> None:
    running = build(tiny_cfg(), seed=0, dtype=torch.float64, device=torch.device("cpu"), cache_dir=tmp_path)
    cfg = tiny_cfg()
    cfg["bn"] = "batch"
    batch_mode = build(cfg, seed=0, dtype=torch.float64, device=torch.device("cpu"), cache_dir=tmp_path)
    x, y = next(running.batches())
    assert running.loss(running.point(), (x, y)) != batch_mode.loss(batch_mode.point(), (x, y))
    # with batch statistics a copy's loss does not depend on the copies stacked beside it
    ctx = batch_mode.ctx(groups=2)
    two = logits(batch_mode.blocks, batch_mode.point(), batch_mode.state, torch.cat([x, 3 * x]), ctx)
    one = logits(batch_mode.blocks, batch_mode.point(), batch_mode.state, x, batch_mode.ctx())
    torch.testing.assert_close(two[:8], one)


_PRETRAIN_SCRIPT = """
import json, sys, time, torch
from pathlib import Path
from gradsweep.data import load
from gradsweep.problems.xnor_resnet import pretrain
torch.set_num_threads(1)
cfg = json.loads(sys.argv[1])
data = load(cfg["data"], seed=0)
pretrain(cfg, data, seed=0, dtype=torch.float32, device=torch.device("cpu"), checkpoint=Path(sys.argv[2]),
         on_step=lambda step: time.sleep(0.25))
print("finished")
"""


def test_pretraining_killed_mid_way_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    from gradsweep.data import load

    cfg = tiny_cfg(steps=12)
    ckpt = tmp_path / "run.ckpt.pt"
    proc = subprocess.Popen([sys.executable, "-c", _PRETRAIN_SCRIPT, json.dumps(cfg), str(ckpt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.exists() and torch.load(ckpt, weights_only=True)["step"] >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"pretraining ended before it was killed: {proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 4 <= killed_at < 12

    data = load(cfg["data"], seed=0)
    cpu = torch.device("cpu")
    resumed = pretrain(cfg, data, seed=0, dtype=torch.float32, device=cpu, checkpoint=ckpt)
    whole = pretrain(cfg, data, seed=0, dtype=torch.float32, device=cpu, checkpoint=tmp_path / "fresh.ckpt.pt")
    assert resumed["resumed_from"] == killed_at and whole["resumed_from"] == 0
    for name, value in whole["weights"].items():
        assert torch.equal(resumed["weights"][name], value), name
    for name, value in whole["state"].items():
        assert torch.equal(resumed["state"][name], value), name
    assert resumed["records"] == whole["records"]
    assert [r["step"] for r in whole["records"]] == [4, 8, 12]  # one row per epoch of 64 images


def test_pretrained_network_is_cached_and_its_curve_becomes_pretrain_rows(tmp_path: Path) -> None:
    from gradsweep.data import load

    cfg = tiny_cfg(steps=4, checkpoint_every=200)
    data = load(cfg["data"], seed=0)
    cpu = torch.device("cpu")
    calls: list[int] = []
    first = pretrained(cfg, data, seed=0, dtype=torch.float32, device=cpu, cache_dir=tmp_path, on_step=calls.append)
    again = pretrained(cfg, data, seed=0, dtype=torch.float32, device=cpu, cache_dir=tmp_path, on_step=calls.append)
    assert calls == [1, 2, 3, 4]  # trained once
    assert all(torch.equal(first["weights"][n], again["weights"][n]) for n in first["weights"])
    cfg["bn"], cfg["data"]["batches"] = "batch", 1  # probe-only settings share the pretrained network
    problem = build(cfg, seed=0, dtype=torch.float32, device=cpu, cache_dir=tmp_path)
    assert torch.equal(problem.weights["fc"], first["weights"]["fc"])
    rows = problem.records
    assert [r["record"] for r in rows] == ["pretrain"] and rows[0]["step"] == 4 and rows[0]["epoch"] == 1
    assert set(rows[0]) == {"record", "step", "epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    assert 0 <= rows[0]["val_accuracy"] <= 1


SMALL_SPEC = """\
name: xnor-tiny
description: a tiny XNOR sweep for the end-to-end test
experiment: probe
problem:
  kind: xnor_resnet18
  channels: 2
  weights: binary
  data: {source: synthetic, batch_size: 16, batches: 2, image_size: 8, train_size: 256}
  coords: {sample: 60}
estimator:
  - kind: cdg
    epsilon: 0.1
  - kind: ste
    variant: clipped
params: {grid: [[conv:1], [conv:-2]]}
measure:
  lrs: [0.1, 1.0]
  reference: {kind: ste, variant: clipped}
seeds: [0]
resources: {cpu: 1, gpu: 0}
device: cpu
"""


@pytest.mark.slow
def test_a_small_probe_sweep_runs_through_ray_to_parquet_and_into_the_report(ray_local, tmp_path: Path) -> None:
    import io

    import pandas as pd

    from gradsweep.analysis.cli import build_report
    from gradsweep.executors import FaultHooks
    from gradsweep.executors.ray_executor import RayExecutor
    from gradsweep.runner import run
    from gradsweep.spec import load_spec

    spec = tmp_path / "xnor-tiny.yaml"
    spec.write_text(SMALL_SPEC)
    result = run(load_spec(spec), tmp_path / "results", RayExecutor(hooks=FaultHooks()), stream=io.StringIO())
    assert (result.done, result.failed) == (4, [])
    frame = pd.read_parquet(tmp_path / "results" / "xnor-tiny")
    assert frame["cell_id"].nunique() == 4
    probe = frame[frame["record"] == "probe"]
    assert len(probe) == 4 * 2 * 2 and probe["loss_decrease"].notna().all()
    cosine = frame[frame["record"] == "cosine"]
    assert set(cosine["layer"]) == {"layer1.0.conv1", "layer4.1.conv1", "all"}
    assert set(frame["problem.coords.sample"]) == {60} and set(frame["params"]) == {'["conv:1"]', '["conv:-2"]'}

    report = build_report(tmp_path / "results" / "xnor-tiny")
    xnor = next(s for s in report.sections if s.name == "xnor")
    assert xnor.error is None
    names = sorted(f.path.name for f in xnor.figures)
    assert sum(n.startswith("xnor-batches-") for n in names) == 1  # one setting, a panel per layer
    assert sum(n.startswith("xnor-cosine-") for n in names) == 1


def test_run_cell_puts_the_pretraining_curve_in_the_cell_table(tmp_path: Path) -> None:
    from gradsweep.cell import run_cell

    cfg = {"experiment": "probe", "problem": tiny_cfg(steps=4, checkpoint_every=2), "estimator": {"kind": "cdg"},
           "params": ["conv:8"], "measure": {"lrs": [0.1]}, "device": "cpu"}
    cfg["problem"]["data"]["batches"] = 1
    table = run_cell(cfg, cache_dir=tmp_path)
    assert list(table["record"]) == ["pretrain", "probe"]
    assert table.loc[0, "step"] == 4 and table.loc[0, "val_accuracy"] >= 0


def test_report_takes_the_best_over_lr_and_epsilon_per_batch() -> None:
    import pandas as pd

    from gradsweep.analysis.sections.xnor import best_per_batch, layer_label

    probe = pd.DataFrame({
        "batch": [0, 0, 0, 0, 1, 1, 1, 1],
        "lr": [0.1, 0.5, 0.1, 0.5, 0.1, 0.5, 0.1, 0.5],
        "estimator.epsilon": [0.1, 0.1, 0.01, 0.01, 0.1, 0.1, 0.01, 0.01],
        "loss_decrease": [0.2, -0.1, 0.3, 0.25, -0.5, -0.2, -0.4, -0.2],
    })
    best = best_per_batch(probe, ["estimator.epsilon"])
    assert best[["batch", "lr", "estimator.epsilon", "loss_decrease"]].values.tolist() == [
        [0, 0.1, 0.01, 0.3],
        [1, 0.5, 0.01, -0.2],  # a tie between epsilons goes to the first in parameter order
    ]
    assert layer_label('["conv:-2"]') == "conv:-2" and layer_label('["conv:1", "fc"]') == "conv:1, fc"


class _WritesMarker:
    """Loaded by a plain unpickler (``weights_only=False``), runs a shell command creating ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("which", ["artefact", "checkpoint"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_poisoned_pretraining_cache_file_is_refused_naming_it_and_nothing_runs(
    tmp_path: Path, which: str, writer: str
) -> None:
    import pickle
    import re

    from gradsweep.cache import cache_key
    from gradsweep.cell import run_cell
    from gradsweep.problems.xnor_resnet import pretrain_key

    marker = tmp_path / "marker"
    cfg = {"experiment": "probe", "problem": tiny_cfg(steps=4, checkpoint_every=2), "estimator": {"kind": "ste"},
           "params": ["conv:8"], "measure": {"lrs": [0.1]}, "device": "cpu"}
    key = cache_key(pretrain_key(cfg["problem"], seed=0, dtype=torch.float32))
    poisoned = tmp_path / "xnor_pretrain" / (f"{key}.pt" if which == "artefact" else f"{key}.ckpt.pt")
    poisoned.parent.mkdir()
    content = {"weights": {}, "state": {}, "records": [], "step": _WritesMarker(marker)}
    if writer == "torch.save":
        torch.save(content, poisoned)
    else:
        poisoned.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=rf"cache file '{re.escape(str(poisoned))}' .*refused and nothing in it was run"):
        run_cell(cfg, cache_dir=tmp_path)
    assert not marker.exists()
    # the bait is real: an unrestricted load runs it
    torch.load(poisoned, weights_only=False) if writer == "torch.save" else pickle.loads(poisoned.read_bytes())
    assert marker.exists()


def test_a_truncated_pretraining_checkpoint_is_an_error_naming_it(tmp_path: Path) -> None:
    from gradsweep.data import load

    cfg = tiny_cfg(steps=4)
    ckpt = tmp_path / "run.ckpt.pt"
    ckpt.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match=r"cache file '.*run.ckpt.pt' cannot be read"):
        pretrain(cfg, load(cfg["data"], seed=0), seed=0, dtype=torch.float32, device=torch.device("cpu"), checkpoint=ckpt)
