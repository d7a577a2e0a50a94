"""mkdocs hook: the table of lattice shapes on ``api/shapes.md``, made by calling each function.

When the site is built, every public function that takes lattices (or 3×3 integer matrices) is called
with one cell ``(3, 3)``, a batch ``(5, 3, 3)``, a stack ``(2, 4, 3, 3)``, a NumPy array and a nested
list, and the marker ``<!-- lattice-shapes -->`` becomes a table of what it accepted, with the error
message of the first shape it refused. The table therefore says what the installed code does, not
what it was meant to do.

Each row also states what the function documents that it accepts (:data:`CONTRACTS`): any stack
``(..., 3, 3)`` by default, a flat batch for what pairs lattices with per-crystal or per-atom data. A
function documented for stacks that refuses one of the probes is a build warning too (the table and the
code disagree).

A public function with a lattice argument (a parameter called ``lattice``, ``lattices``, ``L``,
``L_pred``, ``pred_lattice``, ...) that has no probe below is a build warning (a failure in strict
mode): add one to ``PROBES``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re

MARKER = "<!-- lattice-shapes -->"
PAGE = "api/shapes.md"
log = logging.getLogger(f"mkdocs.hooks.{__name__}")

#: Modules whose ``__all__`` is searched for functions taking lattices.
MODULES = (
    "soft_niggli.lattice", "soft_niggli.niggli", "soft_niggli.canonical", "soft_niggli.unimodular",
    "soft_niggli.flow", "soft_niggli.forms_cache", "soft_niggli.crystal", "soft_niggli.metrics",
    "soft_niggli.losses.terms", "soft_niggli.losses.candidates", "soft_niggli.losses.windows",
    "soft_niggli.losses.invariants", "soft_niggli.losses.sinkhorn", "soft_niggli.baselines",
    "soft_niggli.baselines.spglib_proxy",
)
#: What a function documents that it accepts, where it is not any stack ``(..., 3, 3)``.
STACKS = "`(..., 3, 3)`"
FLAT = "`(B, 3, 3)` or one `(3, 3)`; a stack is refused (`ValueError`)"
CONTRACTS = {
    "soft_niggli.flow.couple_reduced_forms": FLAT + ", the prior one per label",
    "soft_niggli.crystal.CrystalBatch": FLAT,
    "soft_niggli.losses.terms.coordinate_term": "`(B, 3, 3)` (or one `(3, 3)`) with the flat per-atom data",
    "soft_niggli.losses.terms.closest_automorphism": "`(B, 3, 3)` tensor, the prediction for a `CrystalBatch` of `B` labels",
    "soft_niggli.losses.windows.grouped_window_candidates": "`(B, 3, 3)` tensors, rows of the groups",
    "soft_niggli.losses.sinkhorn.sinkhorn_coordinate_loss": "`(B, 3, 3)` tensor with padded coordinates `(B, N, 3)`",
    "soft_niggli.losses.sinkhorn.sinkhorn_coordinate_loss_flat": "`(B, 3, 3)` tensor with the flat per-atom data",
}
_LATTICE_PARAM = re.compile(r"^(lattices?|\w+_lattices?|L|L_\w+|G_\w+|P_lat|M)$")
SHAPES = ("one", "batch", "stack", "numpy", "list")
HEADERS = ("`(3, 3)`", "`(5, 3, 3)`", "`(2, 4, 3, 3)`", "NumPy `(5, 3, 3)`", "list `(5, 3, 3)`")


def _cells(kind: str):
    """Lattices of the probe ``kind``: skewed cells of about 4-6 Å, float64."""
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(0)
    lead = {"one": (), "batch": (5,), "stack": (2, 4), "numpy": (5,), "list": (5,)}[kind]
    base = torch.tensor([[4.0, 0.0, 0.0], [1.0, 5.0, 0.0], [0.5, 1.0, 6.0]], dtype=torch.float64)
    L = base + 0.1 * torch.randn(*lead, 3, 3, generator=g, dtype=torch.float64)
    if kind == "numpy":
        return np.asarray(L)
    if kind == "list":
        return L.tolist()
    return L


def _matrices(kind: str):
    """Unimodular integer matrices of the probe ``kind``."""
    import numpy as np
    import torch

    lead = {"one": (), "batch": (5,), "stack": (2, 4), "numpy": (5,), "list": (5,)}[kind]
    M = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.int64).expand(*lead, 3, 3).clone()
    return np.asarray(M) if kind == "numpy" else M.tolist() if kind == "list" else M


def _count(kind: str) -> int:
    return {"one": 1, "batch": 5, "stack": 8, "numpy": 5, "list": 5}[kind]


def _frac(kind: str, atoms: int = 2):
    """Fractional coordinates matching the lattices of ``kind``: ``(..., atoms, 3)``."""
    import numpy as np
    import torch

    lead = {"one": (), "batch": (5,), "stack": (2, 4), "numpy": (5,), "list": (5,)}[kind]
    F = torch.rand(*lead, atoms, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return np.asarray(F) if kind == "numpy" else F.tolist() if kind == "list" else F


def _labels(n: int, atoms: int = 2):
    """A CrystalBatch of ``n`` crystals of ``atoms`` atoms each (the batch-of-crystals functions)."""
    import torch

    from soft_niggli import CrystalBatch

    L = _cells("batch")[:1].expand(n, 3, 3).clone()
    F = torch.rand(n * atoms, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return CrystalBatch(L, F, [atoms] * n, [6] * (n * atoms))


def _flat_frac(kind: str, atoms: int = 2):
    import torch

    n = _count(kind)
    return torch.rand(n * atoms, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64), \
        torch.arange(n).repeat_interleave(atoms)


def _batch_frac(kind: str):
    """Coordinates ``(N, 3)`` for a batch of the probe's lattices, a list where the lattices are one (a
    list becomes the default dtype, and a batch holds one dtype)."""
    frac = _flat_frac(kind)[0]
    return frac.tolist() if kind == "list" else frac


def _grouped_window(kind: str):
    """``grouped_window_candidates`` with every row its own group, the identity as its relative basis."""
    import torch

    n = _count(kind)
    eye = torch.eye(3, dtype=torch.int64).expand(n, 3, 3).clone()
    return _fn()(_cells(kind), _cells(kind), 8, _window_margin, torch.zeros(n, dtype=torch.float64),
                 torch.arange(n + 1), eye)


def _form_penalty(kind: str):
    import torch

    return _fn()(_ones(kind).to(torch.float64), _cells(kind), 1.0, 1.0, "periodic")


def _window_margin(kth, rows=None):
    import torch

    return torch.zeros_like(kth)


def _reduce_with(L):
    from soft_niggli.baselines import reduce_with, shutdown_workers

    try:
        return reduce_with("spglib", L)
    finally:
        shutdown_workers()


# name -> (call on the probe kind, note). The lattice argument gets the probe's shape; other arguments
# are made to match it (coordinates, matrices, a batch of the same number of crystals).
PROBES = {
    "soft_niggli.lattice.gram": (lambda k: _fn()(_cells(k)), ""),
    "soft_niggli.lattice.volume": (lambda k: _fn()(_cells(k)), ""),
    "soft_niggli.lattice.g6": (lambda k: _fn()(_cells(k)), ""),
    "soft_niggli.lattice.lattice_parameters": (lambda k: _fn()(_cells(k)), ""),
    "soft_niggli.lattice.to_cartesian": (lambda k: _fn()(_frac(k), _cells(k)), "coordinates `(..., N, 3)`"),
    "soft_niggli.lattice.to_fractional": (lambda k: _fn()(_frac(k), _cells(k)), "coordinates `(..., N, 3)`"),
    "soft_niggli.lattice.apply_basis_change": (lambda k: _fn()(_cells(k), _frac(k), _matrices(k)),
                                               "with coordinates `(..., N, 3)` and matrices `(..., 3, 3)`"),
    "soft_niggli.lattice.integer_inverse": (lambda k: _fn()(_matrices(k)), "integer matrices"),
    "soft_niggli.unimodular.is_unimodular": (lambda k: _fn()(_matrices(k)), "integer matrices"),
    "soft_niggli.niggli.niggli_reduce": (lambda k: _fn()(_cells(k)), ""),
    "soft_niggli.niggli.is_niggli_reduced": (lambda k: _fn()(_cells(k)), ""),
    "soft_niggli.canonical.reduced_forms": (lambda k: _fn()(_cells(k)), ""),
    "soft_niggli.canonical.reduce_or_identity": (lambda k: _fn()(_cells(k), _ones(k)),
                                                 "with a boolean mask of the leading shape"),
    "soft_niggli.canonical.automorphic_forms": (lambda k: _automorphic(k), "with `reduced_forms` of the same cells"),
    "soft_niggli.unimodular.lattice_automorphisms": (lambda k: _fn()(_cells(k)), ""),
    "soft_niggli.flow.align_rotation": (lambda k: _fn()(_cells(k), _cells(k)), "prior and target"),
    "soft_niggli.flow.couple_reduced_forms": (lambda k: _fn()(_cells(k), _labels(_count(k))),
                                              "prior lattices for a CrystalBatch of as many labels"),
    "soft_niggli.forms_cache.ReducedFormsCache": (lambda k: _fn()(2**20)(_cells(k)), "calling a cache"),
    "soft_niggli.crystal.CrystalBatch": (lambda k: _fn()(_cells(k), _batch_frac(k), [2] * _count(k)),
                                         "the constructor, coordinates flat `(N, 3)` of the same kind"),
    "soft_niggli.metrics.spglib_niggli_g6": (lambda k: _fn()(_cells(k)), ""),
    "soft_niggli.metrics.lattice_error": (lambda k: _fn()(_cells(k), _cells(k)), "pred and target"),
    "soft_niggli.metrics.volume_error": (lambda k: _fn()(_cells(k), _cells(k)), "pred and target"),
    "soft_niggli.losses.terms.lattice_term": (lambda k: _fn()(_cells(k), _cells(k)), "pred and target"),
    "soft_niggli.losses.terms.coordinate_term": (
        lambda k: _fn()("periodic", _flat_frac(k)[0], _flat_frac(k)[0], _flat_frac(k)[1], _cells(k)),
        "per-atom coordinates flat `(N, 3)`"),
    "soft_niggli.losses.terms.closest_automorphism": (
        lambda k: _fn()(_cells(k), _flat_frac(k)[0], _labels(_count(k)), None, None, lattice_metric="cartesian",
                        coords="periodic", lattice_weight=1.0, coord_weight=1.0, blur=0.1, rel_tol=1e-5),
        "prediction for a CrystalBatch of as many labels"),
    "soft_niggli.losses.candidates.candidate_lattice_terms": (lambda k: _fn()(_cells(k), _cells(k)), "pred and reference"),
    "soft_niggli.losses.windows.window_candidates": (lambda k: _fn()(_cells(k), _cells(k), 8, _window_margin),
                                                        "pred and reference"),
    "soft_niggli.losses.windows.grouped_window_candidates": (lambda k: _grouped_window(k),
                                                                "pred and reference rows, one group per cell"),
    "soft_niggli.losses.terms.form_penalty": (lambda k: _form_penalty(k), "with one weight per form"),
    "soft_niggli.losses.candidates.lattice_distances": (lambda k: _fn()(_cells(k), _cells(k)), "pred and reference"),
    "soft_niggli.losses.candidates.lattice_distances_naive": (lambda k: _fn()(_cells(k), _cells(k)),
                                                              "pred and reference"),
    "soft_niggli.losses.candidates.metric_distances": (lambda k: _fn()(_cells(k), _cells(k)),
                                                       "metrics `G = L Lᵀ`, pred and reference"),
    "soft_niggli.losses.candidates.metric_distances_naive": (lambda k: _fn()(_cells(k), _cells(k)),
                                                             "metrics `G = L Lᵀ`, pred and reference"),
    "soft_niggli.losses.invariants.volume_term": (lambda k: _fn()(_cells(k), _cells(k)), "pred and target"),
    "soft_niggli.losses.invariants.theta_series": (lambda k: _fn()(_cells(k)), ""),
    "soft_niggli.losses.invariants.theta_term": (lambda k: _fn()(_cells(k), _cells(k)), "pred and target"),
    "soft_niggli.losses.sinkhorn.sinkhorn_coordinate_loss": (
        lambda k: _fn()(_frac(k), _frac(k), _ones(k, atoms=2), _cells(k)), "padded coordinates `(..., N, 3)`"),
    "soft_niggli.losses.sinkhorn.sinkhorn_coordinate_loss_flat": (
        lambda k: _fn()(_flat_frac(k)[0], _flat_frac(k)[0], _flat_frac(k)[1], _cells(k)),
        "per-atom coordinates flat `(N, 3)`"),
    "soft_niggli.baselines.reduce_with": (lambda k: _reduce_with(_cells(k)), "`reduce_with(\"spglib\", ...)`"),
    "soft_niggli.baselines.spglib_proxy.spglib_reduce_with_transform": (lambda k: _fn()(_cells(k)), ""),
}

_current: list = []


def _fn():
    return _current[0]


def _ones(kind: str, atoms: int | None = None):
    import torch

    lead = {"one": (), "batch": (5,), "stack": (2, 4), "numpy": (5,), "list": (5,)}[kind]
    return torch.ones(lead + ((atoms,) if atoms else ()), dtype=torch.bool)


def _automorphic(kind: str):
    from soft_niggli.canonical import reduced_forms

    L = _cells(kind)
    return _fn()(L, reduced_forms(L))


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _first_tensor_shape(result) -> str:
    import dataclasses

    import torch

    if isinstance(result, torch.Tensor):
        return str(tuple(result.shape))
    if isinstance(result, (tuple, list)) and result and hasattr(result[0], "shape"):  # tensors, NumPy arrays
        return str(tuple(result[0].shape))
    if dataclasses.is_dataclass(result):
        for f in dataclasses.fields(result):
            value = getattr(result, f.name)
            if isinstance(value, torch.Tensor):
                return f"`{f.name}` {tuple(value.shape)}"
    return type(result).__name__


def _message(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = text if len(text) <= 110 else text[:107] + "..."
    return f"{type(error).__name__}: {text}".replace("|", "\\|").replace("`", "'")


def probe_table() -> str:
    """The Markdown table (and a list of unprobed functions, logged as warnings)."""
    missing = []
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            log.warning("shapes: cannot import %s (%s)", module_name, error)
            continue
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if not inspect.isfunction(obj):  # classes: result types and losses, probed by hand where useful
                continue
            try:
                params = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                continue
            if any(_LATTICE_PARAM.match(p) for p in params) and not any(
                    _resolve(path) is obj for path in PROBES if _importable(path)):
                missing.append(f"{module_name}.{name}")
    for path in missing:
        log.warning("shapes: %s takes lattices but has no probe in docs/hooks/shapes.py", path)

    rows = ["| function | accepts | " + " | ".join(HEADERS) + " | `(2, 4, 3, 3)` gives | refused with | arguments |",
            "|---|---|" + "---|" * len(HEADERS) + "---|---|---|"]
    for path, (call, note) in PROBES.items():
        try:
            fn = _resolve(path)
        except (ImportError, AttributeError):
            log.warning("shapes: %s no longer exists; update PROBES in docs/hooks/shapes.py", path)
            continue
        _current[:] = [fn]
        marks, first_error, stack_result = [], "", ""
        for kind in SHAPES:
            try:
                result = call(kind)
            except Exception as error:  # noqa: BLE001 - a refusal is what the table reports
                marks.append("✗")
                first_error = first_error or _message(error)
            else:
                marks.append("✓")
                if kind == "stack":
                    stack_result = _first_tensor_shape(result)
        module, _, name = path.rpartition(".")
        contract = CONTRACTS.get(path, STACKS)
        if contract == STACKS and "✗" in marks:
            log.warning("shapes: %s is documented for (..., 3, 3) but refused a probe (%s); fix it or "
                        "state its contract in CONTRACTS in docs/hooks/shapes.py", path, first_error)
        rows.append(f"| [`{name}`][{path}] | {contract} | " + " | ".join(marks) +
                    f" | {stack_result or '—'} | {first_error or '—'} | {note} |")
    return "\n".join(rows)


def _importable(path: str) -> bool:
    try:
        _resolve(path)
    except (ImportError, AttributeError):
        return False
    return True


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != PAGE or MARKER not in markdown:
        return markdown
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return markdown.replace(MARKER, probe_table())
