"""The benchmarks as a package: the shared results writer of the harness, and every experiment importable,
runnable as ``python -m benchmarks.<name>`` and returning its exit status from ``main(argv)``."""

from __future__ import annotations

import ast
import doctest
import importlib
import json
import os
import pkgutil
import platform
import sys
import warnings

import pytest
import torch
from conftest import REPO_ROOT
from hypothesis import given
from hypothesis import strategies as st

import benchmarks
import benchmarks.harness
from benchmarks.harness import report

ROOT = REPO_ROOT
EXPERIMENTS = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.ispkg)
HARNESS = sorted(f"harness.{m.name}" for m in pkgutil.iter_modules(benchmarks.harness.__path__))


def _runnable() -> list[str]:
    return [m for m in EXPERIMENTS if hasattr(importlib.import_module(f"benchmarks.{m}"), "main")]


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


def test_load_average_is_read_where_available(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (1.25, 0.0, 0.0), raising=False)
    assert report.load_average() == "load average 1.2 at the start"

    def unavailable():
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", unavailable, raising=False)
    assert report.load_average() == "load average not available"


def test_no_benchmark_writes_a_machine_by_hand():
    for path in (ROOT / "benchmarks").rglob("*.py"):
        text = path.read_text()
        for words in ("2-core", "2 cores", "EPYC", "platform.processor()", "os.cpu_count()", "getloadavg"):
            assert path.name == "report.py" or words not in text, f"{path.name}: {words!r}"


def test_every_markdown_table_is_written_by_the_one_writer():
    # A table row or rule written by hand ("|---|", "| name | ...") bypasses report.markdown_table.
    for path in (ROOT / "benchmarks").rglob("*.py"):
        if path.name == "report.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert "---|" not in node.value and not node.value.startswith("| "), \
                    f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}"


_CELL = st.text(st.characters(blacklist_characters="|\n\r", blacklist_categories=("Cs",)), max_size=8)


@given(st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.lists(_CELL, min_size=n, max_size=n), st.lists(st.lists(_CELL, min_size=n, max_size=n), max_size=4))))
def test_markdown_table_has_a_header_a_rule_and_one_line_per_row(table):
    columns, rows = table
    lines = report.markdown_table(columns, rows)
    assert len(lines) == 2 + len(rows)
    assert lines[1] == "|" + "---|" * len(columns)
    for line, cells in zip([lines[0], *lines[2:]], [columns, *rows]):
        assert line.startswith("| ") and line.endswith(" |")
        assert line[2:-2].split(" | ") == list(cells)
    # A function of each record gives the same lines as the records' cells written out.
    assert report.markdown_table(columns, range(len(rows)), lambda i: rows[i]) == lines


def test_markdown_table_refuses_a_row_of_another_width():
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        report.markdown_table(["a", "b"], [["1", "2", "3"]])


def test_command_line_is_the_module_form_with_the_exact_arguments(monkeypatch):
    assert report.command_line("loss_cost", ["--repeats", "9"]) == "python -m benchmarks.loss_cost --repeats 9"
    assert report.command_line("ablation", []) == "python -m benchmarks.ablation"
    assert report.command_line("ablation", ["--out", "a b"]) == "python -m benchmarks.ablation --out 'a b'"
    monkeypatch.setattr(sys, "argv", ["whatever", "--quick"])
    assert report.command_line("reducer_speed") == "python -m benchmarks.reducer_speed --quick"


def test_results_folder_is_the_committed_one():
    assert report.RESULTS == ROOT / "benchmarks" / "results" and (report.RESULTS / "loss_cost.md").is_file()


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


def test_float32_near_faces_measures_every_loss_in_every_group(tmp_path):
    pytest.importorskip("hypothesis")
    from benchmarks import float32_near_faces as f32

    assert f32.main(["--draws", "2", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "float32_near_faces.json").read_text())
    assert len(record["rows"]) == len(f32.GROUPS) * len(f32.LOSSES)
    assert all(r["draws"] == 2 and 0 <= r["relative"]["median"] <= r["relative"]["max"] for r in record["rows"])
    # float32 labels re-based and rounded again are other cells: every loss moves (a benchmark that left the
    # labels in float64 or did not re-base them would not); float64 labels by no more than 1e-9 of the loss.
    assert all(r["relative"]["max"] > 1e-7 for r in record["rows"] if r["group"].startswith("float32"))
    assert all(r["relative"]["max"] < 1e-9 for r in record["rows"] if r["group"].startswith("float64"))
    with pytest.raises(SystemExit):
        f32.main(["--draws", "0"])


@pytest.mark.parametrize("name", EXPERIMENTS + HARNESS)
def test_every_benchmark_module_imports_and_its_doctests_pass(name):
    module = importlib.import_module(f"benchmarks.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} doctest examples failed"


def test_the_package_lists_its_experiments():
    assert set(benchmarks.EXPERIMENTS) == set(_runnable())
    assert {"ablation", "continuity", "generative", "loss_cost", "proxy_training", "reducer_robustness",
            "reducer_speed"} <= set(benchmarks.EXPERIMENTS)


@pytest.mark.parametrize("name", benchmarks.EXPERIMENTS)
def test_every_experiment_returns_its_exit_status_and_runs_as_a_module(name):
    # main(argv) -> int returns 0 and nothing else, and `python -m benchmarks.<name>` exits with it.
    tree = ast.parse((ROOT / "benchmarks" / f"{name}.py").read_text())
    (main,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert ast.unparse(main.returns) == "int"
    returns, todo = [], list(main.body)
    while todo:  # the function's own returns, not those of functions defined inside it
        node = todo.pop()
        if isinstance(node, ast.Return):
            returns.append(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))
    assert returns and all(ast.unparse(r.value) == "0" for r in returns), [ast.unparse(r) for r in returns]
    guard = tree.body[-1]
    assert ast.unparse(guard) == "if __name__ == '__main__':\n    raise SystemExit(main())"


@pytest.mark.parametrize("name", benchmarks.EXPERIMENTS)
def test_every_experiment_prints_its_help(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--out" in out, out[:200]


@pytest.mark.parametrize("old", sorted(benchmarks.MOVED))
def test_a_moved_module_imports_by_its_old_name_with_one_warning(old, monkeypatch):
    new = importlib.import_module(benchmarks.MOVED[old])
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(FutureWarning, match=benchmarks.MOVED[old].replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is new and module.__spec__.name == benchmarks.MOVED[old]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert importlib.import_module(old) is new  # once
