"""Every spec shipped in specs/ loads, expands to the documented number of cells, and says which
figure of the notes it reproduces."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradsweep.spec import canonical_cell, cell_id, count_cells, load_spec
from gradsweep.spec.yamlload import load_yaml

SPECS = Path(__file__).resolve().parent.parent / "specs"
FILES = sorted(SPECS.glob("*.yaml"))

# The cell count each spec's header promises (specs not listed are checked for the rest).
EXPECTED_CELLS = {
    "quickstart.yaml": 20,  # (2 CDG + 1 NES + 2 STE) x 2 dims x 2 seeds
    "toy-raw.yaml": 384,  # (4 CDG + 4 x 3 x 2 NES (plain, antithetic) + 4 STE) x 4 dims x 3 seeds
    "toy-pretrained.yaml": 384,
    "sr-ste-raw.yaml": 66,  # 2 batch sizes x (10 sr-STE + 1 STE) x 3 seeds
    "sr-ste-raw-fixed.yaml": 66,
    "notes-check.yaml": 36,  # 3 activations x 2 inits x 2 CDG modes x 3 seeds
    "rosenbrock-descent.yaml": 6,  # 2 variants x 3 seeds
}


def test_the_shipped_specs_are_there() -> None:
    assert set(EXPECTED_CELLS) <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_spec_file_loads_and_expands(path: Path) -> None:
    sweep = load_spec(path)
    assert sweep.cells, f"{path.name} makes no cells"
    assert len({c.id for c in sweep.cells}) == len(sweep.cells)
    assert len(sweep.cells) <= count_cells(load_yaml(path.read_text()))
    # the fast expansion agrees with canonicalising each cell on its own (a sample of about 10 cells)
    for cell in sweep.cells[:: max(1, len(sweep.cells) // 10)]:
        assert cell_id(canonical_cell(cell.config)) == cell.id
    if path.name in EXPECTED_CELLS:
        assert len(sweep.cells) == EXPECTED_CELLS[path.name]
        assert sweep.name == path.stem


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_spec_file_has_a_header_comment(path: Path) -> None:
    header = path.read_text().splitlines()[0]
    assert header.startswith("# "), f"{path.name} should open with a comment saying what it reproduces"


def test_quickstart_is_small() -> None:
    sweep = load_spec(SPECS / "quickstart.yaml")
    kinds = {c.config["estimator"]["kind"] for c in sweep.cells}
    assert {"cdg", "nes", "ste"} <= kinds
    assert all(c.config["problem"]["dim"] <= 8 and c.config["problem"]["data"]["batch_size"] <= 1024 for c in sweep.cells)
    assert all(c.config["measure"]["reference"] is not None for c in sweep.cells)


def test_toy_specs_use_the_notes_grids() -> None:
    for name in ("toy-raw.yaml", "toy-pretrained.yaml"):
        cells = load_spec(SPECS / name).cells
        assert {c.config["problem"]["dim"] for c in cells} == {8, 16, 32, 64}
        assert {c.config["estimator"]["epsilon"] for c in cells if c.config["estimator"]["kind"] == "cdg"} == {
            1.0, 0.1, 0.01, 0.001,
        }
        nes = [c.config["estimator"] for c in cells if c.config["estimator"]["kind"] == "nes"]
        assert {e["samples"] for e in nes} == {500, 5000, 50000}
        assert {e["sigma"] for e in nes} == {1.0, 0.1, 0.01, 0.001}
        assert {e["antithetic"] for e in nes} == {False, True}
        lrs = cells[0].config["measure"]["lrs"]
        assert lrs[:6] == [1e-05, 0.0001, 0.001, 0.01, 0.1, 1.0] and lrs[-1] == 0.99 and len(lrs) == 55
    pretrain = load_spec(SPECS / "toy-pretrained.yaml").cells[0].config["problem"]["pretrain"]
    assert (pretrain["until"], pretrain["batch_size"]) == ("plateau", 16000)


NOTES_TOY_SPECS = ("toy-raw.yaml", "toy-pretrained.yaml", "sr-ste-raw.yaml", "sr-ste-raw-fixed.yaml",
                   "sr-ste-pretrained.yaml", "followups.yaml", "toy-train.yaml")


@pytest.mark.parametrize("name", NOTES_TOY_SPECS)
def test_the_notes_specs_use_the_notes_init_and_pretrain_until_the_loss_stops_falling(name: str) -> None:
    for cell in load_spec(SPECS / name).cells:
        assert cell.config["problem"]["init"] == "torch_default"
        pretrain = cell.config["problem"]["pretrain"]
        assert pretrain is None or pretrain["until"] == "plateau"


def test_sr_ste_raw_judges_as_the_notes_did_and_the_fixed_variant_is_its_own_spec() -> None:
    from gradsweep.spec.inert import inert_warnings

    for name, evaluate in (("sr-ste-raw.yaml", "estimator"), ("sr-ste-raw-fixed.yaml", "plain")):
        cells = load_spec(SPECS / name).cells
        assert {c.config["measure"]["evaluate"] for c in cells} == {evaluate}
        assert inert_warnings(c.config for c in cells) == []  # no tau grid computing the same cells
    sr = [c.config["estimator"] for c in load_spec(SPECS / "sr-ste-raw.yaml").cells if c.config["estimator"]["kind"] == "sr_ste"]
    # each sample count draws its own rounding noise, as each N was its own run in the notes
    assert {(e["samples"], e["seed"]) for e in sr} == {(n, n) for n in range(1, 11)}


def test_notes_check_runs_both_cdg_modes_and_both_inits() -> None:
    cells = load_spec(SPECS / "notes-check.yaml").cells
    assert {(c.config["measure"]["reference"]["mode"], c.config["problem"]["init"]) for c in cells} == {
        (m, i) for m in ("central", "forward") for i in ("torch_default", "normal")}
    assert {c.config["measure"]["reference"]["epsilon"] for c in cells} == {0.1}
    assert {c.config["problem"]["dim"] for c in cells} == {32}


def test_rosenbrock_descent_has_the_notes_schedule() -> None:
    cfg = load_spec(SPECS / "rosenbrock-descent.yaml").cells[0].config
    assert cfg["estimator"] == {"kind": "cdg", "epsilon": 0.01, "mode": "central"}
    assert cfg["step"]["lr"] == 0.1 and cfg["step"]["steps"] == 40000 and cfg["step"]["log_every"] == 100
    assert cfg["step"]["decay"] == {"factor": 0.1, "every": 10000, "after": 30000, "applies_to": ["lr", "epsilon"]}
    assert cfg["dtype"] == "float64"
