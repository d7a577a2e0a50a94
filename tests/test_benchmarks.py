"""The benchmarks as a package: the shared results writer, and every module importable and runnable as
``python -m benchmarks.<name>``."""

from __future__ import annotations

import doctest
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmarks
from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__))


def test_machine_description_is_computed_where_it_runs(monkeypatch):
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            text = report.machine_description(["device cpu"])
            assert f"({n} thread(s))" in text
    finally:
        torch.set_num_threads(threads)
    for part in (f"{os.cpu_count()} CPUs", platform.platform(), f"Python {platform.python_version()}",
                 f"torch {torch.__version__}", report.cpu_model(), "device cpu"):
        assert part in text


def test_cpu_model_falls_back_without_proc_cpuinfo(monkeypatch):
    def unreadable(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr("builtins.open", unreadable)
    assert report.cpu_model() == (platform.processor() or platform.machine() or "unknown CPU")


def test_no_benchmark_writes_a_machine_by_hand():
    for path in (ROOT / "benchmarks").glob("*.py"):
        text = path.read_text()
        for words in ("2-core", "2 cores", "EPYC", "platform.processor()", "os.cpu_count()"):
            assert path.name == "report.py" or words not in text, f"{path.name}: {words!r}"


def test_command_line_is_the_module_form_with_the_exact_arguments(monkeypatch):
    assert report.command_line("loss_cost", ["--repeats", "9"]) == "python -m benchmarks.loss_cost --repeats 9"
    assert report.command_line("ablation", []) == "python -m benchmarks.ablation"
    assert report.command_line("ablation", ["--out", "a b"]) == "python -m benchmarks.ablation --out 'a b'"
    monkeypatch.setattr(sys, "argv", ["whatever", "--quick"])
    assert report.command_line("reducer_speed") == "python -m benchmarks.reducer_speed --quick"


def test_write_results_records_command_and_machine(tmp_path):
    record = {"command": "python -m benchmarks.x --flag", "machine": report.machine_description(), "value": 1.5}
    md, js = report.write_results(tmp_path / "out", "x", "# X\n\nCommand: `python -m benchmarks.x --flag`", record)
    assert md == tmp_path / "out" / "x.md" and md.read_text().endswith("\n")
    assert json.loads(js.read_text()) == record
    with pytest.raises(ValueError, match="command"):
        report.write_results(tmp_path, "y", "", {"machine": "m"})
    with pytest.raises(ValueError, match="machine"):
        report.write_results(tmp_path, "y", "", {"command": "c"})
    with pytest.raises(TypeError):
        report.write_results(tmp_path, "y", "", [("command", "c")])
    assert not (tmp_path / "y.md").exists()


def test_header_names_command_and_machine():
    lines = report.header("Title", "python -m benchmarks.x", "some CPU")
    assert lines[0] == "# Title" and "Command: `python -m benchmarks.x`" in lines and "Machine: some CPU." in lines


def test_continuity_records_the_command_that_ran(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import continuity

    assert continuity.main(["--out", str(tmp_path)]) == 0
    command = f"python -m benchmarks.continuity --out {tmp_path}"
    record = json.loads((tmp_path / "continuity.json").read_text())
    assert record["command"] == command and record["machine"] == report.machine_description()
    assert f"Command: `{command}`" in (tmp_path / "continuity.md").read_text()
    assert (tmp_path / "continuity.png").stat().st_size > 0


@pytest.mark.parametrize("name", MODULES)
def test_every_benchmark_module_imports_and_its_doctests_pass(name):
    module = importlib.import_module(f"benchmarks.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} doctest examples failed"


def test_every_benchmark_runs_as_a_module_with_help():
    runnable = [m for m in MODULES if hasattr(importlib.import_module(f"benchmarks.{m}"), "main")]
    expected = {"ablation", "continuity", "loss_cost", "proxy_training", "reducer_robustness", "reducer_speed"}
    assert expected <= set(runnable)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs = {m: subprocess.Popen([sys.executable, "-m", f"benchmarks.{m}", "--help"], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in runnable}
    for m, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, f"{m}: {err[-2000:]}"
        assert out.startswith("usage:"), f"{m}: {out[:200]}"
