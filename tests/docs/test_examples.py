"""Every script in examples/ runs, as a user would run it (a subprocess), on tiny inputs; without the
extra it needs it says so in one line; its --help is plain text with every default."""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

import soft_niggli

EXAMPLES = REPO_ROOT / "examples"

#: script -> (arguments for a tiny run, a line its output must contain, the optional packages it needs)
RUNS = {
    "pyg_batch.py": (["--crystals", "4"], "on the re-based ones", ()),
    "flow_matching_step.py": (["--crystals", "4", "--steps", "2"], "after 2 step(s)", ("pymatgen",)),
    "canonicalize_and_test.py": (["--crystals", "8"], "Niggli-reduced metric passes", ("pymatgen",)),
}
#: What a core install (pip install soft-niggli) lacks: the packages of the extras.
EXTRAS = ("pymatgen", "hypothesis", "ase", "matplotlib", "tqdm", "cctbx", "moyopy", "torch_geometric")

# Runs a script as __main__ with the extras' packages made unimportable, as on a core install.
_WITHOUT_EXTRAS = """
import runpy, sys
blocked = set(sys.argv[1].split(","))
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _env() -> dict:
    # The soft_niggli this process imported (checkout or install), whatever the working directory.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(soft_niggli.__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_every_example_is_run_here():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(RUNS)


@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_runs(script):
    args, expected, needs = RUNS[script]
    for package in needs:
        pytest.importorskip(package)
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                         timeout=120, env=_env(), cwd=EXAMPLES)
    assert out.returncode == 0, f"{script} failed:\n{out.stdout}\n{out.stderr}"
    assert expected in out.stdout, out.stdout


@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_on_a_core_install_runs_or_names_its_extra_in_one_line(script):
    args, expected, needs = RUNS[script]
    out = subprocess.run([sys.executable, "-c", _WITHOUT_EXTRAS, ",".join(EXTRAS), str(EXAMPLES / script), *args],
                         capture_output=True, text=True, timeout=120, env=_env(), cwd=EXAMPLES)
    if not needs:
        assert out.returncode == 0 and expected in out.stdout, f"{script}:\n{out.stdout}\n{out.stderr}"
        return
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert all(package in lines[0] for package in needs) and "pip install" in lines[0], lines[0]
    assert all(package in _docstring(script) for package in needs)  # said before it is run, too


def _docstring(script: str) -> str:
    text = (EXAMPLES / script).read_text()
    return text[:text.index('"""', 3)]


@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_help_is_plain_text_with_defaults(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as exc:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    text = printed.getvalue()
    assert exc.value.code == 0, text
    assert "``" not in text and ":func:" not in text and ":class:" not in text
    options = text.split("options:", 1)[1].split("\n  -")[2:]  # after -h, one entry per option
    assert options and all("(default:" in option for option in options), text
