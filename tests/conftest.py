"""Shared test settings: seeded RNG, hypothesis profiles ("default", "ci", "random"), the benchmark data folder.

The data folder: ``$SOFT_NIGGLI_DATA`` if set, else ``../shared/data`` relative to the repository root
(where this project's CSV files live in a development checkout). The library itself never looks there
(:func:`soft_niggli.datasets.resolve_data_dir`): tests pass the folder on, as ``data_dir=`` or through the
environment variable, which is set here for the session when the folder exists. Tests that need the data
skip cleanly where it is absent (:func:`shared_data_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Profiles. "default" (a laptop) draws fresh random examples and replays past failures from the local
# example database. "ci" is derandomised: the same examples on every run, so a red CI run reproduces
# exactly. "random" draws fresh examples with a fixed count and no database, so that CI also explores
# as a laptop does; CI runs the properties marked `invariance` again under it:
#     python -m pytest -q -m "invariance and not slow" --hypothesis-profile=random
# A failure prints its @reproduce_failure blob; pin the failing input as an explicit @example.
# The deadline is off because a loss on a busy CI machine can take longer than 200 ms per example, and
# that is not what these tests check; the strategies themselves must stay fast
# (tests/testing/test_testing.py checks their draw time).
_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.filter_too_much]
settings.register_profile("default", deadline=None, max_examples=60, suppress_health_check=_SUPPRESSED)
settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True, suppress_health_check=_SUPPRESSED)
settings.register_profile("random", deadline=None, max_examples=60, derandomize=False, database=None,
                          print_blob=True, suppress_health_check=_SUPPRESSED)
settings.load_profile("ci" if os.environ.get("CI") else "default")

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The benchmark data folder (it may not exist: see shared_data_dir).
SHARED_DATA = Path(os.environ.get("SOFT_NIGGLI_DATA") or REPO_ROOT.parent / "shared" / "data").expanduser()
if "SOFT_NIGGLI_DATA" not in os.environ and SHARED_DATA.is_dir():
    # Code under test that reads the variable (benchmarks run in-process) finds the folder too.
    os.environ["SOFT_NIGGLI_DATA"] = str(SHARED_DATA)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def shared_data_dir() -> Path:
    """The benchmark data folder; skips the calling test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data folder {SHARED_DATA} not present (set SOFT_NIGGLI_DATA to use another)")
    return SHARED_DATA


def shared_data_file(dataset: str, split: str = "val") -> Path:
    """``<data folder>/<dataset>/<split>.csv.gz``; skips the calling test when it is absent."""
    path = shared_data_dir() / dataset / f"{split}.csv.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def load_shared_structures(dataset: str, split: str = "val", limit: int | None = None):
    """pymatgen Structures parsed straight from the data file (independently of soft_niggli's reader);
    skips the test when the file is absent."""
    path = shared_data_file(dataset, split)
    import csv
    import gzip
    import warnings

    from pymatgen.core import Structure

    out = []
    csv.field_size_limit(1 << 30)
    with gzip.open(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append(Structure.from_str(row["cif"], fmt="cif"))
            if limit is not None and len(out) >= limit:
                break
    return out


def load_shared_cells(dataset: str, split: str = "val"):
    """All cells of a shared data file as float64 ``(n, 3, 3)``; skips the test when the file is absent."""
    from soft_niggli.datasets import read_cdvae_cells

    return read_cdvae_cells(shared_data_file(dataset, split))
