"""Expansion is a pure function from a spec to canonical cells with stable ids (table-driven)."""

from __future__ import annotations

import copy
import json

import pytest

from gradsweep.spec import (
    Cell, canonical_cell, cell_id, count_cells, expand, load_spec, validate_estimator,
)
from gradsweep.spec.yamlload import load_yaml


def base(**over) -> dict:
    raw = {"name": "t", "problem": {"kind": "toy_mlp"}, "estimator": {"kind": "cdg"}}
    raw.update(over)
    return raw


def ids(cells: list[Cell]) -> set[str]:
    return {c.id for c in cells}


@pytest.mark.parametrize(
    "over, n",
    [
        ({}, 1),
        ({"problem": {"kind": "toy_mlp", "dim": {"grid": [8, 16, 32, 64]}}}, 4),
        ({"problem": {"kind": "toy_mlp", "dim": {"grid": [8, 16]}, "depth": {"grid": [2, 3, 4]}}}, 6),
        ({"seeds": [0, 1, 2]}, 3),
        ({"seeds": {"arange": [0, 5, 1]}}, 5),
        # the union: 4 CDG + 4 x 3 NES + 4 STE, each entry crossed on its own
        ({"estimator": [
            {"kind": "cdg", "epsilon": {"grid": [1, 0.1, 0.01, 0.001]}},
            {"kind": "nes", "sigma": {"grid": [1, 0.1, 0.01, 0.001]}, "samples": {"grid": [500, 5000, 50000]}},
            {"kind": "ste", "variant": {"grid": ["clipped", "steep2", "polynomial", "swish_sign"]}},
        ]}, 20),
        # zip pairs instead of crossing
        ({"estimator": {"kind": "nes", "zip": {"sigma": [1, 0.1, 0.01], "samples": [10, 100, 1000]}}}, 3),
        # a zip entry's own grid still crosses
        ({"estimator": {"kind": "nes", "zip": {"sigma": [1, {"grid": [0.1, 0.2]}], "samples": [10, 100]}}}, 3),
        # a grid of whole mappings
        ({"measure": {"reference": {"grid": [{"kind": "cdg"}, {"kind": "autograd"}]}}}, 2),
        # a grid of kinds
        ({"estimator": {"kind": {"grid": ["cdg", "autograd", "ste"]}}}, 3),
        # duplicate union entries give one cell
        ({"estimator": [{"kind": "cdg"}, {"kind": "cdg", "epsilon": 0.1}]}, 1),
        # dims x union x seeds
        ({"problem": {"kind": "toy_mlp", "dim": {"grid": [8, 16]}},
          "estimator": [{"kind": "cdg", "epsilon": {"grid": [1, 0.1]}}, {"kind": "ste"}],
          "seeds": [0, 1]}, 12),
    ],
)
def test_cell_count_is_the_product_of_the_grids(over: dict, n: int) -> None:
    cells = expand(base(**over))
    assert len(cells) == n
    assert len(ids(cells)) == n
    assert count_cells(base(**over)) >= n


def test_every_cell_id_is_the_hash_of_its_canonical_config() -> None:
    cells = expand(base(problem={"kind": "toy_mlp", "dim": {"grid": [8, 16]}}, seeds=[0, 1]))
    for cell in cells:
        assert cell.id == cell_id(cell.config)
        assert len(cell.id) == 16 and int(cell.id, 16) >= 0
        assert canonical_cell(cell.config) == cell.config
        assert list(cell.config) == sorted(cell.config)


def test_ids_do_not_depend_on_key_order() -> None:
    a = load_spec("name: t\nproblem: {kind: toy_mlp, dim: 8, depth: 3}\nestimator: {kind: nes, sigma: 0.1, samples: 50}\n")
    b = load_spec("estimator: {samples: 50, sigma: 0.1, kind: nes}\nproblem: {depth: 3, dim: 8, kind: toy_mlp}\nname: t\n")
    assert [c.id for c in a.cells] == [c.id for c in b.cells]


def test_adding_values_to_a_grid_keeps_the_other_ids() -> None:
    small = expand(base(problem={"kind": "toy_mlp", "dim": {"grid": [8, 16]}},
                        estimator={"kind": "cdg", "epsilon": {"grid": [1, 0.1]}}, seeds=[0]))
    large = expand(base(problem={"kind": "toy_mlp", "dim": {"grid": [4, 8, 16, 32]}},
                        estimator={"kind": "cdg", "epsilon": {"grid": [1, 0.1, 0.01]}}, seeds=[0, 1]))
    assert ids(small) < ids(large)
    assert len(large) == 4 * 3 * 2


def test_sweep_level_keys_do_not_change_ids() -> None:
    a = expand(base(name="a", description="x", resources={"cpu": 1}))
    b = expand(base(name="b", description="y", resources={"cpu": 4, "gpu": 0.5}))
    assert ids(a) == ids(b)
    assert b[0].resources == {"cpu": 4.0, "gpu": 0.5}


def test_numbers_are_normalised() -> None:
    one = expand(base(estimator={"kind": "cdg", "epsilon": 1}))[0]
    one_float = expand(base(estimator={"kind": "cdg", "epsilon": 1.0}))[0]
    assert one.id == one_float.id
    assert one.config["estimator"]["epsilon"] == 1.0 and isinstance(one.config["estimator"]["epsilon"], float)
    # an integral float where the catalog says int becomes an int
    assert expand(base(problem={"kind": "toy_mlp", "dim": 16.0}))[0].config["problem"]["dim"] == 16


def test_yaml_exponent_without_dot_is_a_number() -> None:
    sweep = load_spec("name: t\nproblem: {kind: toy_mlp}\nestimator: {kind: cdg, epsilon: 1e-3}\n")
    assert sweep.cells[0].config["estimator"]["epsilon"] == 0.001


def test_defaults_are_filled_and_non_applicable_parameters_are_absent() -> None:
    cfg = expand(base(estimator={"kind": "ste", "variant": "steep2"}))[0].config
    assert cfg["estimator"] == {"kind": "ste", "variant": "steep2"}  # no threshold, no beta
    assert cfg["problem"]["data"] == {"batch_size": 16000, "batches": 10}
    assert cfg["problem"]["pretrain"] is None
    assert cfg["measure"]["lrs"] == [1e-05, 0.0001, 0.001, 0.01, 0.1, 1.0]
    assert "step" not in cfg  # step applies to descent and train only
    assert cfg["dtype"] == "float32" and cfg["seed"] == 0

    descent = expand(base(experiment="descent", problem={"kind": "rosenbrock"}))[0].config
    assert "measure" not in descent
    assert descent["step"]["decay"] is None
    assert descent["dtype"] == "float64"  # rosenbrock's default


def test_a_parameter_applies_where_its_condition_holds() -> None:
    cells = expand(base(estimator={"kind": "ste", "variant": {"grid": ["clipped", "steep2"]}, "threshold": 0.5}))
    assert sorted((c.config["estimator"]["variant"], c.config["estimator"].get("threshold")) for c in cells) == [
        ("clipped", 0.5), ("steep2", None),
    ]


def test_a_key_of_one_kind_in_a_grid_of_kinds_applies_to_that_kind() -> None:
    cells = expand(base(estimator={"kind": {"grid": ["cdg", "nes"]}, "epsilon": 0.5}))
    assert sorted(c.config["estimator"].get("epsilon", 0) for c in cells) == [0, 0.5]


def test_ranges_expand_to_plain_lists() -> None:
    def lrs(spec: dict) -> list[float]:
        return expand(base(measure={"lrs": spec}))[0].config["measure"]["lrs"]

    assert lrs({"linspace": [0.01, 0.99, 50]})[:3] == [0.01, 0.03, 0.05]
    assert len(lrs({"linspace": [0.01, 0.99, 50]})) == 50
    assert lrs({"logspace": [-5, 0, 6]}) == [1e-05, 0.0001, 0.001, 0.01, 0.1, 1.0]
    assert lrs({"arange": [0.01, 0.1, 0.02]}) == [0.01, 0.03, 0.05, 0.07, 0.09]
    assert lrs([1, 0.5]) == [1.0, 0.5]
    # ranges inside a list are expanded in place; a repeated value is kept once
    assert lrs([{"logspace": [-2, 0, 3]}, 0.5, {"arange": [0.01, 0.05, 0.02]}]) == [0.01, 0.1, 1.0, 0.5, 0.03]


def test_zip_pairs_the_keys() -> None:
    cells = expand(base(estimator={"kind": "nes", "zip": {"sigma": [1, 0.1], "samples": [10, 100]}}))
    assert sorted((c.config["estimator"]["sigma"], c.config["estimator"]["samples"]) for c in cells) == [
        (0.1, 100), (1.0, 10),
    ]


def test_zip_may_pair_whole_top_level_sections() -> None:
    cells = expand({"name": "t", "zip": {
        "problem": [{"kind": "toy_mlp", "dim": 8}, {"kind": "toy_mlp", "dim": 64}],
        "estimator": [{"kind": "nes", "samples": 100}, [{"kind": "nes", "samples": 1000}, {"kind": "cdg"}]],
    }})
    assert sorted((c.config["problem"]["dim"], c.config["estimator"]["kind"]) for c in cells) == [
        (8, "nes"), (64, "cdg"), (64, "nes"),
    ]


def test_seeds_are_crossed_with_everything() -> None:
    cells = expand(base(estimator=[{"kind": "cdg"}, {"kind": "ste"}], seeds=[3, 7]))
    assert sorted((c.config["estimator"]["kind"], c.config["seed"]) for c in cells) == [
        ("cdg", 3), ("cdg", 7), ("ste", 3), ("ste", 7),
    ]


def test_expand_is_pure() -> None:
    raw = base(problem={"kind": "toy_mlp", "dim": {"grid": [8, 16]}}, seeds=[0, 1])
    before = copy.deepcopy(raw)
    first, second = expand(raw), expand(raw)
    assert raw == before
    assert [(c.id, c.config) for c in first] == [(c.id, c.config) for c in second]


def test_a_yaml_spec_and_its_json_twin_give_the_same_cells() -> None:
    text = "name: t\nproblem: {kind: toy_mlp, dim: {grid: [8, 16]}}\nestimator: [{kind: cdg}, {kind: nes}]\n"
    assert ids(load_spec(text).cells) == ids(expand(json.loads(json.dumps(load_yaml(text)))))


def test_load_spec_reads_a_file(tmp_path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text("name: demo\ndescription: hello\nproblem: {kind: toy_mlp}\nestimator: cdg\n")
    sweep = load_spec(path)
    assert (sweep.name, sweep.description, sweep.experiment, sweep.path) == ("demo", "hello", "probe", path)
    assert sweep.source_text == path.read_text()
    assert len(sweep.cells) == 1


def test_validate_estimator_fills_defaults() -> None:
    assert validate_estimator({"kind": "cdg"}) == {"kind": "cdg", "epsilon": 0.1, "mode": "central"}
    assert validate_estimator({"kind": "ste", "variant": "clipped", "threshold": 1}) == {
        "kind": "ste", "variant": "clipped", "threshold": 1.0,
    }
    assert validate_estimator("autograd") == {"kind": "autograd"}


def test_canonical_cell_accepts_a_loose_config() -> None:
    cfg = canonical_cell({"estimator": {"kind": "cdg", "epsilon": 1}, "problem": {"kind": "rosenbrock", "n": 4}})
    assert cfg["problem"] == {"kind": "rosenbrock", "n": 4, "variant": "pairs", "x0": {"randint": [-10, 10]}}
    assert cfg["estimator"]["epsilon"] == 1.0
    assert cfg["seed"] == 0 and cfg["dtype"] == "float64"
    spec_cell = expand({"name": "x", "problem": {"kind": "rosenbrock", "n": 4}, "estimator": {"kind": "cdg", "epsilon": 1}})[0]
    assert cell_id(cfg) == spec_cell.id
