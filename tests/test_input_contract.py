"""One input contract for lattices: ``(..., 3, 3)`` array-likes in, results of the input's leading shape out.

Row convention: lattices ``(..., 3, 3)`` have the lattice vectors as rows.

Every public function of a lattice (or a stack of them) takes one cell ``(3, 3)``, a batch ``(B, 3, 3)``
or a stack ``(B1, B2, ..., 3, 3)``, as a torch tensor, a NumPy array or a nested list, and its per-cell
results have the input's leading shape, with the values of the flat ``(B, 3, 3)`` call. Ragged results
(the reduced forms, the automorphisms) list their items over the flattened cells. The batch of crystals
(:class:`~soft_niggli.crystal.CrystalBatch`) and the coupling of a prior to it are flat by nature: they
take ``(B, 3, 3)`` or one cell ``(3, 3)`` and refuse a stack with a ``ValueError`` that names the shape
expected and the shape given.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from soft_niggli import CrystalBatch  # noqa: E402
from soft_niggli.canonical import automorphic_forms, reduce_or_identity, reduced_forms  # noqa: E402
from soft_niggli.flow import align_rotation, couple_reduced_forms  # noqa: E402
from soft_niggli.forms_cache import ReducedFormsCache  # noqa: E402
from soft_niggli.lattice import g6, gram, lattice_parameters, volume  # noqa: E402
from soft_niggli.losses.candidates import (candidate_lattice_terms, lattice_distances,  # noqa: E402
                                           lattice_distances_naive, metric_distances, metric_distances_naive)
from soft_niggli.losses.invariants import theta_series, theta_term, volume_term  # noqa: E402
from soft_niggli.losses.terms import form_penalty, lattice_term  # noqa: E402
from soft_niggli.losses.windows import window_candidates  # noqa: E402
from soft_niggli.niggli import is_niggli_reduced, niggli_reduce  # noqa: E402
from soft_niggli.testing import lattices, symmetric_lattices  # noqa: E402
from soft_niggli.unimodular import lattice_automorphisms  # noqa: E402

spglib = pytest.importorskip("spglib")
from soft_niggli.baselines.spglib_proxy import spglib_reduce_with_transform  # noqa: E402
from soft_niggli.metrics import lattice_error, spglib_niggli_g6, volume_error  # noqa: E402

STACK = (2, 4)


def _cells(lead: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Float64 cells ``(*lead, 3, 3)``: skewed generic cells, with a cube and a hexagonal cell among them
    (48 and 24 reduced forms), so that ragged results have items of different counts."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([[4.0, 0.0, 0.0], [1.0, 5.0, 0.0], [0.5, 1.0, 6.0]], dtype=torch.float64)
    L = (base + 0.3 * torch.randn(*lead, 3, 3, generator=g, dtype=torch.float64)).reshape(-1, 3, 3)
    if len(L) > 1:
        L[1] = 4.0 * torch.eye(3, dtype=torch.float64)
    if len(L) > 2:
        L[2] = torch.tensor([[3.0, 0.0, 0.0], [-1.5, 1.5 * math.sqrt(3.0), 0.0], [0.0, 0.0, 5.0]], dtype=torch.float64)
    return L.reshape(*lead, 3, 3)


def _like(x, fn):
    """``fn`` applied to the lattices ``x`` (tensor, array or list), returned in the kind ``x`` came in."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    out = fn(t)
    if isinstance(x, np.ndarray):
        return out.numpy()
    if isinstance(x, list):
        return out.tolist()
    return out.to(x.dtype)


def _strained(t: torch.Tensor) -> torch.Tensor:
    """``t @ diag(1, 1.01, 1.02)``, as a product over the last axis (so any shape goes through to the
    function under test, which is the one to judge it)."""
    return t * (1 + 0.01 * torch.arange(t.shape[-1], dtype=t.dtype)) if t.dim() else t

#: Public functions of lattices with per-cell results: name -> (call on lattices, lists read in float64).
PER_CELL = {
    "gram": (gram, False),
    "volume": (volume, False),
    "g6": (g6, False),
    "lattice_parameters": (lattice_parameters, False),
    "niggli_reduce": (niggli_reduce, False),
    "is_niggli_reduced": (is_niggli_reduced, False),
    "reduce_or_identity": (lambda L: reduce_or_identity(L, torch.ones(np.shape(L)[:-2], dtype=torch.bool)), False),
    "align_rotation": (lambda L: align_rotation(L, _like(L, _strained)), False),
    "spglib_niggli_g6": (spglib_niggli_g6, True),
    "lattice_error": (lambda L: lattice_error(L, _like(L, _strained)), True),
    "volume_error": (lambda L: volume_error(L, _like(L, _strained)), True),
    "spglib_reduce_with_transform": (lambda L: tuple(map(torch.from_numpy, spglib_reduce_with_transform(L))), True),
    "lattice_term": (lambda L: lattice_term(L, _like(L, _strained)), False),
    "lattice_term(gram)": (lambda L: lattice_term(L, _like(L, _strained), "gram"), False),
    "volume_term": (lambda L: volume_term(L, _like(L, _strained)), False),
    "theta_series": (theta_series, False),
    "theta_term": (lambda L: theta_term(L, _like(L, _strained)), False),
    "form_penalty": (lambda L: form_penalty(torch.full(np.shape(L)[:-2], 0.5, dtype=torch.float64), L, 1.0, 1.0,
                                            "periodic"), False),
    "lattice_distances": (lambda L: lattice_distances(L, _like(L, _strained)), False),
    "lattice_distances_naive": (lambda L: lattice_distances_naive(L, _like(L, _strained)), False),
    "metric_distances": (lambda L: metric_distances(L, _like(L, _strained)), False),
    "metric_distances_naive": (lambda L: metric_distances_naive(L, _like(L, _strained)), False),
    "candidate_lattice_terms": (lambda L: candidate_lattice_terms(L, _like(L, _strained), metric="gram"), False),
}


@dataclasses.dataclass
class _Window:
    """:func:`window_candidates`'s ``(owner, X)`` with names, as the other ragged results have."""

    owner: torch.Tensor
    matrices: torch.Tensor


def _window(L):
    return _Window(*window_candidates(L, _like(L, _strained), 8, lambda kth, rows=None: 1e-3 * kth))

#: Public functions of lattices with ragged results (items listed over the flattened cells).
RAGGED = {
    "reduced_forms": reduced_forms,
    "ReducedFormsCache": lambda L: ReducedFormsCache(2**20)(L),
    "ReducedFormsCache(0)": lambda L: ReducedFormsCache(0)(L),
    "ReducedFormsCache.lookup": lambda L: ReducedFormsCache(2**20).lookup(L),
    "automorphic_forms": lambda L: automorphic_forms(L, reduced_forms(L)),
    "lattice_automorphisms": lattice_automorphisms,
    "window_candidates": _window,
}


def _leaves(result) -> list[tuple[str, torch.Tensor]]:
    """The tensors of a result: itself, the fields of a dataclass (nested), the items of a tuple."""
    if isinstance(result, torch.Tensor):
        return [("", result)]
    if dataclasses.is_dataclass(result):
        return [(f"{f.name}{name}", t) for f in dataclasses.fields(result) for name, t in _leaves(getattr(result, f.name))]
    if isinstance(result, (tuple, list)):
        return [(f"[{i}]{name}", t) for i, item in enumerate(result) for name, t in _leaves(item)]
    return []


def _assert_same(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert isinstance(got, torch.Tensor), what
    assert got.dtype == expected.dtype and got.shape == expected.shape, \
        f"{what}: {got.dtype} {tuple(got.shape)} vs {expected.dtype} {tuple(expected.shape)}"
    # Equal to rounding (batched and unbatched LAPACK calls may round differently; integers exactly).
    torch.testing.assert_close(got, expected, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _assert_per_cell(result, flat, lead: tuple[int, ...], index: int | None = None) -> None:
    """Every tensor of ``result`` is the flat call's, of leading shape ``lead`` (``index``: one cell of it)."""
    got, expected = _leaves(result), _leaves(flat)
    assert [n for n, _ in got] == [n for n, _ in expected] and expected
    for (name, r), (_, f) in zip(got, expected):
        f = f[index] if index is not None else f
        tail = f.shape[1:] if index is None else f.shape
        assert tuple(r.shape) == lead + tuple(tail), f"{name}: shape {tuple(r.shape)}, expected {lead + tuple(tail)}"
        _assert_same(r.reshape(f.shape), f, name)


def _ragged_parts(result):
    """``([(name, per-item tensor)], per-cell status or None)`` of a ragged result."""
    forms = getattr(result, "forms", result)
    items = [(name, t) for name, t in _leaves(result) if name not in ("status", "formsstatus")]
    return items, getattr(forms, "status", None)


def _flat_of(L, float64_lists: bool) -> torch.Tensor:
    """The ``(B, 3, 3)`` tensor the function sees for ``L``: lists in the default dtype unless read in float64."""
    if isinstance(L, list) and not float64_lists:
        return torch.as_tensor(L).reshape(-1, 3, 3)
    return torch.as_tensor(np.asarray(L)).reshape(-1, 3, 3)


# ------------------------------------------------------------------ per-cell results


@pytest.mark.parametrize("name", sorted(PER_CELL))
@pytest.mark.parametrize("kind", ["tensor", "numpy", "list"])
def test_a_stack_gives_the_flat_calls_values_in_its_leading_shape(name, kind):
    fn, float64_lists = PER_CELL[name]
    L = _cells(STACK)
    x = {"tensor": L, "numpy": L.numpy(), "list": L.tolist()}[kind]
    _assert_per_cell(fn(x), fn(_flat_of(x, float64_lists)), STACK)


@pytest.mark.parametrize("name", sorted(PER_CELL))
@pytest.mark.parametrize("kind", ["tensor", "numpy", "list"])
def test_one_cell_gives_the_flat_calls_values_without_a_leading_dimension(name, kind):
    fn, float64_lists = PER_CELL[name]
    L = _cells((8,))
    for k in (0, 1, 2, 7):
        x = {"tensor": L[k], "numpy": L[k].numpy(), "list": L[k].tolist()}[kind]
        flat = fn(_flat_of(L.tolist() if kind == "list" else L, float64_lists))
        _assert_per_cell(fn(x), flat, (), index=k)


_LEAD = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)
_CELL = st.one_of(lattices("realistic"), symmetric_lattices(noise=0.0))


@settings(max_examples=15)
@given(lead=_LEAD, data=st.data())
@pytest.mark.parametrize("name", sorted(PER_CELL))
def test_any_leading_shape_gives_the_flat_calls_values(name, lead, data):
    fn, _ = PER_CELL[name]
    n = math.prod(lead)
    L = torch.stack(data.draw(st.lists(_CELL, min_size=n, max_size=n))) if n else torch.zeros(0, 3, 3, dtype=torch.float64)
    stacked = L.reshape(*lead, 3, 3)
    result = fn(stacked)
    if lead == ():
        _assert_per_cell(result, fn(L.reshape(1, 3, 3)), (), index=0)
    else:
        _assert_per_cell(result, fn(L.reshape(n, 3, 3)), lead)


# ------------------------------------------------------------------ ragged results


@pytest.mark.parametrize("name", sorted(RAGGED))
@pytest.mark.parametrize("kind", ["tensor", "numpy", "list"])
def test_a_stack_lists_the_flat_calls_items_over_the_flattened_cells(name, kind):
    fn = RAGGED[name]
    L = _cells(STACK)
    x = {"tensor": L, "numpy": L.numpy(), "list": L.tolist()}[kind]
    result, flat = fn(x), fn(_flat_of(x, False))
    (items, status), (flat_items, flat_status) = _ragged_parts(result), _ragged_parts(flat)
    assert [n for n, _ in items] == [n for n, _ in flat_items] and items
    for (part, got), (_, expected) in zip(items, flat_items):
        _assert_same(got, expected, f"{name}: {part}")
    if status is not None:
        _assert_same(status, flat_status.reshape(STACK), f"{name}: status")


@pytest.mark.parametrize("name", sorted(RAGGED))
def test_one_cell_lists_its_own_items_with_owner_zero(name):
    fn = RAGGED[name]
    L = _cells((8,))
    flat = fn(L)
    flat_items, flat_status = _ragged_parts(flat)
    owner = getattr(getattr(flat, "forms", flat), "owner", None)
    if owner is None:  # automorphic_forms: the owners are those of the forms it was given
        owner = reduced_forms(L).owner
    for k in (0, 1, 2):
        items, status = _ragged_parts(fn(L[k]))
        for (part, got), (_, expected) in zip(items, flat_items):
            expected = expected[owner == k]
            if part.endswith("owner"):
                expected = torch.zeros_like(expected)  # one cell is cell 0
            elif part == "metric":  # groups of equal metrics, numbered from 0 in each call
                expected = expected - expected.min()
            _assert_same(got, expected, f"{name}: {part}")
        if status is not None:
            assert status.shape == () and int(status) == int(flat_status[k])


def test_reduced_forms_of_a_stack_know_their_batch_shape():
    L = _cells(STACK)
    forms, flat = reduced_forms(L), reduced_forms(L.reshape(8, 3, 3))
    assert forms.batch_shape == STACK and forms.num_lattices == 8 and flat.batch_shape == (8,)
    assert torch.equal(forms.counts(), flat.counts().reshape(STACK)) and forms.counts().shape == STACK
    assert torch.equal(forms.counts(8), flat.counts(8))  # over the flattened cells, as for a flat batch
    assert torch.equal(forms.distinct_metrics(), flat.distinct_metrics().reshape(STACK))
    assert torch.equal(forms.weights(), flat.weights())
    i, j = forms.owner_index()
    assert torch.equal(i * STACK[1] + j, forms.owner)
    # The forms of cell (i, j) are the stack's cell (i, j) re-based.
    for p in range(0, len(forms.owner), 7):
        torch.testing.assert_close(forms.lattice[p], forms.transform[p].double() @ L[i[p], j[p]])
    one = reduced_forms(L[0, 1])
    assert one.batch_shape == () and one.counts().shape == () and one.owner_index() == ()
    assert bool((one.owner == 0).all()) and int(one.counts()) == len(one.owner) == 48


# ------------------------------------------------------------------ flat batches of crystals


def _frac(n_atoms: int) -> torch.Tensor:
    return torch.rand(n_atoms, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _batch_equal(a: CrystalBatch, b: CrystalBatch) -> None:
    for name in ("lattice", "frac", "num_atoms", "batch"):
        _assert_same(getattr(a, name), getattr(b, name), name)


@pytest.mark.parametrize("kind", ["tensor", "numpy", "list"])
def test_crystal_batch_takes_array_likes_and_one_cell_as_a_batch_of_one(kind):
    L = _cells((3,))
    convert = {"tensor": lambda t: t, "numpy": lambda t: t.numpy(), "list": lambda t: t.tolist()}[kind]
    frac = _frac(5)
    frac_in = frac.float() if kind == "list" else frac  # a list becomes the default dtype, and so must frac
    reference = CrystalBatch(_flat_of(convert(L), False), frac_in, [2, 0, 3])
    _batch_equal(CrystalBatch(convert(L), frac_in, [2, 0, 3]), reference)
    atoms = frac_in[2:5]  # crystal 2's
    one = CrystalBatch(convert(L[2]), atoms, 3)
    _batch_equal(one, reference[2])
    _batch_equal(CrystalBatch(convert(L[2]), atoms, [3]), one)
    _batch_equal(CrystalBatch.from_flat(convert(L[2]), atoms, [0, 0, 0]), one)
    mask = torch.tensor([True, False, True, True])
    padded = torch.cat([atoms[:1], torch.zeros(1, 3, dtype=atoms.dtype), atoms[1:]])
    _batch_equal(CrystalBatch.from_padded(convert(L[2]), padded, mask), one)


@pytest.mark.parametrize("make", ["init", "from_flat", "from_padded"])
@pytest.mark.parametrize("kind", ["tensor", "numpy", "list"])
def test_crystal_batch_refuses_a_stack_naming_the_shapes(make, kind):
    L = _cells(STACK)
    x = {"tensor": L, "numpy": L.numpy(), "list": L.tolist()}[kind]
    call = {"init": lambda: CrystalBatch(x, _frac(8), [1] * 8),
            "from_flat": lambda: CrystalBatch.from_flat(x, _frac(8), torch.arange(8)),
            "from_padded": lambda: CrystalBatch.from_padded(x, _frac(8).reshape(2, 4, 3), torch.ones(2, 4, dtype=torch.bool))}
    with pytest.raises(ValueError, match=r"lattice: expected shape \(B, 3, 3\) or \(3, 3\) \(one crystal\), "
                                         r"got \(2, 4, 3, 3\); .*reshape it to \(-1, 3, 3\) = \(8, 3, 3\)"):
        call[make]()
    with pytest.raises(ValueError, match=r"lattice: expected shape \(B, 3, 3\) or \(3, 3\) \(one crystal\), got \(3, 4\)$"):
        CrystalBatch(torch.zeros(3, 4), _frac(1), 1)


def _labels(n: int) -> CrystalBatch:
    from soft_niggli.canonical import canonicalize_labels

    L = _cells((n,), seed=2)
    return canonicalize_labels(CrystalBatch(L, _frac(2 * n), [2] * n)).batch


def _coupled_equal(a, b) -> None:
    _batch_equal(a.batch, b.batch)
    for name in ("transform", "distance", "status", "choices"):
        _assert_same(getattr(a, name), getattr(b, name), name)


@pytest.mark.parametrize("kind", ["tensor", "numpy", "list"])
def test_couple_reduced_forms_takes_array_likes_and_one_cell_for_one_label(kind):
    labels = _labels(8)
    prior = _cells((8,), seed=3)
    convert = {"tensor": lambda t: t, "numpy": lambda t: t.numpy(), "list": lambda t: t.tolist()}[kind]
    reference = couple_reduced_forms(_flat_of(convert(prior), False), labels, ties="coordinates",
                                     cache=ReducedFormsCache(0))
    _coupled_equal(couple_reduced_forms(convert(prior), labels, ties="coordinates", cache=ReducedFormsCache(0)),
                   reference)
    for k in (1, 2, 5):
        one = couple_reduced_forms(convert(prior[k]), labels[k], ties="coordinates", cache=ReducedFormsCache(0))
        _coupled_equal(one, couple_reduced_forms(_flat_of(convert(prior), False)[k:k + 1], labels[k],
                                                 ties="coordinates", cache=ReducedFormsCache(0)))
        assert one.transform.shape == (1, 3, 3) and one.distance.shape == (1,)


@pytest.mark.parametrize("kind", ["tensor", "numpy", "list"])
def test_couple_reduced_forms_refuses_a_stack_naming_the_shapes(kind):
    labels = _labels(8)
    prior = _cells(STACK, seed=3)
    x = {"tensor": prior, "numpy": prior.numpy(), "list": prior.tolist()}[kind]
    with pytest.raises(ValueError, match=r"prior_lattice: expected shape \(B, 3, 3\) = \(8, 3, 3\), "
                                         r"got \(2, 4, 3, 3\); .*reshape it to \(-1, 3, 3\) = \(8, 3, 3\)"):
        couple_reduced_forms(x, labels)
    with pytest.raises(ValueError, match=r"prior_lattice: expected shape \(B, 3, 3\) = \(8, 3, 3\), got \(3, 3\)$"):
        couple_reduced_forms(prior[0, 0], labels)
    with pytest.raises(ValueError, match=r"prior_lattice: expected shape \(B, 3, 3\) = \(1, 3, 3\) or \(3, 3\), "
                                         r"got \(2, 3, 3\)$"):
        couple_reduced_forms(prior[0, :2], labels[0])


# ------------------------------------------------------------------ what is not a lattice


@pytest.mark.parametrize("name", sorted(PER_CELL) + sorted(RAGGED))
@pytest.mark.parametrize("shape", [(3, 4), (2, 3), (3,), (5, 3, 2)])
def test_what_is_not_3_by_3_is_refused_naming_the_shape(name, shape):
    fn = PER_CELL[name][0] if name in PER_CELL else RAGGED[name]
    if name == "reduce_or_identity":
        fn = lambda L: reduce_or_identity(L, torch.ones(L.shape[:-2], dtype=torch.bool))  # noqa: E731
    with pytest.raises(ValueError, match=r"expected .*\(\.\.\., 3, 3\).*got " + re.escape(str(shape))):
        fn(torch.ones(shape, dtype=torch.float64))

