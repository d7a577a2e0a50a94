"""Adapters that run the peer Niggli reducers with one signature and per-call timeouts.

Conventions
-----------
A lattice is a (3, 3) float64 array whose ROWS are the lattice vectors a, b, c.
A reduced lattice relates to its input by ``reduced = T @ L`` where T is an
integer matrix with det T = +-1 (the "transform").

Public API
----------
``reduce_with(tool, lattices, timeout=2.0) -> list[PeerResult]``
    Reduce every lattice of an (n, 3, 3) float64 array with one peer tool.
``PEER_REDUCERS``
    The valid tool names: ``("spglib", "pymatgen", "ase", "cctbx", "moyopy")``.
``PeerResult``
    ``lattice`` (3x3 float64 or None), ``transform`` (3x3 int64 or None),
    ``outcome`` ("ok" | "none" | "error" | "timeout"), ``message``, ``seconds``.
``shutdown_workers()``
    Stop the persistent worker processes (also registered with atexit).

How each tool is called and where its transform comes from
----------------------------------------------------------
* spglib   -- ``spglib.niggli_reduce(L, eps=1e-5)`` through
  ``soft_niggli._spglib.spglib_niggli_reduce``, in-process (it returns None
  or raises on failure, both reported as "none", and has never been seen to
  hang).  spglib returns an oriented lattice (integer combination of the input
  rows); the transform is recovered EXACTLY by rounding (see below).
* pymatgen -- ``Lattice(L).get_niggli_reduced_lattice(tol=1e-5)`` in a worker
  process.  pymatgen reduces the metric, rebuilds a cell from lengths/angles and
  then searches for an oriented lattice with ``find_mapping``; that search can
  run for minutes on skewed or mixed-scale cells, hence the worker + timeout.
  Its result is oriented, so the transform is recovered by exact rounding.
* ase      -- ``ase.build.niggli.niggli_reduce_cell(L)`` (re-exported by
  ``ase.build.tools``) in a worker process.  It returns ``(cell, op)`` where
  ``cell`` is rebuilt from cell parameters in ASE's standard orientation and
  ``op`` is the integer change of basis in COLUMN convention, so the transform
  is ``T = op.T`` and the reported lattice is the oriented ``T @ L`` (verified:
  the metric of ``op.T @ L`` equals that of ASE's cell to ~1e-12 relative).
* cctbx    -- ``uctbx.unit_cell((a, b, c, alpha, beta, gamma)).niggli_reduction()``
  in a worker process that never imports torch (``import torch`` followed by
  ``from cctbx import uctbx`` segfaults in this environment; the worker also
  poisons ``sys.modules["torch"]`` so an accidental import fails cleanly).
  cctbx only sees cell parameters, so there is no orientation to return: the
  transform is ``T = r_inv().T`` (``r_inv`` is the column-convention change of
  basis, e.g. cb op "a,c,-a-b+2*c" <-> r_inv rows (1,0,-1),(0,0,-1),(0,1,2))
  and the reported lattice is the oriented ``T @ L``.  Angles are computed with
  atan2(|u x v|, u.v), which stays accurate near 0 and 180 degrees.
* moyopy   -- ``moyopy.niggli_reduce(L)`` (moyopy >= 0.4, the Python binding
  of the Rust library moyo) in a worker process: it can run for minutes on
  mixed-scale cells (lengths 1e-4, 1, 1e4), hence the worker + timeout.  It
  takes no tolerance, raises ValueError on a singular or non-finite cell, and
  returns ``(basis, transformation)`` with ``basis = transformation.T @ L``
  (column convention), so the transform is ``T = transformation.T`` and the
  reported lattice is moyopy's own basis.

For ASE, cctbx and moyopy the adapter also checks that the metric of ``T @ L`` agrees
with the tool's own reduced metric and appends a note to ``message`` if the
relative difference exceeds 1e-6 (the outcome stays "ok").

Exact transform recovery (spglib, pymatgen)
-------------------------------------------
``T = L_red @ inv(L_in)`` is evaluated with ``fractions.Fraction`` (float64
entries are exact binary rationals, so no rounding error enters even for
ill-conditioned inputs) and rounded.  T is kept only if every entry is within
1e-3 of its integer and the integer matrix has |det| == 1; otherwise
``transform`` is None while ``outcome`` stays "ok" (the checker
:mod:`soft_niggli.testing.reduction_check` will then call the result wrong).

Outcomes and timing
-------------------
"ok" the tool returned a cell; "none" it returned None / failed softly;
"error" it raised (or its worker crashed: message says how); "timeout" the call
exceeded ``timeout`` seconds -- the worker is SIGKILLed and a fresh one is
started lazily for the next lattice.  ``seconds`` is the time the tool call
itself took, measured inside the worker (it excludes inter-process overhead
and worker start-up); for "timeout" it is the wall time waited before the
kill.  spglib runs in-process and is never interrupted: a slow spglib call is
reported as "ok" with its true ``seconds``.

Workers are persistent (one per tool, started on first use: 0.2-1 s of
imports) and talk length-prefixed pickles over stdin/stdout.  A worker runs
this file alone (``python -c`` loading it by path), never the package
``soft_niggli``, whose import would import torch.  They are stopped
by ``shutdown_workers()`` / atexit, exit on EOF of stdin, and are killed when
their parent dies (Linux PR_SET_PDEATHSIG, so even a call stuck holding the GIL
goes; a watchdog thread is the portable fallback), so nothing is left running.
Nothing escapes ``reduce_with`` except ``ValueError`` for bad
arguments (unknown tool, wrong array shape, non-positive timeout).
"""

from __future__ import annotations

import atexit
import math
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = ["PEER_REDUCERS", "PeerResult", "reduce_with", "shutdown_workers"]

PEER_REDUCERS = ("spglib", "pymatgen", "ase", "cctbx", "moyopy")

#: tolerance handed to every tool that takes one (spglib eps, pymatgen tol, ASE
#: epsfactor, cctbx relative_epsilon); these are the tools' documented defaults.
#: moyopy takes none.
TOOL_EPS = 1e-5
#: how long a worker may take to import its tool and say "ready".
STARTUP_TIMEOUT = 120.0
#: entries of a recovered transform must be this close to integers.
INTEGRAL_ATOL = 1e-3

#: Started as ``python -c _WORKER_BOOT <this file> <tool>``: loads this file alone, as a module of its
#: own, and serves requests (see :meth:`_Worker.start` for why not ``python -m``).
_WORKER_BOOT = """\
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_soft_niggli_peer_reducer_worker", sys.argv[1])
module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module._worker_main(sys.argv[2])
"""


@dataclass
class PeerResult:
    """Result of one peer-tool call on one lattice (rows = lattice vectors)."""

    lattice: np.ndarray | None
    transform: np.ndarray | None
    outcome: str
    message: str = ""
    seconds: float = 0.0

    def __repr__(self) -> str:  # compact: the arrays make the default repr noisy
        t = None if self.transform is None else self.transform.tolist()
        return (f"PeerResult(outcome={self.outcome!r}, seconds={self.seconds:.4g}, "
                f"transform={t}, message={self.message!r})")


# ----------------------------------------------------------------------------
# exact transform recovery (shared by the in-process spglib path and workers)
# ----------------------------------------------------------------------------

def _exact_transform(L_in: np.ndarray, L_out: np.ndarray, atol: float = INTEGRAL_ATOL):
    """Integer T with L_out == T @ L_in, found exactly with Fractions; None if not unimodular."""
    try:
        A = [[Fraction(float(x)) for x in row] for row in np.asarray(L_in, dtype=np.float64)]
        B = [[Fraction(float(x)) for x in row] for row in np.asarray(L_out, dtype=np.float64)]
    except (ValueError, OverflowError):  # nan / inf
        return None
    # adjugate (transposed cofactor matrix): inv(A) = adj / det
    adj = [[None] * 3 for _ in range(3)]
    for i in range(3):
        for j in range(3):
            r = [k for k in range(3) if k != j]
            c = [k for k in range(3) if k != i]
            minor = A[r[0]][c[0]] * A[r[1]][c[1]] - A[r[0]][c[1]] * A[r[1]][c[0]]
            adj[i][j] = minor if (i + j) % 2 == 0 else -minor
    det = sum(A[0][k] * adj[k][0] for k in range(3))
    if det == 0:
        return None
    R = [[0] * 3 for _ in range(3)]
    for i in range(3):
        for j in range(3):
            t = sum(B[i][k] * adj[k][j] for k in range(3)) / det
            n = round(t)
            if abs(t - n) > atol or abs(n) > 2**62:
                return None
            R[i][j] = n
    d = (R[0][0] * (R[1][1] * R[2][2] - R[1][2] * R[2][1])
         - R[0][1] * (R[1][0] * R[2][2] - R[1][2] * R[2][0])
         + R[0][2] * (R[1][0] * R[2][1] - R[1][1] * R[2][0]))
    if abs(d) != 1:
        return None
    return np.array(R, dtype=np.int64)


def _g6(L: np.ndarray) -> np.ndarray:
    G = L @ L.T
    return np.array([G[0, 0], G[1, 1], G[2, 2], 2 * G[1, 2], 2 * G[0, 2], 2 * G[0, 1]])


def _metric_note(L_oriented: np.ndarray, g6_tool) -> str:
    """Empty string if G6(L_oriented) matches the tool's own reduced G6, else a note."""
    g_ours = _g6(L_oriented)
    g_tool = np.asarray(g6_tool, dtype=np.float64)
    scale = max(float(np.max(np.abs(g_tool[:3]))), 1e-300)
    rel = float(np.max(np.abs(g_ours - g_tool))) / scale
    if not np.isfinite(rel) or rel > 1e-6:
        return f"metric of T@L differs from the tool's own reduced metric (rel {rel:.3g})"
    return ""


# ----------------------------------------------------------------------------
# one-lattice calls; each returns (lattice | None, transform | None, message, seconds)
# and may raise (the caller turns exceptions into outcome "error")
# ----------------------------------------------------------------------------

def _call_spglib(L: np.ndarray):
    # Imported here, not at the top: workers load this file without the package (see _Worker.start),
    # and spglib never runs in a worker.
    from soft_niggli._spglib import spglib_niggli_reduce

    t0 = time.perf_counter()
    result = spglib_niggli_reduce(L, eps=TOOL_EPS)
    dt = time.perf_counter() - t0
    if not result.ok:
        return None, None, "spglib.niggli_reduce returned None or raised", dt
    return result.lattice, _exact_transform(L, result.lattice), "", dt


def _call_pymatgen(L: np.ndarray):
    from pymatgen.core import Lattice

    t0 = time.perf_counter()
    red = Lattice(L).get_niggli_reduced_lattice(tol=TOOL_EPS)
    dt = time.perf_counter() - t0
    if red is None:
        return None, None, "get_niggli_reduced_lattice returned None", dt
    out = np.array(red.matrix, dtype=np.float64)
    return out, _exact_transform(L, out), "", dt


def _call_ase(L: np.ndarray):
    try:
        from ase.build.tools import niggli_reduce_cell
    except ImportError:  # older/newer layouts
        from ase.build.niggli import niggli_reduce_cell

    t0 = time.perf_counter()
    cell, op = niggli_reduce_cell(L, epsfactor=TOOL_EPS)
    dt = time.perf_counter() - t0
    T = np.rint(np.asarray(op, dtype=np.float64).T).astype(np.int64)  # op is column convention
    out = T.astype(np.float64) @ L
    msg = _metric_note(out, _g6(np.asarray(cell, dtype=np.float64)))
    if round(abs(np.linalg.det(T.astype(np.float64)))) != 1:
        return out, None, (msg + "; " if msg else "") + "ASE op is not unimodular", dt
    return out, T, msg, dt


def _cell_parameters(L: np.ndarray):
    """(a, b, c, alpha, beta, gamma) in Angstrom/degrees; angles via atan2 for accuracy."""
    a, b, c = (np.asarray(v, dtype=np.float64) for v in L)

    def ang(u, v):
        return math.degrees(math.atan2(float(np.linalg.norm(np.cross(u, v))), float(u @ v)))

    return (float(np.linalg.norm(a)), float(np.linalg.norm(b)), float(np.linalg.norm(c)),
            ang(b, c), ang(a, c), ang(a, b))


def _call_cctbx(L: np.ndarray):
    from cctbx import uctbx

    t0 = time.perf_counter()
    uc = uctbx.unit_cell(_cell_parameters(L))
    red = uc.niggli_reduction(relative_epsilon=TOOL_EPS)
    dt = time.perf_counter() - t0
    # r_inv is in column convention: new basis (as columns) = old basis @ r_inv.
    T = np.array(red.r_inv().elems, dtype=np.float64).reshape(3, 3).T
    T = np.rint(T).astype(np.int64)
    out = T.astype(np.float64) @ L
    msg = _metric_note(out, red.as_gruber_matrix())  # (A, B, C, xi, eta, zeta)
    if round(abs(np.linalg.det(T.astype(np.float64)))) != 1:
        return out, None, (msg + "; " if msg else "") + "cctbx r_inv is not unimodular", dt
    return out, T, msg, dt


def _call_moyopy(L: np.ndarray):
    import moyopy

    t0 = time.perf_counter()
    basis, transformation = moyopy.niggli_reduce(L)
    dt = time.perf_counter() - t0
    out = np.array(basis, dtype=np.float64).reshape(3, 3)
    T = np.array(transformation, dtype=np.int64).reshape(3, 3).T  # column convention
    msg = _metric_note(T.astype(np.float64) @ L, _g6(out))
    if round(abs(np.linalg.det(T.astype(np.float64)))) != 1:
        return out, None, (msg + "; " if msg else "") + "moyopy transformation is not unimodular", dt
    return out, T, msg, dt


_CALLS = {"spglib": _call_spglib, "pymatgen": _call_pymatgen, "ase": _call_ase, "cctbx": _call_cctbx,
          "moyopy": _call_moyopy}


def _run_call(tool: str, L: np.ndarray):
    """Run one call; returns (outcome, lattice, transform, message, seconds). Never raises."""
    t0 = time.perf_counter()
    try:
        lat, T, msg, dt = _CALLS[tool](L)
    except BaseException as exc:  # noqa: BLE001 -- any failure of the tool is an "error"
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return "error", None, None, f"{type(exc).__name__}: {exc}"[:2000], time.perf_counter() - t0
    if lat is None:
        return "none", None, None, msg, dt
    return "ok", lat, T, msg, dt


# ----------------------------------------------------------------------------
# worker protocol: 4-byte big-endian length + pickle, both directions
# ----------------------------------------------------------------------------

def _send(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    buf = struct.pack(">I", len(data)) + data
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


class _Timeout(Exception):
    pass


class _Dead(Exception):
    pass


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise _Timeout
        chunk = os.read(fd, n - got)
        if not chunk:
            raise _Dead
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(fd: int, deadline: float | None):
    (n,) = struct.unpack(">I", _read_exact(fd, 4, deadline))
    return pickle.loads(_read_exact(fd, n, deadline))


def _worker_main(tool: str) -> None:
    """Body of a worker process: import the tool, then serve one lattice per request."""
    # Keep the protocol channel private: tools that print must not corrupt it.
    proto_out = os.dup(1)
    os.dup2(2, 1)
    proto_in = 0
    if tool == "cctbx":
        sys.modules["torch"] = None  # any torch import now raises ImportError instead of segfaulting

    parent = int(os.environ.get("_SOFT_NIGGLI_WORKER_PARENT_PID", os.getppid()))
    # Die with the parent even while a tool call holds the GIL (pymatgen's
    # lattice-point search can): ask the kernel for SIGKILL on parent death.
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # parent already gone before prctl took effect
        os._exit(0)

    def watchdog():  # portable fallback: exit if the parent disappears
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()

    import warnings

    warnings.simplefilter("ignore")
    try:
        _CALLS[tool](np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]]))  # import + warm up
    except BaseException as exc:  # noqa: BLE001
        _send(proto_out, ("fatal", f"{tool} unavailable: {type(exc).__name__}: {exc}"))
        return
    _send(proto_out, ("ready", tool))
    while True:
        try:
            req = _recv(proto_in, None)
        except (_Dead, EOFError, OSError):
            return
        if req[0] == "quit":
            return
        _send(proto_out, _run_call(tool, np.asarray(req[1], dtype=np.float64)))


class _Worker:
    """A persistent subprocess running :func:`_worker_main` for one tool."""

    def __init__(self, tool: str):
        self.tool = tool
        self.proc: subprocess.Popen | None = None
        self.stderr = None
        self.start_error: str | None = None  # set once start-up failed: don't retry per lattice

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        if self.start_error is not None:
            raise RuntimeError(self.start_error)
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")  # tiny matrices: threads only oversubscribe
        env["_SOFT_NIGGLI_WORKER_PARENT_PID"] = str(os.getpid())
        self.stderr = tempfile.TemporaryFile()
        # The worker must never import torch (fatal for cctbx, see the module docstring), so it
        # cannot run as ``python -m soft_niggli.baselines.reducers``: importing the package
        # soft_niggli imports torch. It loads this file alone (standard library and NumPy only), and
        # unlike a spawn-style child it does not re-import the parent's __main__ either.
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", _WORKER_BOOT, os.path.abspath(__file__), self.tool],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            env=env, close_fds=True,
        )
        try:
            msg = _recv(self.proc.stdout.fileno(), time.monotonic() + STARTUP_TIMEOUT)
        except (_Timeout, _Dead, EOFError, pickle.UnpicklingError, struct.error) as exc:
            tail = self._stderr_tail()
            self.kill()
            self.start_error = f"{self.tool} worker failed to start ({type(exc).__name__}): {tail}"
            raise RuntimeError(self.start_error) from None
        if msg[0] != "ready":
            self.kill()
            self.start_error = str(msg[1])
            raise RuntimeError(self.start_error)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        if self.stderr is not None:
            self.stderr.close()
        self.proc, self.stderr = None, None

    def close(self) -> None:
        """Polite shutdown (quit message), falling back to kill."""
        if self.alive():
            try:
                _send(self.proc.stdin.fileno(), ("quit",))
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _stderr_tail(self, n: int = 1500) -> str:
        if self.stderr is None:
            return ""
        try:
            self.stderr.flush()
            size = self.stderr.seek(0, os.SEEK_END)
            self.stderr.seek(max(0, size - n))
            return self.stderr.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    # -- one call ----------------------------------------------------------------
    def call(self, L: np.ndarray, timeout: float) -> PeerResult:
        if not self.alive():
            self.kill()
            self.start()  # may raise RuntimeError: handled by reduce_with
        t0 = time.monotonic()
        try:
            _send(self.proc.stdin.fileno(), ("reduce", L))
            outcome, lat, T, msg, dt = _recv(self.proc.stdout.fileno(), t0 + timeout)
        except _Timeout:
            waited = time.monotonic() - t0
            self.kill()
            return PeerResult(None, None, "timeout", f"{self.tool} exceeded {timeout:g} s; worker killed", waited)
        except (_Dead, OSError, EOFError, pickle.UnpicklingError, struct.error) as exc:
            waited = time.monotonic() - t0
            code = self.proc.poll() if self.proc is not None else None
            if code is None and self.proc is not None:
                try:
                    code = self.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    code = "?"
            how = (f"signal {signal.Signals(-code).name}" if isinstance(code, int) and code < 0
                   else f"exit code {code}")
            tail = self._stderr_tail(400)
            self.kill()
            return PeerResult(None, None, "error",
                              f"{self.tool} worker died ({how}, {type(exc).__name__}); stderr: {tail}", waited)
        return PeerResult(lat, T, outcome, msg, dt)


_WORKERS: dict[str, _Worker] = {}
_LOCK = threading.Lock()


def shutdown_workers() -> None:
    """Stop every persistent worker process started by :func:`reduce_with`."""
    with _LOCK:
        for w in _WORKERS.values():
            w.close()
        _WORKERS.clear()


atexit.register(shutdown_workers)


def reduce_with(tool: str, lattices: np.ndarray, timeout: float = 2.0) -> list[PeerResult]:
    """Niggli-reduce each lattice of a ``(..., 3, 3)`` array-like (rows = a, b, c) with a peer tool.

    Returns one :class:`PeerResult` per lattice, in the order of the flattened cells
    ``lattices.reshape(-1, 3, 3)`` (a list of one for one cell ``(3, 3)``).  ``timeout`` is the
    per-call budget in seconds for the worker-backed tools (pymatgen, ase,
    cctbx, moyopy); spglib runs in-process and is not interrupted.  Raises ValueError
    only for an unknown tool, an array that is not (..., 3, 3), or timeout <= 0.
    """
    if tool not in PEER_REDUCERS:
        raise ValueError(f"unknown peer reducer {tool!r}; valid tools are {', '.join(PEER_REDUCERS)}")
    arr = np.asarray(lattices)
    if arr.ndim < 2 or arr.shape[-2:] != (3, 3):
        raise ValueError(f"lattices: expected shape (..., 3, 3), got {arr.shape}")
    try:
        arr = np.ascontiguousarray(arr, dtype=np.float64).reshape(-1, 3, 3)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"lattices must be convertible to float64: {exc}") from None
    try:
        budget = float(timeout)
    except (TypeError, ValueError):
        budget = float("nan")
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"timeout must be a positive, finite number of seconds; received {timeout!r}")

    results: list[PeerResult] = []
    if tool == "spglib":
        for L in arr:
            outcome, lat, T, msg, dt = _run_call("spglib", L.copy())
            results.append(PeerResult(lat, T, outcome, msg, dt))
        return results

    with _LOCK:
        worker = _WORKERS.get(tool)
        if worker is None:
            worker = _WORKERS[tool] = _Worker(tool)
        for L in arr:
            try:
                results.append(worker.call(L.copy(), budget))
            except Exception as exc:  # noqa: BLE001 -- worker could not start: report, don't raise
                results.append(PeerResult(None, None, "error", f"{type(exc).__name__}: {exc}"[:2000], 0.0))
    return results
