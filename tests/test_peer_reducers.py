"""Tests for the peer-reducer adapters of soft_niggli.baselines.reducers (rows = lattice vectors).

Tool availability is probed with importlib.util.find_spec, NOT by importing:
importing cctbx in a process that already imported torch (tests/conftest.py
does) segfaults, which is exactly why the adapters run cctbx in a worker.
"""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np
import pytest

# `benchmarks` is not installed: it is importable through pytest's `pythonpath = ["."]` (pyproject.toml).
from benchmarks.reduction_check import classify
from soft_niggli.baselines.reducers import PEER_REDUCERS, PeerResult, reduce_with, shutdown_workers

# spglib 2.x warns about its legacy error handling on every call
pytestmark = pytest.mark.filterwarnings("ignore:Set OLD_ERROR_HANDLING:DeprecationWarning")

_MODULE = {"spglib": "spglib", "pymatgen": "pymatgen", "ase": "ase", "cctbx": "cctbx"}


def _need(tool: str) -> None:
    if importlib.util.find_spec(_MODULE[tool]) is None:
        pytest.skip(f"{tool} not installed")


def _cells():
    cubic = 4.0 * np.eye(3)
    rng = np.random.default_rng(3)
    while True:  # a random cell with a healthy volume, then a scrambled basis of it
        L = rng.normal(size=(3, 3)) * 4.0
        if abs(np.linalg.det(L)) > 0.3 * np.linalg.norm(L, axis=1).prod():
            break
    U = np.array([[1, 2, 0], [0, 1, -1], [1, 3, -2]])  # det = 1
    return np.stack([cubic, U @ L])


@pytest.mark.parametrize("tool", PEER_REDUCERS)
def test_adapter_ok_with_transform(tool):
    _need(tool)
    cells = _cells()
    results = reduce_with(tool, cells, timeout=30.0)
    assert len(results) == len(cells)
    for L, r in zip(cells, results):
        assert isinstance(r, PeerResult)
        assert r.outcome == "ok", r
        assert r.lattice.shape == (3, 3) and r.transform.dtype == np.int64
        assert round(abs(np.linalg.det(r.transform))) == 1
        np.testing.assert_allclose(r.transform @ L, r.lattice, atol=1e-9 * np.abs(L).max())
        assert classify(L, r.lattice) == "reduced"
        assert r.seconds >= 0


def test_unknown_tool_and_bad_shape():
    with pytest.raises(ValueError) as exc:
        reduce_with("nope", np.eye(3)[None])
    for name in PEER_REDUCERS:
        assert name in str(exc.value)
    with pytest.raises(ValueError, match=r"\(n, 3, 3\)"):
        reduce_with("spglib", np.eye(3))
    assert reduce_with("spglib", np.zeros((0, 3, 3))) == []


def test_tool_exception_is_error_not_raised():
    _need("pymatgen")
    # pymatgen fails on a zero cell (ValueError inside); nothing must escape.
    (r,) = reduce_with("pymatgen", np.zeros((1, 3, 3)), timeout=30.0)
    assert r.outcome == "error" and r.lattice is None and r.message


def test_pymatgen_timeout_then_recovers():
    _need("pymatgen")
    reduce_with("pymatgen", 4.0 * np.eye(3)[None], timeout=30.0)  # warm the worker up
    # Mixed-scale cell (lengths 1e-4, 1, 1e4): pymatgen's find_mapping enumerates
    # lattice points in a huge sphere and runs for minutes.
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    hang = v * np.array([1e-4, 1.0, 1e4])[:, None]
    t0 = time.monotonic()
    r_hang, r_next = reduce_with("pymatgen", np.stack([hang, 4.0 * np.eye(3)]), timeout=1.0)
    wall = time.monotonic() - t0
    assert r_hang.outcome == "timeout", r_hang
    assert 0.9 <= r_hang.seconds < 3.0
    assert r_next.outcome == "ok"            # a fresh worker took over
    assert wall < 15.0


def test_shutdown_leaves_no_worker():
    _need("ase")
    from soft_niggli.baselines import reducers

    reduce_with("ase", 4.0 * np.eye(3)[None], timeout=30.0)
    pids = [w.proc.pid for w in reducers._WORKERS.values() if w.proc is not None]
    assert pids
    shutdown_workers()
    assert not reducers._WORKERS
    for pid in pids:  # reaped: the pid no longer exists as our child
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
