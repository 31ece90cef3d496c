"""The follow-up estimators never do worse than their documented fallbacks."""

from __future__ import annotations

import pytest
import torch

from gradsweep import estimators
from gradsweep.problems.rosenbrock import Rosenbrock
from builders import build_toy as build
from gradsweep.seeding import generator

LAYERS = ["fc1", "fc2", "fc3"]


@pytest.fixture(scope="module")
def toy():
    cfg = {"kind": "toy_mlp", "dim": 8, "data": {"batch_size": 512, "batches": 3}}
    return build(cfg, seed=0, dtype=torch.float64, device=torch.device("cpu"), cache_dir=None)


def flat(g: dict[str, torch.Tensor], layers=LAYERS) -> torch.Tensor:
    return torch.cat([g[n].flatten() for n in layers])


def loss_along(problem, point, batch, g, step, layers=LAYERS) -> float:
    """L(w - step * g_hat), the probe's measurement at one lr."""
    norm = flat(g, layers).norm()
    moved = {n: (p - step * g[n] / norm if n in layers else p) for n, p in point.items()}
    return float(problem.loss(moved, batch))


@pytest.mark.parametrize("name", ["nes_max_point", "perturbed_ste", "random_ste"])
def test_registered_and_rebuilt_from_config(name: str, toy):
    est = estimators.get(name)
    assert estimators.get(est.get_config()).get_config() == est.get_config()
    g = est.estimate(toy, toy.point(), next(toy.batches()), LAYERS, generator(0, name))
    assert set(g) == set(LAYERS)
    assert all(g[n].shape == toy.point()[n].shape for n in LAYERS)
    assert torch.isfinite(flat(g)).all()


def test_perturbed_ste_with_zero_noise_is_ste(toy):
    batch = next(toy.batches())
    ste = estimators.get("ste").estimate(toy, toy.point(), batch, LAYERS, generator(0))
    got = estimators.get({"kind": "perturbed_ste", "noise": 0.0}).estimate(toy, toy.point(), batch, LAYERS, generator(0))
    assert all(torch.equal(got[n], ste[n]) for n in LAYERS)


@pytest.mark.parametrize("noise", [0.1, 1.0])
def test_perturbed_ste_never_worse_than_ste_at_its_step(noise: float, toy):
    est = estimators.get({"kind": "perturbed_ste", "noise": noise, "candidates": 16, "step": 0.2})
    ste = estimators.get("ste")
    for b, batch in enumerate(toy.batches()):
        g = est.estimate(toy, toy.point(), batch, LAYERS, generator(0, b))
        g_ste = ste.estimate(toy, toy.point(), batch, LAYERS, generator(0, b))
        assert loss_along(toy, toy.point(), batch, g, 0.2) <= loss_along(toy, toy.point(), batch, g_ste, 0.2) + 1e-12
        assert torch.isclose(flat(g).norm(), flat(g_ste).norm())  # same length, other direction allowed


@pytest.mark.parametrize("antithetic", [False, True])
def test_nes_max_point_steps_to_the_best_sampled_point(antithetic: bool, toy):
    sigma, n = 0.05, 64
    point, batch = toy.point(), next(toy.batches())
    config = {"sigma": sigma, "samples": n, "antithetic": antithetic}
    g = estimators.get({"kind": "nes_max_point", **config}).estimate(toy, point, batch, LAYERS, generator(3, "nmp"))

    # NES's own draws from the same generator, evaluated one point at a time
    u = estimators.get({"kind": "nes", **config}).directions(point, LAYERS, generator(3, "nmp"))
    if antithetic:
        u = torch.cat([u, -u])
    sampled = []
    for uk in u:
        parts = torch.split(sigma * uk, [64, 64, 8])
        moved = {name: point[name] + d.view_as(point[name]) for name, d in zip(LAYERS, parts)}
        sampled.append(float(toy.loss(moved, batch)))
    best = min(range(len(sampled)), key=sampled.__getitem__)
    assert sampled[best] < float(toy.loss(point, batch))  # a raw student: some sample improves
    assert torch.allclose(flat(g) / flat(g).norm(), -u[best] / u[best].norm())
    # the probe at lr = sigma |u*| lands on the best sampled point
    assert loss_along(toy, point, batch, g, sigma * float(u[best].norm())) == pytest.approx(sampled[best], rel=1e-9)


@pytest.mark.parametrize("antithetic", [False, True])
def test_nes_max_point_falls_back_to_nes_at_a_minimum(antithetic: bool):
    ones = torch.ones(6, dtype=torch.float64)
    problem = Rosenbrock("pairs", ones, dtype=torch.float64, device=torch.device("cpu"))
    config = {"sigma": 0.1, "samples": 32, "antithetic": antithetic}
    g = estimators.get({"kind": "nes_max_point", **config}).estimate(
        problem, problem.point(), None, ["x"], generator(0, "min"))
    u = estimators.get({"kind": "nes", **config}).directions(problem.point(), ["x"], generator(0, "min"))
    assert (problem.losses(problem.point(), None, {"x": 0.1 * torch.cat([u, -u])}) > 0).all()  # nothing improves
    nes = estimators.get({"kind": "nes", **config}).estimate(problem, problem.point(), None, ["x"], generator(0, "min"))
    assert torch.allclose(g["x"], nes["x"])


def test_random_ste_degenerate_settings_are_ste(toy):
    batch = next(toy.batches())
    for random, ste in [
        ({"randomize": "noise", "scale": 0.0}, {"variant": "clipped"}),
        ({"randomize": "threshold", "low": 0.5, "high": 0.5}, {"variant": "clipped", "threshold": 0.5}),
    ]:
        got = estimators.get({"kind": "random_ste", **random}).estimate(toy, toy.point(), batch, LAYERS, generator(0))
        want = estimators.get({"kind": "ste", **ste}).estimate(toy, toy.point(), batch, LAYERS, generator(0))
        assert all(torch.equal(got[n], want[n]) for n in LAYERS)


@pytest.mark.parametrize("random", [{"randomize": "noise", "scale": 0.5}, {"randomize": "threshold", "low": 0.1, "high": 2.0}])
def test_random_ste_is_random_but_reproducible(random, toy):
    est = estimators.get({"kind": "random_ste", **random})
    batch = next(toy.batches())
    a = est.estimate(toy, toy.point(), batch, LAYERS, generator(0))
    b = est.estimate(toy, toy.point(), batch, LAYERS, generator(0))
    c = est.estimate(toy, toy.point(), batch, LAYERS, generator(1))
    assert torch.equal(flat(a), flat(b)) and not torch.equal(flat(a), flat(c))


def test_random_ste_rejects_low_above_high():
    with pytest.raises(ValueError, match=r"estimator: expected low <= high, got low=0\.9 high=0\.2"):
        estimators.get({"kind": "random_ste", "low": 0.9, "high": 0.2})


# -- the report's follow-up section (analysis: pandas only) ----------------------------------


def test_report_counts_batches_where_an_estimator_beats_vanilla_ste(tmp_path):
    from gradsweep.analysis.core import load_results
    from gradsweep.analysis.sections import followups as section
    from tests.analysis_synthetic import probe_rows, write_cell

    def cell(estimator: dict, best: list[float]) -> str:
        # two lrs per batch; the best decrease is at lr 0.2
        rows = probe_rows({(b, lr): d * (1.0 if lr == 0.2 else 0.5) for b, d in enumerate(best) for lr in (0.1, 0.2)})
        return write_cell(tmp_path, {"problem.kind": "toy_mlp", "problem.dim": 4, "seed": 0, **estimator}, rows)

    cell({"estimator.kind": "ste", "estimator.variant": "clipped", "estimator.threshold": 1.0}, [0.1, 0.2, 0.3, 0.4])
    cell({"estimator.kind": "ste", "estimator.variant": "clipped", "estimator.threshold": 0.5}, [0.05, 0.05, 0.05, 0.9])
    for n, best in [(1, [0.2, 0.1, 0.5, 0.4]), (2, [0.3, 0.3, 0.4, 0.5])]:
        cell({"estimator.kind": "sr_ste", "estimator.samples": n, "estimator.tau": 0.1}, best)

    data = load_results(tmp_path)
    per_batch = section.best_per_batch(data)
    assert per_batch["best_lr"].eq(0.2).all()
    rates = section.beat_rates(data, per_batch).merge(data.cells.drop_duplicates("config")[["config", "estimator_label"]])
    wins = dict(zip(rates["estimator_label"], zip(rates["wins"], rates["batches"])))
    # ties (batch 3 of N = 1) are not wins; the t = 0.5 variant is not vanilla, so it is counted too
    assert sorted(wins.values()) == [(1, 4), (2, 4), (4, 4)]

    figures = section.section(data, tmp_path / "figures")
    titles = [f.title for f in figures]
    assert any(t.startswith("sr-STE vs N") for t in titles) and any(t.startswith("beats vanilla STE") for t in titles)
    assert all(f.path.is_file() for f in figures)
