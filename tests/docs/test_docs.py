"""The documentation runs: every ```python block of README.md, and the doctests of every module.

README blocks run in order, each in a fresh namespace, with the README's own line numbers in
tracebacks; then all of them once more in a separate interpreter while other processes keep every core
busy, under hypothesis's own default settings (a 200 ms deadline, health checks), as a user runs them
on a busy laptop. A block that truly cannot run (it needs a user's model or data) may be excluded by an
HTML comment ``<!-- no-test -->`` on the line before its opening fence; prefer self-contained blocks.

Doctests: every module of ``soft_niggli`` and of ``soft_niggli.baselines`` (found by walking the
installed packages, so a new module is covered without listing it here), run with
:mod:`doctest` and the ``ELLIPSIS`` option, as ``pytest --doctest-modules`` would.
"""

from __future__ import annotations

import doctest
import importlib
import json
import os
import pkgutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

import soft_niggli
import soft_niggli.baselines

README = REPO_ROOT / "README.md"
SKIP_MARK = "<!-- no-test -->"


def _readme_blocks() -> list:
    """One pytest.param per ```python block: (first line number of the code, code)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    params, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1  # 0-based index of the block's first code line
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            if end == len(lines):
                raise AssertionError(f"README.md:{i + 1}: ```python block is never closed")
            previous = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            marks = [pytest.mark.skip(reason=f"marked {SKIP_MARK} in README.md")] if previous == SKIP_MARK else []
            params.append(pytest.param(start + 1, "\n".join(lines[start:end]) + "\n",
                                       id=f"README.md:{start + 1}", marks=marks))
            i = end
        i += 1
    return params


README_BLOCKS = _readme_blocks()


def test_readme_has_python_blocks():
    assert README_BLOCKS, "README.md has no ```python block (or the parser missed them)"


@pytest.mark.parametrize(("first_line", "code"), README_BLOCKS)
def test_readme_python_block_runs(first_line, code):
    # Pad with newlines so that tracebacks point at README.md's own line numbers.
    compiled = compile("\n" * (first_line - 1) + code, str(README), "exec")
    namespace = {"__name__": "__readme__"}
    exec(compiled, namespace)  # noqa: S102 -- running the documentation is the point


# Runs the README blocks given as JSON (file, [[first line, code], ...]) in order, each in a fresh namespace.
_RUN_BLOCKS = """
import json, sys
readme, blocks = json.load(open(sys.argv[1]))
for first_line, code in blocks:
    exec(compile("\\n" * (first_line - 1) + code, readme, "exec"), {"__name__": "__readme__"})
"""


def test_readme_python_blocks_pass_on_a_busy_machine(tmp_path):
    # This suite's hypothesis profiles turn the deadline and the slow-generation health check off; a
    # user's run has them on, and shares the machine with other work. One busy loop per core, and no
    # OMP_NUM_THREADS, so that torch's thread pool competes for the cores as on a user's machine.
    blocks = [list(p.values) for p in README_BLOCKS if not p.marks]
    (tmp_path / "blocks.json").write_text(json.dumps([str(README), blocks]), encoding="utf-8")
    (tmp_path / "run.py").write_text(_RUN_BLOCKS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        run = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "blocks.json")],
                             cwd=README.parent, env=env, capture_output=True, text=True, timeout=600, check=False)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert run.returncode == 0, f"README blocks failed on a busy machine:\n{run.stdout}\n{run.stderr}"


def _modules() -> list[str]:
    names = set()
    for package in (soft_niggli, soft_niggli.baselines):
        names.add(package.__name__)

        def onerror(name):  # a subpackage that fails to import: let its doctest test report it
            names.add(name)

        for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".", onerror=onerror):
            names.add(info.name)
    return sorted(names)


MODULES = _modules()


def test_the_module_walk_finds_the_library():
    assert {"soft_niggli.niggli", "soft_niggli.baselines.reducers", "soft_niggli.baselines.spglib_proxy"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, f"{runner.failures} of {runner.tries} doctest examples failed in {name}:\n" + "".join(report)
