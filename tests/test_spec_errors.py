"""The bad-spec corpus: every kind of mistake gets one clear SpecError naming the key and line."""

from __future__ import annotations

import copy
import json
import random
import textwrap
from pathlib import Path

import pytest

from gradsweep.spec import SpecError, canonical_cell, expand, load_spec, validate_estimator
from gradsweep.spec.yamlload import load_yaml

GOOD = """\
name: demo
problem: {kind: toy_mlp, dim: 8}
estimator: {kind: cdg, epsilon: 0.1}
"""


def spec(body: str) -> str:
    return textwrap.dedent(body)


# (spec text, regex the message must match). Each row is a distinct kind of mistake.
BAD_SPECS = {
    "not YAML": ("name: demo\nproblem: {kind: toy_mlp\n", r"line \d+: not valid YAML"),
    "duplicate key": ("name: demo\nname: other\n", r"line 2: not valid YAML: .*'name' a second time \(first on line 1\)"),
    "not a mapping": ("- 1\n- 2\n", r"expected a mapping of spec keys .*got a list"),
    "empty file": ("", r"expected a mapping of spec keys .*got null"),
    "unknown key": (GOOD + "estimater: {kind: nes}\n", r"line 4: estimater: unknown key 'estimater'; did you mean 'estimator'\?"),
    "unknown nested key": (
        "name: demo\nproblem: {kind: toy_mlp, dims: 8}\nestimator: cdg\n",
        r"line 2: problem.dims: unknown key 'dims'; did you mean 'dim'\? \(valid keys for 'toy_mlp': dim, ",
    ),
    "unknown problem": (
        "name: demo\nproblem: {kind: toy_mpl}\nestimator: cdg\n",
        r"problem.kind: unknown kind 'toy_mpl'; did you mean 'toy_mlp'\?; expected one of toy_mlp, rosenbrock, xnor_resnet18",
    ),
    "unknown estimator": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: [{kind: cdg}, {kind: sr-ste}]\n",
        r"estimator\[1\].kind: unknown kind 'sr-ste'; did you mean 'sr_ste'\?; expected one of autograd, ste, cdg",
    ),
    "unknown variant": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: {kind: ste, variant: steep3}\n",
        r"estimator.variant: expected one of identity, clipped, steep2, polynomial, swish_sign, got 'steep3'",
    ),
    "key of no kind in a grid of kinds": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: {kind: {grid: [cdg, nes]}, epsilom: 0.5}\n",
        r"estimator.epsilom: unknown key 'epsilom'; did you mean 'epsilon'\? \(valid keys for any of cdg, nes: ",
    ),
    "kind not a name": (
        "name: demo\nproblem: {kind: [toy_mlp]}\nestimator: cdg\n",
        r"problem.kind: unknown kind \['toy_mlp'\]; did you mean 'toy_mlp'\?; expected one of toy_mlp, ",
    ),
    "missing kind": ("name: demo\nproblem: {dim: 8}\nestimator: cdg\n", r"problem: missing 'kind': expected one of toy_mlp"),
    "missing required": ("name: demo\nproblem: {kind: toy_mlp}\n", r"estimator: required: expected a mapping with kind"),
    "missing name": ("problem: {kind: toy_mlp}\nestimator: cdg\n", r"name: required: expected a string matching"),
    "wrong type": (
        "name: demo\nproblem: {kind: toy_mlp, dim: eight}\nestimator: cdg\n",
        r"line 2: problem.dim: expected an integer >= 1, got the string 'eight'",
    ),
    "bool for a number": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: {kind: cdg, epsilon: true}\n",
        r"estimator.epsilon: expected a number > 0, got true",
    ),
    "fraction for an integer": (
        "name: demo\nproblem: {kind: toy_mlp, dim: 8.5}\nestimator: cdg\n",
        r"problem.dim: expected an integer >= 1, got 8.5",
    ),
    "empty grid": (
        "name: demo\nproblem: {kind: toy_mlp, dim: {grid: []}}\nestimator: cdg\n",
        r"problem.dim.grid: empty grid",
    ),
    "grid not a list": (
        "name: demo\nproblem: {kind: toy_mlp, dim: {grid: 8}}\nestimator: cdg\n",
        r"problem.dim.grid: expected a list of values, got int 8",
    ),
    "zero where positive": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: {kind: cdg, epsilon: 0}\n",
        r"estimator.epsilon: expected a number > 0, got 0",
    ),
    "negative in a grid": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator:\n  kind: nes\n  sigma: {grid: [0.1, -1]}\n",
        r"line 5: estimator.sigma.grid\[1\]: expected a number > 0, got -1",
    ),
    "zip of unequal lengths": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator:\n  kind: nes\n  zip: {sigma: [1, 0.1], samples: [10]}\n",
        r"estimator.zip: zip lists must have one length, got sigma has 2, samples has 1",
    ),
    "zip and direct": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator:\n  kind: nes\n  sigma: 1\n  zip: {sigma: [1], samples: [10]}\n",
        r"estimator.zip.sigma: 'sigma' is set both directly and in zip",
    ),
    "too many cells": (
        "name: demo\nproblem: {kind: toy_mlp, dim: {arange: [1, 3, 1]}}\n"
        "estimator: {kind: nes, sigma: {grid: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}, samples: {grid: %s}}\n"
        "seeds: {arange: [0, 10000, 1]}\n" % list(range(1, 201)),
        r"the spec would make 20,000,000 cells, more than the limit of 10,000,000",
    ),
    "parameter of another estimator": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: {kind: nes, epsilon: 0.1}\n",
        r"estimator.epsilon: 'epsilon' does not apply to 'nes' \(it is a parameter of cdg\)",
    ),
    "parameter of another variant": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: {kind: ste, variant: clipped, beta: 2}\n",
        r"line 3: estimator.beta: does not apply here: it applies only when variant is swish_sign \(here: clipped\)",
    ),
    "measure in a descent": (
        "name: demo\nexperiment: descent\nproblem: {kind: rosenbrock}\nestimator: cdg\nmeasure: {lrs: [0.1]}\n",
        r"line 5: measure: does not apply here: it applies only when experiment is probe \(here: descent\)",
    ),
    "bad name": ("name: Toy_Raw\nproblem: {kind: toy_mlp}\nestimator: cdg\n", r"name: expected a string matching \^\[a-z0-9-\]\+\$, got 'Toy_Raw'"),
    "x0 length": (
        "name: demo\nproblem: {kind: rosenbrock, n: 4, x0: [1, 2, 3]}\nestimator: cdg\n",
        r"problem: x0 must have n = 4 numbers, got 3",
    ),
    "odd n for pairs": (
        "name: demo\nproblem: {kind: rosenbrock, variant: pairs, n: 7}\nestimator: cdg\n",
        r"problem: n must be even for variant pairs",
    ),
    "bad range mapping": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: cdg\nmeasure: {lrs: {linspace: [0, 1]}}\n",
        r"measure.lrs: expected a list of numbers and ranges .*linspace expects \[start, stop, count\]",
    ),
    "unknown range": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: cdg\nmeasure: {lrs: {geomspace: [1, 2, 3]}}\n",
        r"measure.lrs: .*a range is one of \{linspace",
    ),
    "empty arange": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: cdg\nseeds: {arange: [5, 0, 1]}\n",
        r"seeds: expected a list of integers and ranges .*arange \[5, 0, 1\] makes no values",
    ),
    "zipped parameter that never applies": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator:\n  kind: ste\n  variant: steep2\n  zip: {threshold: [0.5, 1]}\n",
        r"line 6: estimator.threshold: does not apply here: it applies only when variant is clipped \(here: steep2\)",
    ),
    "grid on a sweep key": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: cdg\nresources: {grid: [{cpu: 1}, {cpu: 2}]}\n",
        r"line 4: resources: one value expected here, not a grid",
    ),
    "seed instead of seeds": (
        GOOD + "seed: 3\n",
        r"line 4: seed: unknown key 'seed'; did you mean 'seeds'\?",
    ),
    "bad layer selector": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: cdg\nparams: [linear:0]\n",
        r"params: expected 'all' or a list of layer selectors .*got 'linear:0'",
    ),
    "python object tag": (
        "name: !!python/object/apply:os.system [echo hi]\n",
        r"not valid YAML: .*could not determine a constructor",
    ),
    "non-finite number": (
        "name: demo\nproblem: {kind: toy_mlp}\nestimator: {kind: cdg, epsilon: .inf}\n",
        r"estimator.epsilon: expected a number > 0, got inf",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_refused_with_a_clear_message(case: str) -> None:
    text, pattern = BAD_SPECS[case]
    with pytest.raises(SpecError, match=pattern):
        load_spec(text)


def test_every_problem_is_reported_at_once_with_lines() -> None:
    text = spec("""\
        name: demo
        problem:
          kind: toy_mlp
          dim: -3
          activaton: binary
        estimator:
          - kind: cdg
            epsilon: 0
          - kind: nes
            sigma: 0.1
            epsilon: 0.1
        """)
    with pytest.raises(SpecError) as info:
        load_spec(text, source="demo.yaml")
    err = info.value
    assert [(i.path, i.line) for i in err.issues] == [
        ("problem.activaton", 5),
        ("problem.dim", 4),
        ("estimator[0].epsilon", 8),
        ("estimator[1].epsilon", 11),
    ]
    assert str(err).startswith("demo.yaml: invalid spec: 4 problems")
    assert "did you mean 'activation'?" in str(err)


def test_bad_seeds_do_not_hide_other_problems() -> None:
    with pytest.raises(SpecError) as info:
        load_spec("name: demo\nproblem: {kind: toy_mlp, dim: 0}\nestimator: cdg\nseeds: [a]\n")
    assert {i.path for i in info.value.issues} == {"seeds", "problem.dim"}


def test_a_typo_never_becomes_a_default() -> None:
    with pytest.raises(SpecError, match="unknown key 'epsilom'; did you mean 'epsilon'"):
        validate_estimator({"kind": "cdg", "epsilom": 0.5})


def test_a_cell_config_is_concrete() -> None:
    with pytest.raises(SpecError, match="expected one concrete cell, got a grid of 2 cells"):
        canonical_cell({"problem": {"kind": "toy_mlp", "dim": {"grid": [8, 16]}}, "estimator": {"kind": "cdg"}})
    with pytest.raises(SpecError, match="name: unknown key 'name'"):
        canonical_cell({"name": "x", "problem": {"kind": "toy_mlp"}, "estimator": {"kind": "cdg"}})


def test_validate_estimator_refuses_grids_and_bad_values() -> None:
    with pytest.raises(SpecError, match="expected one concrete estimator, got a grid of 2"):
        validate_estimator({"kind": "cdg", "epsilon": {"grid": [1, 0.1]}})
    with pytest.raises(SpecError, match="estimator.samples: expected an integer >= 1, got 0"):
        validate_estimator({"kind": "nes", "samples": 0})


def test_too_large_grid_is_counted_without_expanding() -> None:
    # 10^3 * 10^3 * 10^3 = 10^9 cells: expanding would take minutes and gigabytes.
    big = list(range(1, 1001))
    raw = {
        "name": "big",
        "problem": {"kind": "toy_mlp", "dim": {"grid": big}, "data": {"batch_size": {"grid": big}}},
        "estimator": {"kind": "nes", "samples": {"grid": big}},
    }
    with pytest.raises(SpecError, match=r"would make 1,000,000,000 cells"):
        expand(raw)


def test_missing_file_is_a_spec_error(tmp_path) -> None:
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(tmp_path / "absent.yaml")
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(str(tmp_path / "absent.yml"))
    with pytest.raises(SpecError, match="no spec file 'specs/absent'"):
        load_spec("specs/absent")


# Values a careless edit may leave anywhere in a spec.
_WEIRD = [
    None, 0, -1, 1.5, "x", True, [], {}, [1, 2], [[1]], {"grid": []}, {"grid": [1, "a"]}, {"grid": [None]},
    {"linspace": [0, 1, 3]}, {"arange": [0, 1, 0]}, {"arange": [0, 1e308, 1e-300]}, {"logspace": [0, 400, 3]},
    {"zip": {"a": [1]}}, {"kind": "cdg"}, [{"kind": "nes"}], float("nan"), {"randint": [3, 1]}, {"kind": [1]},
]


def _mutate(obj: object, rng: random.Random, depth: int = 0) -> None:
    if isinstance(obj, dict) and obj:
        key = rng.choice(list(obj))
        r = rng.random()
        if r < 0.4 and depth < 6:
            _mutate(obj[key], rng, depth + 1)
        elif r < 0.7:
            obj[key] = copy.deepcopy(rng.choice(_WEIRD))
        elif r < 0.85:
            obj[f"{key}x"] = obj.pop(key)
        else:
            obj["zip"] = {key: [obj.pop(key)]}
    elif isinstance(obj, list) and obj:
        i = rng.randrange(len(obj))
        if rng.random() < 0.5 and depth < 6:
            _mutate(obj[i], rng, depth + 1)
        else:
            obj[i] = copy.deepcopy(rng.choice(_WEIRD))


def test_a_mangled_spec_gives_a_spec_error_never_a_crash() -> None:
    """Random edits of the shipped specs: each either expands or raises SpecError."""
    rng = random.Random(20210519)  # a local generator: the test is the same on every run
    specs = Path(__file__).resolve().parent.parent / "specs"
    # the small specs (a 50,000-lr scan would only slow the test down)
    small = [p for p in sorted(specs.glob("*.yaml"))
             if all(len(c.config.get("measure", {}).get("lrs", ())) <= 1000 for c in load_spec(p).cells)]
    raws = [json.loads(json.dumps(load_yaml(p.read_text()))) for p in small]
    refused = 0
    for _ in range(200):
        raw = copy.deepcopy(rng.choice(raws))
        for _ in range(rng.randint(1, 3)):
            _mutate(raw, rng)
        try:
            expand(raw)
        except SpecError as exc:
            refused += 1
            assert exc.issues and all(str(issue) for issue in exc.issues)
    assert refused > 50
