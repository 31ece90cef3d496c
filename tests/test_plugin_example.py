"""The example plugin, installed as a user would (pip install -e), used by a spec next to built-in
kinds: its numbers equal a plain loop written here, and its package is in every row's provenance."""

from __future__ import annotations

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
  - {kind: ste, variant: sigmoid, alpha: 2.5}
  - {kind: ste, variant: clipped}
  - {kind: cdg, epsilon: 0.1}
measure: {lrs: [0.1, 1.0]}
dtype: float64
"""


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
    plugin_rows = probe[(probe["estimator.kind"] == "tanh_ste") | (probe["estimator.variant"] == "sigmoid")]
    assert set(plugin_rows["plugins"]) == {"gradsweep-example-plugin==0.1.0"}
    assert probe[probe["estimator.kind"] == "cdg"]["plugins"].isna().all()

    sys.path.insert(0, str(Path(__file__).parent))
    from builders import build_toy

    problem = build_toy({"dim": 5, "data": {"batch_size": 256, "batches": 2}}, dtype=torch.float64)
    batches = list(problem.batches())

    def tanh_derivative(beta):
        return lambda z: beta * (1 - torch.tanh(beta * z) ** 2)

    def sigmoid_derivative(alpha):
        return lambda z: 2 * alpha * torch.sigmoid(alpha * z) * (1 - torch.sigmoid(alpha * z))

    expected = {
        ("tanh_ste", 1.0): tanh_derivative(1.0),
        ("tanh_ste", 3.0): tanh_derivative(3.0),
        ("sigmoid", 2.5): sigmoid_derivative(2.5),
    }
    for (name, value), derivative in expected.items():
        if name == "tanh_ste":
            cell = probe[(probe["estimator.kind"] == "tanh_ste") & (probe["estimator.beta"] == value)]
        else:
            cell = probe[(probe["estimator.variant"] == "sigmoid") & (probe["estimator.alpha"] == value)]
        for b, batch in enumerate(batches):
            got = cell[cell["batch"] == b]["grad_norm"].unique()
            assert len(got) == 1
            assert got[0] == pytest.approx(_plain_ste_grad_norm(problem, batch, derivative), rel=1e-9), (name, value, b)


def test_a_plugin_parameter_of_the_wrong_type_is_named(installed_plugin, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nproblem: {kind: toy_mlp}\nestimator: {kind: tanh_ste, beta: sharp}\n")
    out = _gradsweep("plan", str(spec), "--results", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "line 3: estimator.beta: expected a number > 0, got the string 'sharp'" in out.stderr
