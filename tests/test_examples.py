"""Every script in examples/ runs, as a user would run it (a subprocess), on tiny inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import soft_niggli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: script -> (arguments for a tiny run, a line its output must contain, needs pymatgen)
RUNS = {
    "pyg_batch.py": (["--crystals", "4"], "on the re-based ones", False),
    "flow_matching_step.py": (["--crystals", "4", "--steps", "2"], "after 2 step(s)", True),
    "canonicalize_and_test.py": (["--crystals", "8"], "Niggli-reduced metric passes", True),
}


def test_every_example_is_run_here():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(RUNS)


@pytest.mark.parametrize("script", sorted(RUNS))
def test_example_runs(script):
    args, expected, needs_pymatgen = RUNS[script]
    if needs_pymatgen:
        pytest.importorskip("pymatgen")
    # The soft_niggli this process imported (checkout or install), whatever the working directory.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(soft_niggli.__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                         timeout=120, env=env, cwd=EXAMPLES)
    assert out.returncode == 0, f"{script} failed:\n{out.stdout}\n{out.stderr}"
    assert expected in out.stdout, out.stdout
