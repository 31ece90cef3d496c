"""The gradsweep command: --help everywhere, exit codes, one clear message for bad input, a light plan."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, TINY_SPEC
from gradsweep.cli import COMMANDS, main
from gradsweep.spec import load_spec
from gradsweep.store import SweepStore


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command: str | None, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"] if command is None else [command, "--help"])
    assert exit_.value.code == 0
    assert "usage: gradsweep" in capsys.readouterr().out


def test_plan_prints_the_cells_and_imports_neither_torch_nor_ray(tiny_spec: Path, tmp_path: Path, cli_env: dict):
    code = (
        "import sys\nfrom gradsweep.cli import main\n"
        f"rc = main(['plan', {str(tiny_spec)!r}, '--results', {str(tmp_path / 'results')!r}])\n"
        "heavy = [m for m in ('torch', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy\nsys.exit(rc)\n"
    )
    proc = subprocess.run([PYTHON, "-c", code], env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "sweep tiny: 8 cells" in proc.stdout and "pending 8" in proc.stdout


def test_the_installed_module_entry_point_runs(tmp_path: Path, cli_env: dict):
    proc = subprocess.run([PYTHON, "-m", "gradsweep", "--version"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("gradsweep ")


def _bad_input(argv: list[str], capsys, match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradsweep: error: ") and match in err
    assert "Traceback" not in err


def test_a_bad_spec_exits_2_naming_the_key(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_SPEC.replace("depth: 3", "depht: 3"))
    _bad_input(["plan", str(bad)], capsys, "depht")
    _bad_input(["run", str(bad), "--local"], capsys, "depht")


def test_missing_spec_or_folder_exits_2(tmp_path: Path, capsys):
    _bad_input(["plan", str(tmp_path / "nope.yaml")], capsys, "nope.yaml")
    _bad_input(["status", str(tmp_path / "results" / "nope")], capsys, "no such folder")
    _bad_input(["resume", str(tmp_path / "results" / "nope"), "--local"], capsys, "no such folder")


def test_a_bad_option_value_exits_2(tiny_spec: Path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(tiny_spec), "--max-in-flight", "0"])
    assert exit_.value.code == 2
    assert "--max-in-flight: expected a positive integer, got '0'" in capsys.readouterr().err


def test_a_bad_fault_hook_exits_2(tiny_spec: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("GRADSWEEP_CELL_DELAY", "soon")
    _bad_input(["run", str(tiny_spec), "--results", str(tmp_path), "--local"], capsys, "GRADSWEEP_CELL_DELAY")


def test_a_sweep_held_by_another_driver_exits_2_naming_it(tiny_spec: Path, tmp_path: Path, capsys):
    holder = SweepStore(tmp_path / "tiny")
    holder.create()
    holder.acquire_lock()
    try:
        _bad_input(["run", str(tiny_spec), "--results", str(tmp_path), "--local"], capsys, "being written by another driver")
    finally:
        holder.release_lock()


def test_exit_codes_follow_the_cells_failed_then_fixed(tiny_spec: Path, tmp_path: Path, capsys, monkeypatch):
    bad = load_spec(tiny_spec).cells[0].id
    folder = str(tmp_path / "tiny")
    monkeypatch.setenv("GRADSWEEP_FAIL_CELLS", bad)
    assert main(["run", str(tiny_spec), "--results", str(tmp_path), "--local"]) == 1
    assert "7/8 cells done, 1 failed" in capsys.readouterr().err
    assert main(["status", folder]) == 1
    out = capsys.readouterr().out
    assert bad in out and "injected failure" in out and "failures/<cell_id>.json" in out

    monkeypatch.delenv("GRADSWEEP_FAIL_CELLS")
    assert main(["resume", folder, "--local"]) == 0
    assert main(["status", folder]) == 0
    assert "done 8, failed 0, pending 0" in capsys.readouterr().out
    assert main(["plan", str(tiny_spec), "--results", str(tmp_path)]) == 0


@pytest.mark.parametrize("command", ["run", "status", "plan", "report", "cancel"])
def test_an_unknown_option_prints_the_subcommands_usage(command: str, tiny_spec: Path, capsys):
    first = str(tiny_spec) if command in ("run", "plan", "report") else "x"
    with pytest.raises(SystemExit) as exit_:
        main([command, first, "--no-such-option"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: gradsweep {command} ")
    assert "unrecognized arguments: --no-such-option" in err


def test_a_stray_word_is_not_taken_for_an_override_where_none_are_taken(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        main(["status", str(tmp_path), "problem.dim=3"])
    assert "usage: gradsweep status" in capsys.readouterr().err


def test_quiet_prints_only_the_summary(tiny_spec: Path, tmp_path: Path, capsys):
    assert main(["run", str(tiny_spec), "--results", str(tmp_path), "--local", "-q"]) == 0
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"sweep tiny: 8/8 cells done, 0 failed; results in {tmp_path}/tiny"]
    assert main(["-q", "run", str(tiny_spec), "--results", str(tmp_path), "--local"]) == 0
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
def test_rays_banners_are_hidden_unless_verbose(tiny_spec: Path, tmp_path: Path, cli_env: dict):
    """A real embedded Ray in a subprocess: Ray's own lines appear with -v only."""
    banner = "Token authentication is"  # "... enabled (or disabled) for this Ray cluster": RAY_AUTH_MODE unset
    env = {k: v for k, v in cli_env.items() if k != "RAY_AUTH_MODE"}

    def run(*extra: str) -> str:
        proc = subprocess.run(
            [PYTHON, "-m", "gradsweep", "run", str(tiny_spec), "--results", str(tmp_path), "--num-cpus", "1", "--ray",
             "--where", "problem.dim=4,seed=0,estimator.kind=cdg", *extra],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    quiet = run()
    assert banner not in quiet and "1/1 cells done" in quiet
    assert banner in run("-v")
