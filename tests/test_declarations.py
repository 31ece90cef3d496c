"""Kinds are declared once; the catalog, the registries, plan's cost and the ids derive from that."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from gradsweep import catalog, registry
from gradsweep.declare import Choice, Kind, Param, estimator, selected_sizes, surrogate
from gradsweep.registry import Plugin, Registry
from gradsweep.runner import cell_estimate
from gradsweep.spec import canonical_cell, cell_id
from gradsweep.spec.canonical import cell_group

DATA = Path(__file__).parent / "data"


def test_cells_computed_before_the_declarations_keep_their_ids() -> None:
    # configs and ids written by gradsweep 0.1, before kinds were declared in one place
    # (parameters added since, at their introduced values, join the config but not the hash)
    for entry in json.loads((DATA / "cell_ids_0.1.json").read_text()):
        canonical = canonical_cell(entry["config"])
        assert catalog.without_introduced(cell_group(), canonical) == entry["config"], entry["spec"]
        assert cell_id(canonical) == entry["id"], entry["spec"]


def test_every_role_lists_its_builtin_kinds() -> None:
    assert {"toy_mlp", "rosenbrock", "xnor_resnet18"} <= set(registry.kinds("problem"))
    assert {"ste", "cdg", "nes", "sr_ste", "autograd"} <= set(registry.kinds("estimator"))
    assert {"clipped", "swish_sign"} <= set(registry.kinds("surrogate"))
    assert list(catalog.EXPERIMENTS)[:3] == ["probe", "descent", "train"]


def test_a_choice_brings_the_named_kinds_parameters_where_they_apply() -> None:
    ste = catalog.ESTIMATORS["ste"]
    assert ste.fields["threshold"].when == {"variant": ("clipped",)}
    assert ste.fields["beta"].when == {"variant": ("swish_sign",)}
    assert canonical_cell({"problem": {"kind": "toy_mlp"}, "estimator": {"kind": "ste", "variant": "steep2"}})[
        "estimator"] == {"kind": "ste", "variant": "steep2"}


def _module(**attrs) -> types.ModuleType:
    mod = types.ModuleType("fake_plugin")
    mod.__dict__.update(attrs)
    return mod


def _reg() -> Registry:
    reg = Registry()
    reg.load_builtin()
    return reg


def test_a_plugin_whose_kind_clashes_is_set_aside_naming_both_packages() -> None:
    reg = _reg()
    plugin = Plugin("clash", "fake_plugin", "fake-package", "1.0")
    reg.add_module(_module(KINDS=[estimator("cdg", impl="x:y")]), plugin)
    assert "estimator 'cdg' clashes with the one of package gradsweep" in plugin.error
    assert reg.kind("estimator", "cdg").package == "gradsweep"


def test_a_malformed_declaration_is_named_and_nothing_of_its_plugin_is_registered() -> None:
    reg = _reg()
    plugin = Plugin("bad", "fake_plugin", "fake-package", "1.0")
    reg.add_module(_module(KINDS=[
        estimator("fine_one", impl="x:y"),
        Kind(role="estimator", name="bad name", impl="nowhere"),
        "not a kind",
    ]), plugin)
    assert "name 'bad name' must be letters" in plugin.error
    assert "impl 'nowhere' must be 'module:attribute'" in plugin.error
    assert "KINDS holds 'not a kind'" in plugin.error
    assert "fine_one" not in reg.by_role["estimator"]
    with pytest.raises(ValueError, match=r"unknown kind 'fine_one'.*not loaded: plugin 'bad' \(module fake_plugin, package fake-package 1.0\)"):
        reg.kind("estimator", "fine_one")


def test_a_plugin_surrogate_joins_every_variant_choice() -> None:
    reg = _reg()
    reg.add_module(_module(KINDS=[surrogate("soft", impl="x:y", params={"a": Param("float", 1.0)})]),
                   Plugin("p", "fake_plugin", "fake-package", "1.0"))
    ste = catalog.derive(reg)["ESTIMATORS"]["ste"]
    assert "soft" in ste.fields["variant"].choices
    assert ste.fields["a"].when == {"variant": ("soft",)}
    perturbed = catalog.derive(reg)["ESTIMATORS"]["perturbed_ste"]
    assert perturbed.fields["a"].when == {"variant": ("soft",)}


def test_a_choice_without_params_keeps_the_group_as_it_was() -> None:
    reg = _reg()
    group = reg.resolve(catalog.Group({"ste": Choice("surrogate", "clipped", with_params=False)}))
    assert list(group.fields) == ["ste"] and "clipped" in group.fields["ste"].choices


def test_plan_costs_cdg_by_the_selected_layers_only() -> None:
    base = {"problem": {"kind": "toy_mlp", "dim": 16}, "estimator": {"kind": "cdg"}}
    everything = cell_estimate(canonical_cell(base)).flops
    first = cell_estimate(canonical_cell({**base, "params": ["linear:1"]})).flops
    last = cell_estimate(canonical_cell({**base, "params": ["fc3"]})).flops
    assert everything > first > last


def test_a_selector_that_selects_nothing_is_named() -> None:
    cost = registry.kind("problem", "toy_mlp").cost(canonical_cell({"problem": {"kind": "toy_mlp"}, "estimator": "cdg"})["problem"])
    assert selected_sizes(cost, ["linear:-1"]) == [8]
    with pytest.raises(ValueError, match=r"'linear:9' selects no layer: this problem has 3 linear layers"):
        selected_sizes(cost, ["linear:9"])
    with pytest.raises(ValueError, match=r"unknown layer 'fc4'; did you mean 'fc3'\?; valid layers: fc1, fc2, fc3"):
        selected_sizes(cost, ["fc4"])


def test_plan_refuses_a_selector_that_selects_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nproblem: {kind: toy_mlp}\nestimator: cdg\nparams: [conv:1]\n")
    out = subprocess.run([sys.executable, "-m", "gradsweep", "plan", str(spec), "--results", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "params: 'conv:1' selects no layer: this problem has 0 conv layers (problem toy_mlp)" in out.stderr
    assert "Traceback" not in out.stderr


BROKEN_PLUGIN = {
    "broken_gs_plugin.py": "raise ImportError('the plugin needs a library that is not installed')\n",
    "broken_gs_plugin-1.2.dist-info/METADATA": "Metadata-Version: 2.1\nName: broken-gs-plugin\nVersion: 1.2\n",
    "broken_gs_plugin-1.2.dist-info/entry_points.txt": "[gradsweep.plugins]\nbroken = broken_gs_plugin\n",
}


def test_a_broken_plugin_breaks_no_spec_that_does_not_use_it(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for name, text in BROKEN_PLUGIN.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    good = tmp_path / "good.yaml"
    good.write_text("name: good\nproblem: {kind: toy_mlp}\nestimator: cdg\n")
    out = subprocess.run([sys.executable, "-m", "gradsweep", "plan", str(good), "--results", str(tmp_path)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    uses = tmp_path / "uses.yaml"
    uses.write_text("name: uses\nproblem: {kind: toy_mlp}\nestimator: {kind: broken_ste}\n")
    out = subprocess.run([sys.executable, "-m", "gradsweep", "plan", str(uses), "--results", str(tmp_path)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unknown kind 'broken_ste'" in out.stderr
    assert ("plugin 'broken' (module broken_gs_plugin, package broken-gs-plugin 1.2): import failed: ImportError: "
            "the plugin needs a library that is not installed") in out.stderr
    listing = subprocess.run([sys.executable, "-m", "gradsweep", "kinds"], capture_output=True, text=True, env=env)
    assert listing.returncode == 0 and "warning: plugin 'broken'" in listing.stdout
