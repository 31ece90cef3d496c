"""``run_cell``: one call computes a cell; same cell, same table; bad parameters, one clear error."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from gradsweep.cell import COLUMNS, run_cell
from gradsweep.devices import describe, resolve_device
from gradsweep.spec import canonical_cell

TOY = {
    "experiment": "probe",
    "problem": {"kind": "toy_mlp", "dim": 6, "activation": "binary", "data": {"batch_size": 300, "batches": 2}},
    "estimator": {"kind": "nes", "sigma": 0.1, "samples": 64},
    "measure": {"lrs": [0.01, 0.1, 1.0], "reference": {"kind": "cdg", "epsilon": 0.1}},
    "seed": 3,
}


def test_same_cell_twice_gives_identical_tables(tmp_path):
    first = run_cell(TOY, cache_dir=tmp_path)
    second = run_cell(TOY, cache_dir=tmp_path)
    timing = ["estimator_seconds"]
    pd.testing.assert_frame_equal(first.drop(columns=timing), second.drop(columns=timing))
    assert set(first["record"]) == {"probe", "cosine"}
    assert len(first[first["record"] == "probe"]) == 2 * 3
    assert len(first[first["record"] == "cosine"]) == 2 * 4


def test_loose_and_canonical_configs_give_the_same_table(tmp_path):
    loose = run_cell(TOY, cache_dir=tmp_path).drop(columns=["estimator_seconds"])
    canonical = run_cell(canonical_cell(TOY), cache_dir=tmp_path).drop(columns=["estimator_seconds"])
    pd.testing.assert_frame_equal(loose, canonical)


def test_another_seed_gives_another_table(tmp_path):
    a = run_cell(TOY, cache_dir=tmp_path)
    b = run_cell({**TOY, "seed": 4}, cache_dir=tmp_path)
    assert not a["loss_before"].equals(b["loss_before"])


def test_columns_are_declared_and_carry_the_device(tmp_path):
    table = run_cell(TOY, cache_dir=tmp_path)
    assert list(table.columns) == [c for c in COLUMNS if c in table.columns]
    assert (table["run_device"] == "cpu").all()


def test_descent_cell_and_dtype_default():
    table = run_cell({
        "experiment": "descent",
        "problem": {"kind": "rosenbrock", "n": 4, "x0": [-1, 1, 2, 0]},
        "estimator": {"kind": "cdg", "epsilon": 0.01},
        "step": {"steps": 20, "log_every": 10},
    })
    assert table["step"].tolist() == [0, 10, 20]
    assert table["loss"].dtype == "float64"
    assert table["loss"].is_monotonic_decreasing


def test_pretrained_cell_trains_once(tmp_path):
    cfg = {**TOY, "problem": {**TOY["problem"], "pretrain": {"steps": 20, "batch_size": 64}},
           "estimator": {"kind": "ste"}, "measure": {"lrs": [0.1]}}
    table = run_cell(cfg, cache_dir=tmp_path)
    assert len(list((tmp_path / "toy_pretrain").glob("*.pt"))) == 1
    curve = table[table["record"] == "pretrain"]
    assert curve.index.tolist() == list(range(20)) and curve["step"].tolist() == list(range(1, 21))
    run_cell({**cfg, "measure": {"lrs": [0.2]}}, cache_dir=tmp_path)
    assert len(list((tmp_path / "toy_pretrain").glob("*.pt"))) == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"estimator": {"kind": "ste", "variant": "clipt"}}, r"estimator\.variant"),
        ({"estimator": {"kind": "cdg", "epsilon": -0.1}}, r"estimator\.epsilon"),
        ({"estimator": {"kind": "nes", "samples": 0}}, r"estimator\.samples"),
        ({"params": ["fc7"]}, r"params: unknown layer 'fc7'"),
        ({"problem": {"kind": "rosenbrock", "variant": "pairs", "n": 7}}, r"\bn\b"),
    ],
    ids=["unknown variant", "negative eps", "zero samples", "unknown layer", "odd n for pairs"],
)
def test_bad_parameters_raise_one_error_naming_them(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        run_cell({**TOY, **change}, cache_dir=tmp_path)


def test_devices_resolve_and_describe():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda" if torch.cuda.is_available() else "cpu", assigned="cpu") == torch.device("cpu")
    assert describe("cpu") == "cpu"
    with pytest.raises(ValueError, match="device: expected auto, cpu or cuda, got 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no CUDA")
def test_explicit_cuda_without_cuda_is_an_error():
    with pytest.raises(RuntimeError, match="device: 'cuda' was asked for, but torch sees no CUDA"):
        run_cell({**TOY, "device": "cuda"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_cell_matches_cpu_cell_in_float64(tmp_path):
    cfg = {**TOY, "dtype": "float64", "estimator": {"kind": "cdg", "epsilon": 0.1}}
    cpu = run_cell(cfg, device="cpu", cache_dir=tmp_path)
    gpu = run_cell(cfg, device="cuda", cache_dir=tmp_path)
    assert gpu["run_device"].iloc[0].startswith("cuda:0 ")
    for column in ["loss_before", "loss_after", "cosine"]:
        pd.testing.assert_series_equal(cpu[column], gpu[column], rtol=1e-9)
