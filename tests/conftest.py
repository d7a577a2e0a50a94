"""Shared test settings: seeded RNG, hypothesis profiles, the path to ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile(
    "ci", deadline=None, max_examples=60, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.load_profile("ci" if os.environ.get("CI") else "default")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def load_shared_structures(dataset: str, split: str = "val", limit: int | None = None):
    """pymatgen Structures from ``../shared/data/<dataset>/<split>.csv.gz``; skips the test when absent."""
    path = SHARED_DATA / dataset / f"{split}.csv.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
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
    path = SHARED_DATA / dataset / f"{split}.csv.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    from soft_niggli.datasets import read_cdvae_cells

    return read_cdvae_cells(path)
