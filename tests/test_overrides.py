"""Command-line overrides of a spec: what each form does, the errors that name the override, and
that the spec stored with the results is the merged one that ran."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY_SPEC
from gradsweep.cli import main
from gradsweep.spec import SpecError, load_spec
from gradsweep.spec.overrides import is_override, load_spec_with_overrides, parse_override
from gradsweep.store import SweepStore


def _values(sweep, path: str) -> list:
    out = []
    for cell in sweep.cells:
        node = cell.config
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        out.append(node)
    return sorted(set(out), key=lambda v: (v is not None, v if v is not None else 0))


@pytest.mark.parametrize(
    "overrides, path, expected",
    [
        (["problem.dim=16"], "problem.dim", [16]),
        (["problem.dim=[4,8,16]"], "problem.dim", [4, 8, 16]),  # a list for a one-value key: a grid
        (["problem.dim={grid: [2, 4]}"], "problem.dim", [2, 4]),
        (["estimator[0].epsilon=1e-3"], "estimator.epsilon", [None, 0.001]),  # STE has no epsilon
        (["estimator[0].epsilon=[0.1,0.01]"], "estimator.epsilon", [None, 0.01, 0.1]),
        (["measure.lrs=[0.5]"], "measure.lrs", None),  # a list-valued key takes the list (checked below)
        (["problem.dim=4", "problem.dim=8"], "problem.dim", [8]),  # the last one wins
    ],
)
def test_overrides_change_the_cells(tiny_spec: Path, overrides: list[str], path: str, expected: list | None):
    sweep = load_spec_with_overrides(tiny_spec, overrides)
    if expected is None:
        assert all(c.config["measure"]["lrs"] == [0.5] for c in sweep.cells)
    else:
        assert _values(sweep, path) == expected


def test_seeds_take_the_list_itself(tiny_spec: Path):
    sweep = load_spec_with_overrides(tiny_spec, ["seeds=[0,1,2]"])
    assert len(sweep.cells) == 12 and _values(sweep, "seed") == [0, 1, 2]


def test_estimator_0_of_a_single_mapping_is_that_mapping(tmp_path: Path):
    spec = tmp_path / "one.yaml"
    spec.write_text("name: one\nproblem: {kind: rosenbrock}\nestimator: {kind: cdg, epsilon: 0.1}\n")
    sweep = load_spec_with_overrides(spec, ["estimator[0].epsilon=0.5"])
    assert _values(sweep, "estimator.epsilon") == [0.5]


def test_the_merged_text_reads_back_as_the_same_cells(tiny_spec: Path):
    sweep = load_spec_with_overrides(tiny_spec, ["problem.dim=[4,16]", "estimator[0].epsilon=1e-3", "seeds=[3]"])
    assert sweep.source_text.startswith(f"# {tiny_spec} with overrides: problem.dim=[4,16]")
    again = load_spec(sweep.source_text)
    assert [c.id for c in again.cells] == [c.id for c in sweep.cells]


def test_no_overrides_is_exactly_load_spec(tiny_spec: Path):
    assert load_spec_with_overrides(tiny_spec, []).source_text == TINY_SPEC


@pytest.mark.parametrize(
    "override, message",
    [
        ("problem.dim=-3", "override 'problem.dim=-3': problem.dim: expected an integer >= 1, got -3"),
        ("problem.dimm=3", "override 'problem.dimm=3': problem.dimm: unknown key 'dimm'; did you mean 'dim'?"),
        ("estimator[5].epsilon=1", "estimator has 2 entries, so [5] does not exist"),
        ("estimator.epsilon=1", "estimator is not a mapping, cannot take .epsilon; write estimator[i].epsilon"),
        ("problem..dim=3", "override 'problem..dim=3': expected PATH=VALUE"),
        ("seeds=[0,1", "override 'seeds=[0,1': the value is not valid YAML"),
        ("problm.dim=3", "override 'problm.dim=3': problm: unknown key 'problm'; did you mean 'problem'?"),
        ("estimator[1].variant=[clipped,nope]", "override 'estimator[1].variant=[clipped,nope]': "
                                                "estimator[1].variant.grid[1]: expected one of"),
    ],
)
def test_a_bad_override_is_named_in_the_error(tiny_spec: Path, override: str, message: str):
    with pytest.raises(SpecError) as info:
        load_spec_with_overrides(tiny_spec, [override])
    assert message in str(info.value)
    assert str(info.value).startswith(f"{tiny_spec}: invalid spec")


def test_every_problem_is_reported_at_once(tiny_spec: Path):
    with pytest.raises(SpecError) as info:
        load_spec_with_overrides(tiny_spec, ["problem.dim=0", "problem.depth=x"])
    assert len(info.value.issues) == 2


def test_problems_of_the_file_keep_their_line(tmp_path: Path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(TINY_SPEC.replace("depth: 3", "depht: 3"))
    with pytest.raises(SpecError) as info:
        load_spec_with_overrides(spec, ["problem.dim=4"])
    assert "line 7: problem.depht" in str(info.value) and "override" not in str(info.value)


@pytest.mark.parametrize("word, expected", [
    ("problem.dim=64", True), ("estimator[0].epsilon=[0.1]", True), ("--where=x", False),
    ("spec.yaml", False), ("a=b", True), ("=3", False),
])
def test_override_words_are_told_from_other_words(word: str, expected: bool):
    assert is_override(word) is expected


def test_parse_override_reads_the_value_as_yaml():
    ov = parse_override("estimator[0].epsilon=[0.1, 1e-2]")
    assert ov.keys == ("estimator", 0, "epsilon") and ov.value == [0.1, 0.01]
    assert parse_override("problem.pretrain=null").value is None


def test_run_stores_the_spec_that_ran_and_resume_reruns_it(tiny_spec: Path, tmp_path: Path, capsys):
    results = tmp_path / "results"
    argv = ["run", str(tiny_spec), "problem.dim=4", "--results", str(results), "--local", "seeds=[5]"]
    assert main(argv) == 0
    assert "2/2 cells done" in capsys.readouterr().err
    stored = SweepStore(results / "tiny").read_spec()
    assert "problem.dim=4 seeds=[5]" in stored.splitlines()[0]
    ran = load_spec(stored)
    assert {c.config["problem"]["dim"] for c in ran.cells} == {4} and {c.config["seed"] for c in ran.cells} == {5}
    # resume runs the stored (merged) spec: nothing is missing
    assert main(["resume", str(results / "tiny"), "--local"]) == 0
    assert "2/2 cells done" in capsys.readouterr().err


def test_plan_takes_overrides_and_a_bad_one_exits_2(tiny_spec: Path, tmp_path: Path, capsys):
    assert main(["plan", str(tiny_spec), "seeds=[0,1,2]", "--results", str(tmp_path)]) == 0
    assert "sweep tiny: 12 cells" in capsys.readouterr().out
    assert main(["plan", str(tiny_spec), "problem.dim=0", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "override 'problem.dim=0'" in err and "Traceback" not in err
