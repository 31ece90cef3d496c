"""The example plugin, installed as a user would (pip install -e), used by a spec next to built-in
kinds: its numbers equal a plain loop written here, and its package is in every row's provenance."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugin"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed_plugin():
    """The example plugin installed into this environment for the module's tests, then removed."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "-e", str(PLUGIN)], check=True)
    try:
        yield
    finally:
        subprocess.run([*pip, "uninstall", "-y", "gradsweep-example-plugin"], check=True)


SPEC = """\
name: with-plugin
problem: {kind: toy_mlp, dim: 5, data: {batch_size: 256, batches: 2}}
estimator:
  - {kind: tanh_ste, beta: {grid: [1.0, 3.0]}}
  - {kind: ste, variant: gaussian, scale: 0.3}
  - {kind: ste, variant: clipped}
  - {kind: cdg, epsilon: 0.1}
measure: {lrs: [0.1, 1.0]}
dtype: float64
"""


@contextlib.contextmanager
def plugin_in_this_process():
    """The plugin's kinds in this (already started) interpreter too, for as long as the block
    runs: its folder on sys.path and the registry loaded again; both undone after."""
    from gradsweep import registry

    sys.path.insert(0, str(PLUGIN))
    try:
        registry.reload()
        yield
    finally:
        sys.path.remove(str(PLUGIN))
        for name in [m for m in sys.modules if m.startswith("gradsweep_example")]:
            del sys.modules[name]
        registry.reload()


def _gradsweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradsweep", *args], capture_output=True, text=True, timeout=300)


def _plain_ste_grad_norm(problem, batch, derivative) -> float:
    """The STE gradient of the toy written out by hand: sign forward, ``derivative`` backward."""
    w = problem.point()
    x, y = batch
    z1 = x @ w["fc1"].T
    h1 = torch.where(z1 >= 0, 1.0, -1.0).to(x.dtype)
    z2 = h1 @ w["fc2"].T
    h2 = torch.where(z2 >= 0, 1.0, -1.0).to(x.dtype)
    out = h2 @ w["fc3"].T
    dout = 2.0 * (out - y) / out.numel()
    g3 = dout.T @ h2
    dz2 = (dout @ w["fc3"]) * derivative(z2)
    g2 = dz2.T @ h1
    dz1 = (dz2 @ w["fc2"]) * derivative(z1)
    g1 = dz1.T @ x
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in (g1, g2, g3)))


def test_a_sweep_uses_plugin_kinds_like_builtin_ones(installed_plugin, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    kinds = _gradsweep("kinds", "estimator")
    assert "tanh_ste" in kinds.stdout and "[gradsweep-example-plugin 0.1.0]" in kinds.stdout
    plan = _gradsweep("plan", str(spec), "--results", str(tmp_path / "results"))
    assert plan.returncode == 0, plan.stderr
    assert "tanh_ste" in plan.stdout
    run = _gradsweep("run", str(spec), "--results", str(tmp_path / "results"), "--local")
    assert run.returncode == 0, run.stderr

    rows = pd.read_parquet(tmp_path / "results" / "with-plugin")
    probe = rows[rows["record"] == "probe"]
    assert len(probe.groupby("cell_id")) == 5
    plugin_rows = probe[(probe["estimator.kind"] == "tanh_ste") | (probe["estimator.variant"] == "gaussian")]
    assert set(plugin_rows["plugins"]) == {"gradsweep-example-plugin==0.1.0"}
    assert probe[probe["estimator.kind"] == "cdg"]["plugins"].isna().all()

    sys.path.insert(0, str(Path(__file__).parent))
    from builders import build_toy

    problem = build_toy({"dim": 5, "data": {"batch_size": 256, "batches": 2}}, dtype=torch.float64)
    batches = list(problem.batches())

    def tanh_derivative(beta):
        return lambda z: beta * (1 - torch.tanh(beta * z) ** 2)

    def gaussian_derivative(s):
        return lambda z: 2 / (s * math.sqrt(2 * math.pi)) * torch.exp(-z * z / (2 * s * s))

    expected = {
        ("tanh_ste", 1.0): tanh_derivative(1.0),
        ("tanh_ste", 3.0): tanh_derivative(3.0),
        ("gaussian", 0.3): gaussian_derivative(0.3),
    }
    for (name, value), derivative in expected.items():
        if name == "tanh_ste":
            cell = probe[(probe["estimator.kind"] == "tanh_ste") & (probe["estimator.beta"] == value)]
        else:
            cell = probe[(probe["estimator.variant"] == "gaussian") & (probe["estimator.scale"] == value)]
        for b, batch in enumerate(batches):
            got = cell[cell["batch"] == b]["grad_norm"].unique()
            assert len(got) == 1
            assert got[0] == pytest.approx(_plain_ste_grad_norm(problem, batch, derivative), rel=1e-9), (name, value, b)


CNN_SPEC = """\
name: plugin-cnn
problem:
  kind: torch_module
  model: {kind: tiny_bnn, width: 3, depth: 2, padding: 0}
  data: {kind: synthetic_images, image_size: 8, batch_size: 12, batches: 1}
params: [conv:2]
estimator:
  - {kind: cdg, epsilon: 0.05}
  - {kind: ste, variant: gaussian}
  - {kind: nes, sigma: 0.1, samples: 20}
measure: {lrs: [0.1]}
dtype: float64
"""


def test_cdg_on_the_plugins_binary_cnn_equals_a_plain_loop(installed_plugin, tmp_path: Path) -> None:
    # width 3 without padding: a binary conv sums 27 products of +-1, never exactly 0, so no
    # pre-activation of a fresh network (BatchNorm maps 0 to 0) sits on sign's tie, where the
    # module's own rounding, not the estimator, would decide the step (docs/plugins.md)
    spec = tmp_path / "cnn.yaml"
    spec.write_text(CNN_SPEC)
    run = _gradsweep("run", str(spec), "--results", str(tmp_path / "results"), "--local")
    assert run.returncode == 0, run.stderr + run.stdout
    rows = pd.read_parquet(tmp_path / "results" / "plugin-cnn")
    probe = rows[rows["record"] == "probe"]
    assert set(probe["estimator.kind"]) == {"cdg", "ste", "nes"}
    assert set(probe["plugins"]) == {"gradsweep-example-plugin==0.1.0"}
    got = float(probe[probe["estimator.kind"] == "cdg"]["grad_norm"].iloc[0])

    # the same module and batch, then central differences one coordinate at a time
    with plugin_in_this_process():
        from gradsweep.problems import build_problem

        problem = build_problem({"kind": "torch_module", "model": {"kind": "tiny_bnn", "width": 3, "depth": 2, "padding": 0},
                                 "data": {"kind": "synthetic_images", "image_size": 8, "batch_size": 12, "batches": 1}},
                                seed=0, dtype=torch.float64, device=torch.device("cpu"), cache_dir=tmp_path)
    module = problem.module
    (x, y), = problem.batches()
    weight = dict(module.named_parameters())["features.3.weight"]
    eps, grads = 0.05, []
    with torch.no_grad():
        for i in range(weight.numel()):
            values = []
            for sign in (1, -1):
                saved = weight.view(-1)[i].item()
                weight.view(-1)[i] = saved + sign * eps
                values.append(float(torch.nn.functional.cross_entropy(module(x), y)))
                weight.view(-1)[i] = saved
            grads.append((values[0] - values[1]) / (2 * eps))
    assert got == pytest.approx(math.sqrt(sum(g * g for g in grads)), rel=1e-9)


def test_a_plugin_parameter_of_the_wrong_type_is_named(installed_plugin, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nproblem: {kind: toy_mlp}\nestimator: {kind: tanh_ste, beta: sharp}\n")
    out = _gradsweep("plan", str(spec), "--results", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "line 3: estimator.beta: expected a number > 0, got the string 'sharp'" in out.stderr
