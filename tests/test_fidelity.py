"""Fidelity to the notes (issue 14): the notes' init, pretraining until the loss stops falling,
sr-STE judged as the notes did, the norm ratio beside the cosine, and the rule that adding a
parameter keeps every cell computed before it (same id, same meaning)."""

from __future__ import annotations

import io
import json
import math
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from conftest import PYTHON
from gradsweep import catalog, estimators
from gradsweep.executors import FaultHooks, LocalExecutor
from gradsweep.experiments import probe
from builders import build_toy as build
from gradsweep.problems.toy_mlp import ToyMLP
from gradsweep.runner import plan, resume, run
from gradsweep.seeding import derive_seed
from gradsweep.spec import SpecError, canonical_cell, cell_id, load_spec
from gradsweep.spec.inert import inert_warnings

# A sweep as it was written before `problem.init` and `pretrain.until` existed, and the ids the
# code of that time gave its cells (computed with the commit before the parameters were added).
BEFORE_SPEC = """\
name: before
experiment: probe
problem:
  kind: toy_mlp
  dim: 4
  data: {batch_size: 64, batches: 1}
  pretrain: {grid: [null, {steps: 3, batch_size: 32}]}
estimator: [{kind: ste}, {kind: cdg}]
measure: {lrs: [0.1, 1.0]}
seeds: [0]
device: cpu
"""
BEFORE_IDS = {"906b970b5644d18c", "fa0df1de0cceeb95", "ec758820b7514844", "67cfecb88683e9d7"}


def _toy(init: str = "normal", dim: int = 32, **kw) -> ToyMLP:
    return ToyMLP(dim=dim, depth=3, activation="binary", teacher_activation=None, batch_size=kw.pop("batch_size", 2048),
                  batches=1, seed=0, dtype=torch.float32, device=torch.device("cpu"), init=init, **kw)


# -- adding a parameter keeps old cells ----------------------------------------------------------


def test_cells_written_before_init_and_the_stop_rule_existed_keep_their_ids():
    cells = load_spec(BEFORE_SPEC).cells
    assert {c.id for c in cells} == BEFORE_IDS
    for c in cells:
        # the config still carries the new parameters at the value that reproduces the old behaviour
        assert c.config["problem"]["init"] == "normal"
        if c.config["problem"]["pretrain"] is not None:
            assert c.config["problem"]["pretrain"]["until"] == "steps"
        assert cell_id(c.config) == c.id
        assert canonical_cell(c.config) == c.config


def test_writing_the_introduced_value_is_the_same_cell_and_another_value_is_a_new_one():
    explicit = BEFORE_SPEC.replace("dim: 4", "dim: 4\n  init: normal").replace("{steps: 3,", "{until: steps, steps: 3,")
    assert {c.id for c in load_spec(explicit).cells} == BEFORE_IDS
    notes = load_spec(BEFORE_SPEC.replace("dim: 4", "dim: 4\n  init: torch_default")).cells
    assert not {c.id for c in notes} & BEFORE_IDS
    assert {c.config["problem"]["init"] for c in notes} == {"torch_default"}


def test_a_folder_written_before_the_parameters_resumes_with_nothing_to_do(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GRADSWEEP_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "before.yaml"
    spec.write_text(BEFORE_SPEC)
    first = run(load_spec(spec), tmp_path / "results", LocalExecutor(), stream=io.StringIO())
    assert (first.done, first.failed) == (4, [])
    folder = tmp_path / "results" / "before"
    # Make the files what the code before the change wrote: no column for the new parameters.
    new_columns = ["problem.init", "problem.pretrain.until", "norm_ratio"]
    for path in folder.glob("*.parquet"):
        table = pq.read_table(path)
        meta = table.schema.metadata
        old = table.drop_columns([c for c in new_columns if c in table.column_names])
        pq.write_table(old.replace_schema_metadata(meta), path)
    assert {p.stem for p in folder.glob("*.parquet")} == BEFORE_IDS
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}

    again = resume(folder, LocalExecutor(hooks=FaultHooks()), stream=io.StringIO())
    assert again.ran == 0 and again.exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")} == mtimes
    p = plan(load_spec(spec), tmp_path / "results")
    assert (len(p.done), p.pending, len(p.dropped)) == (4, 0, 0)

    # The reader fills the missing columns with the introduced values, where they apply.
    from gradsweep.analysis.core import load_results

    cells = load_results(folder).cells
    assert set(cells["problem.init"]) == {"normal"}
    until = dict(zip(cells.index, cells["problem.pretrain.until"]))
    pretrained = dict(zip(cells.index, cells["problem.pretrain.steps"].notna()))
    assert {until[c] for c in until if pretrained[c]} == {"steps"}
    assert all(until[c] is None or (isinstance(until[c], float) and math.isnan(until[c])) for c in until if not pretrained[c])


def test_students_cached_before_the_parameters_are_found_under_the_same_key(tmp_path: Path):
    cfg = {"dim": 4, "data": {"batch_size": 16, "batches": 1}, "pretrain": {"steps": 2, "batch_size": 8}}
    build(cfg, seed=0, dtype=torch.float32, device=torch.device("cpu"), cache_dir=tmp_path)
    (key_file,) = (tmp_path / "toy_pretrain").glob("*.json")
    key = json.loads(key_file.read_text())
    # exactly the key the code before init / until wrote
    assert key["problem"] == {"kind": "toy_mlp", "dim": 4, "depth": 3, "activation": "binary",
                              "teacher_activation": "binary",
                              "pretrain": {"steps": 2, "batch_size": 8, "lr": 0.01, "optimizer": "adam"}}


# -- the notes' initialisation --------------------------------------------------------------------


def test_torch_default_init_draws_nn_linear_s_uniform_and_gives_the_notes_loss_scale():
    notes, normal = _toy("torch_default"), _toy("normal")
    for name, w in notes.student.items():
        bound = 1 / math.sqrt(w.shape[1])
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.9 * bound
    w_notes = torch.cat([w.flatten() for w in notes.teacher.values()])
    w_normal = torch.cat([w.flatten() for w in normal.teacher.values()])
    assert float(w_normal.std() / w_notes.std()) == pytest.approx(math.sqrt(3), rel=0.1)
    # the notes' raw loss at d = 32 is about 0.71; the N(0, 1/fan_in) toy's is about 3x that
    loss_notes = float(notes.loss(notes.point(), notes.batch(0)))
    loss_normal = float(normal.loss(normal.point(), normal.batch(0)))
    assert 0.3 < loss_notes < 1.2 and loss_normal > 1.5 * loss_notes


def test_an_unknown_init_is_refused_naming_the_key():
    with pytest.raises(SpecError, match=r"problem\.init.*normal, torch_default.*'torch-default'"):
        load_spec(BEFORE_SPEC.replace("dim: 4", "dim: 4\n  init: torch-default"))


# -- pretraining until the loss stops falling ----------------------------------------------------


def _plateau(**kw) -> dict:
    return {"until": "plateau", "batch_size": 256, "lr": 0.05, "optimizer": "adam", "patience": 2,
            "min_delta": 0.05, "max_steps": 400, "eval_every": 10, **kw}


def test_plateau_pretraining_stops_when_the_held_out_loss_stops_falling_and_records_it(tmp_path: Path):
    p = _toy("torch_default", dim=4)
    p.pretrain(_plateau(), cache_dir=tmp_path)
    evals = [(r["step"], r["val_loss"]) for r in p.records if "val_loss" in r]
    taken = len(p.pretrain_losses)
    assert 20 <= taken < 400                                # stopped by the rule, not by max_steps
    assert p.records[-1]["step"] == taken and "val_loss" in p.records[-1]   # steps taken, final loss
    assert [s for s, _ in evals] == list(range(10, taken + 1, 10))
    values = [v for _, v in evals]
    best_before = min(values[:-2])
    assert all(v >= best_before * (1 - 0.05) for v in values[-2:])   # the last `patience` did not improve
    raw = _toy("torch_default", dim=4)
    x = raw.draw_inputs("pretrain_eval", batch_size=256)
    assert values[-1] < 0.8 * float(raw.loss(raw.point(), (x, raw.teacher_outputs(x))))   # it did train


def test_the_stop_rule_is_part_of_the_cache_key(tmp_path: Path):
    a, b, c = (_toy("torch_default", dim=4) for _ in range(3))
    a.pretrain(_plateau(), cache_dir=tmp_path)
    b.pretrain(_plateau(patience=3), cache_dir=tmp_path)
    c.pretrain(_plateau(), cache_dir=tmp_path)
    assert (a.pretrain_cache_hit, b.pretrain_cache_hit, c.pretrain_cache_hit) == (False, False, True)
    assert len(b.pretrain_losses) >= len(a.pretrain_losses)
    keys = [json.loads(f.read_text())["problem"] for f in (tmp_path / "toy_pretrain").glob("*.json")]
    assert all(k["init"] == "torch_default" and k["pretrain"]["until"] == "plateau" for k in keys)


def test_the_stop_rule_s_keys_apply_only_to_their_rule():
    base = "name: s\nproblem:\n  kind: toy_mlp\n  pretrain: {PRE}\nestimator: ste\n"
    with pytest.raises(SpecError, match=r"problem\.pretrain\.steps: required"):
        load_spec(base.replace("{PRE}", "{batch_size: 32}"))
    with pytest.raises(SpecError, match=r"problem\.pretrain\.steps: does not apply here.*until is steps"):
        load_spec(base.replace("{PRE}", "{until: plateau, steps: 10}"))
    with pytest.raises(SpecError, match=r"problem\.pretrain\.patience: does not apply here"):
        load_spec(base.replace("{PRE}", "{steps: 10, patience: 3}"))
    (cell,) = load_spec(base.replace("{PRE}", "{until: plateau}")).cells
    assert cell.config["problem"]["pretrain"] == {
        "until": "plateau", "patience": 5, "min_delta": 0.01, "max_steps": 20000, "eval_every": 100,
        "batch_size": 16000, "lr": 0.01, "optimizer": "adam"}


def test_xnor_pretraining_follows_the_same_rule():
    from gradsweep.problems.xnor_resnet import _plateaued, pretrain_key

    rule = {"patience": 2, "min_delta": 0.1}
    assert not _plateaued([1.0, 0.8, 0.6], rule)
    assert _plateaued([1.0, 0.8, 0.79, 0.78], rule)          # two epochs not 10% below the best
    assert not _plateaued([1.0, 0.8, 0.79, 0.5], rule)
    from gradsweep.spec.validate import validate_kind

    def key(pretrain: dict) -> dict:
        cfg = validate_kind("problem", {"kind": "xnor_resnet18", "pretrain": pretrain})
        return pretrain_key(cfg, seed=0, dtype=torch.float32)["pretrain"]

    assert "until" not in key({"until": "steps", "steps": 10, "batch_size": 8})  # old caches stay valid
    assert key({"until": "plateau", "max_steps": 10, "patience": 2, "min_delta": 0.1})["until"] == "plateau"


# -- what the probe records ----------------------------------------------------------------------


def _generator_for(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(0, *parts))


def test_the_probe_records_the_norm_ratio_to_the_reference_beside_the_cosine():
    p = _toy("torch_default", dim=8, batch_size=512)
    nes = estimators.get({"kind": "nes", "sigma": 0.1, "samples": 50})
    cfg = {"params": "all", "measure": {"lrs": [0.1], "reference": {"kind": "cdg", "epsilon": 0.1}}}
    rows = probe.run(p, nes, cfg, generator_for=_generator_for)
    cos = rows[rows.record == "cosine"].set_index("layer")
    g = nes.estimate(p, p.point(), p.batch(0), list(p.point()), _generator_for("estimate", 0, 0))
    ref = estimators.get({"kind": "cdg", "epsilon": 0.1}).estimate(p, p.point(), p.batch(0), list(p.point()), None)
    for layer in g:
        assert cos.loc[layer, "norm_ratio"] == pytest.approx(float(g[layer].norm() / ref[layer].norm()), rel=1e-5)
    total = math.sqrt(sum(float(v.norm()) ** 2 for v in g.values()) / sum(float(v.norm()) ** 2 for v in ref.values()))
    assert cos.loc["all", "norm_ratio"] == pytest.approx(total, rel=1e-5)
    same = probe.run(p, estimators.get({"kind": "cdg", "epsilon": 0.1}), cfg, generator_for=_generator_for)
    assert set(same[same.record == "cosine"].norm_ratio) == {1.0}


def test_evaluate_estimator_judges_sr_ste_stochastically_and_ste_with_its_plain_forward():
    p = _toy("torch_default", dim=8, batch_size=512)
    ste = estimators.get({"kind": "ste"})
    plain = probe.run(p, ste, {"measure": {"lrs": [0.1, 0.3], "evaluate": "plain"}}, generator_for=_generator_for)
    own = probe.run(p, ste, {"measure": {"lrs": [0.1, 0.3], "evaluate": "estimator"}}, generator_for=_generator_for)
    assert own.loss_after.tolist() == plain.loss_after.tolist()
    sr = estimators.get({"kind": "sr_ste", "samples": 2})
    judged = probe.run(p, sr, {"measure": {"lrs": [0.1], "evaluate": "estimator"}}, generator_for=_generator_for)
    assert judged.loss_before.iloc[0] != plain.loss_before.iloc[0]   # the stochastic forward's own loss


# -- plan warns about grids over parameters that cannot change the result -------------------------

TAU_SPEC = """\
name: taus
problem: {kind: toy_mlp, dim: 4}
estimator:
  - {kind: sr_ste, tau: TAU, samples: {grid: [1, 2]}}
  - {kind: ste}
seeds: [0, 1]
"""


def test_a_grid_over_an_inert_parameter_is_named_with_its_reason():
    cells = load_spec(TAU_SPEC.replace("TAU", "{grid: [0.01, 0.1, 1.0]}")).cells
    (warning,) = inert_warnings(c.config for c in cells)
    assert "estimator.tau (estimator.kind sr_ste) varies over 3 values (0.01, 0.1, 1.0)" in warning
    assert "Bernoulli(p) whatever tau is" in warning and "8 cell(s) repeat" in warning
    assert inert_warnings(c.config for c in load_spec(TAU_SPEC.replace("TAU", "0.1")).cells) == []
    # the declaration, not a special case, drives it
    assert catalog.ESTIMATORS["sr_ste"].fields["tau"].inert


def test_plan_prints_the_warning_and_still_imports_neither_torch_nor_ray(tmp_path: Path, cli_env: dict):
    spec = tmp_path / "taus.yaml"
    spec.write_text(TAU_SPEC.replace("TAU", "{grid: [0.1, 1.0]}"))
    code = (
        "import sys\nfrom gradsweep.cli import main\n"
        f"rc = main(['plan', {str(spec)!r}, '--results', {str(tmp_path / 'results')!r}])\n"
        "heavy = [m for m in ('torch', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy\nsys.exit(rc)\n"
    )
    proc = subprocess.run([PYTHON, "-c", code], env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "warning: estimator.tau" in proc.stderr and "cannot change the result" in proc.stderr


def test_xnor_pretraining_stops_at_the_first_epoch_where_validation_has_plateaued(tmp_path: Path):
    from gradsweep.data import load
    from gradsweep.problems.xnor_resnet import _plateaued, pretrain

    rule = {"until": "plateau", "patience": 2, "min_delta": 0.5, "max_steps": 400}
    cfg = {"kind": "xnor_resnet18", "channels": 2, "weights": "binary", "ste": "clipped",
           "data": {"source": "synthetic", "path": None, "batch_size": 8, "batches": 2, "image_size": 8, "train_size": 64},
           "pretrain": {"batch_size": 16, "lr": 0.01, "optimizer": "adam", "schedule": "cosine",
                        "checkpoint_every": 1000, **rule}}
    from gradsweep.spec.validate import validate_kind

    cfg = validate_kind("problem", cfg)  # canonical, as a cell passes it
    data = load(cfg["data"], seed=0)
    out = pretrain(cfg, data, seed=0, dtype=torch.float32, device=torch.device("cpu"), checkpoint=tmp_path / "c.pt")
    val = [r["val_loss"] for r in out["records"]]
    steps = out["records"][-1]["step"]
    assert steps < 400 and steps % 4 == 0          # stopped at an epoch end (64 / 16 = 4 steps), before max_steps
    assert _plateaued(val, rule) and not _plateaued(val[:-1], rule)
