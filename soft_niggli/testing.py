"""Testing helpers shipped for users: hypothesis strategies and ``assert_gl3z_invariant``.

Row convention: every lattice drawn here is a float64 ``(3, 3)`` tensor whose rows are the lattice
vectors; unimodular matrices act as ``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.

Use them to test your own models and losses the way soft_niggli tests its own::

    from hypothesis import given
    from soft_niggli.testing import crystals, assert_gl3z_invariant

    @given(crystals(max_atoms=6))
    def test_my_energy_is_basis_invariant(batch):
        assert_gl3z_invariant(my_energy, batch)

``hypothesis`` is needed for the strategies (``pip install soft-niggli[test]``);
``assert_gl3z_invariant`` works without it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .crystal import CrystalBatch
from .lattice import lattice_from_parameters
from .unimodular import enumerate_unimodular, random_unimodular

__all__ = [
    "LATTICE_KINDS",
    "unimodular_matrices",
    "lattices",
    "rotations",
    "crystals",
    "assert_gl3z_invariant",
]

LATTICE_KINDS = ("realistic", "pathological", "any_float")


def _st():
    try:
        from hypothesis import strategies
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("soft_niggli.testing strategies need hypothesis: pip install 'soft-niggli[test]'") from err
    return strategies


def unimodular_matrices(bound: int = 1, proper: bool = False, depth: int = 1):
    """Strategy for int64 ``(3, 3)`` unimodular matrices.

    With ``depth=1`` it draws from all matrices with entries in ``[-bound, bound]`` (``bound`` 1 or 2);
    ``depth > 1`` multiplies that many such draws (larger entries). Shrinks towards the identity.
    """
    st = _st()
    if bound not in (1, 2):
        raise ValueError(f"bound: expected 1 or 2, got {bound!r}")
    if depth < 1:
        raise ValueError(f"depth: expected an int >= 1, got {depth!r}")
    U = enumerate_unimodular(bound, proper=proper)
    one = st.integers(0, len(U) - 1).map(lambda i: U[i].clone())
    if depth == 1:
        return one

    def product(ms):
        out = torch.eye(3, dtype=torch.int64)
        for M in ms:
            out = M @ out
        return out

    return st.lists(one, min_size=depth, max_size=depth).map(product)


def rotations(proper: bool = False):
    """Strategy for float64 orthogonal ``(3, 3)`` matrices (uniform-ish, from unit quaternions).

    With ``proper=False`` reflections (det −1) are drawn too.
    """
    st = _st()
    component = st.floats(-1.0, 1.0, allow_nan=False)
    quaternion = st.tuples(component, component, component, component).filter(
        lambda q: sum(x * x for x in q) > 1e-3)
    reflect = st.just(False) if proper else st.booleans()

    def build(args):
        (w, x, y, z), flip = args
        n = math.sqrt(w * w + x * x + y * y + z * z)
        w, x, y, z = w / n, x / n, y / n, z / n
        R = torch.tensor([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ], dtype=torch.float64)
        return -R if flip else R

    return st.tuples(quaternion, reflect).map(build)


def _realistic():
    st = _st()
    length = st.floats(2.0, 30.0)
    angle = st.floats(30.0, 150.0)

    def build(p):
        a, b, c, al, be, ga = p
        return lattice_from_parameters(a, b, c, al, be, ga).to(torch.float64)

    def plausible(L):
        # A real cell is not flat: its volume is a fair share of a*b*c.
        if not bool(torch.isfinite(L).all()):
            return False
        return abs(float(torch.linalg.det(L))) > 0.2 * float(torch.linalg.vector_norm(L, dim=1).prod())

    cell = st.tuples(length, length, length, angle, angle, angle).map(build).filter(plausible)
    return st.tuples(cell, rotations(), unimodular_matrices(1)).map(
        lambda t: t[2].to(torch.float64) @ t[0] @ t[1].T)


def _pathological():
    st = _st()
    base = _realistic()
    unit = st.tuples(*[st.floats(-1.0, 1.0, allow_nan=False)] * 3).filter(lambda v: sum(x * x for x in v) > 1e-2)

    def squeeze(args):
        L, v, exponent = args
        n = torch.tensor(v, dtype=torch.float64)
        n = n / n.norm()
        P = torch.eye(3, dtype=torch.float64) - (1 - 10.0**exponent) * torch.outer(n, n)
        return L @ P

    near_singular = st.tuples(base, unit, st.floats(-12.0, -3.0)).map(squeeze)
    skewed = st.tuples(base, st.integers(0, 2**31 - 1), st.integers(10, 40)).map(
        lambda t: random_unimodular((), max_entry=10**5, num_operations=t[2],
                                    generator=torch.Generator().manual_seed(t[1])).to(torch.float64) @ t[0])
    mixed_scale = st.tuples(base, st.tuples(*[st.floats(-6.0, 6.0)] * 3)).map(
        lambda t: t[0] * (10.0 ** torch.tensor(t[1], dtype=torch.float64))[:, None])
    needle = st.tuples(base, st.floats(2.0, 8.0)).map(
        lambda t: t[0] * torch.tensor([10.0 ** t[1], 1.0, 1.0], dtype=torch.float64)[:, None])
    plate = st.tuples(base, st.floats(-8.0, -2.0)).map(
        lambda t: t[0] * torch.tensor([10.0 ** t[1], 1.0, 1.0], dtype=torch.float64)[:, None])
    overall = st.tuples(base, st.floats(-100.0, 100.0)).map(lambda t: t[0] * 10.0 ** t[1])
    rank2 = st.tuples(base, st.integers(-3, 3), st.integers(-3, 3)).map(
        lambda t: torch.stack([t[0][0], t[0][1], t[1] * t[0][0] + t[2] * t[0][1]]))
    return st.one_of(near_singular, skewed, mixed_scale, needle, plate, overall, rank2)


def _any_float():
    st = _st()
    special = st.sampled_from([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 5e-324,
                               1e-300, 1.0, -1.0])
    value = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), special)
    return st.lists(value, min_size=9, max_size=9).map(lambda v: torch.tensor(v, dtype=torch.float64).reshape(3, 3))


def lattices(kind: str = "realistic"):
    """Strategy for float64 ``(3, 3)`` lattices (rows are lattice vectors).

    Kinds:
        ``"realistic"``: cells like real crystals (lengths 2–30 Å, angles 30–150°, not flat), randomly
        rotated and re-based by a unimodular matrix with entries in {-1, 0, 1}.
        ``"pathological"``: what an untrained model emits: near-singular (one direction squeezed by
        1e-3 to 1e-12), highly skewed (unimodular transforms with entries up to 1e5), mixed scales
        (rows scaled by 1e-6 to 1e6), needles, plates, overall scales from 1e-100 to 1e100, and
        exactly rank-2 cells.
        ``"any_float"``: nine arbitrary float64 values, NaN, inf, zeros, huge and subnormal included.
    """
    builders = {"realistic": _realistic, "pathological": _pathological, "any_float": _any_float}
    if kind not in builders:
        raise ValueError(f"kind: expected one of {LATTICE_KINDS}, got {kind!r}")
    return builders[kind]()


def crystals(max_atoms: int = 8, max_crystals: int = 3, lattice_kind: str = "realistic"):
    """Strategy for a :class:`CrystalBatch` of 1 to ``max_crystals`` crystals with 1 to ``max_atoms`` atoms.

    Coordinates are uniform in [0, 1), species are atomic numbers 1–94, all float64.
    """
    st = _st()
    if max_atoms < 1 or max_crystals < 1:
        raise ValueError(f"max_atoms and max_crystals: expected >= 1, got {max_atoms!r}, {max_crystals!r}")
    coord = st.floats(0.0, 1.0, exclude_max=True)
    atom = st.tuples(st.tuples(coord, coord, coord), st.integers(1, 94))
    crystal = st.tuples(lattices(lattice_kind), st.lists(atom, min_size=1, max_size=max_atoms))

    def build(items):
        lattice = torch.stack([L for L, _ in items])
        frac = torch.tensor([xyz for _, atoms in items for xyz, _ in atoms], dtype=torch.float64)
        species = torch.tensor([z for _, atoms in items for _, z in atoms], dtype=torch.int64)
        num_atoms = torch.tensor([len(atoms) for _, atoms in items], dtype=torch.int64)
        return CrystalBatch(lattice, frac, num_atoms, species)

    return st.lists(crystal, min_size=1, max_size=max_crystals).map(build)


def _flatten(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (int, float)):
        return [torch.tensor(float(value))]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _flatten(value[k])]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten(v)]
    if hasattr(value, "__dict__"):
        return [t for k in sorted(vars(value)) for t in _flatten(vars(value)[k])]
    raise TypeError(f"assert_gl3z_invariant: cannot compare outputs of type {type(value).__name__}")


_DEFAULT_TOLERANCES = {torch.float64: (1e-9, 1e-7), torch.float32: (1e-4, 1e-3)}


def assert_gl3z_invariant(fn: Callable[[CrystalBatch], object], batch: CrystalBatch, *, trials: int = 3,
                          max_entry: int = 2, atol: float | None = None, rtol: float | None = None,
                          seed: int = 0) -> None:
    """Assert that ``fn(batch)`` does not change when every crystal is re-expressed in another basis.

    Draws ``trials`` sets of random unimodular matrices (one per crystal, entries bounded by
    ``max_entry``), applies them with :meth:`CrystalBatch.apply_basis_change` and compares
    ``fn``'s outputs (tensors, numbers, or tuples/dicts/objects of them) with ``torch.allclose``.
    Tolerances default by the batch's dtype (float64: atol 1e-9, rtol 1e-7; float32: 1e-4, 1e-3).

    Raises:
        AssertionError: naming the trial, the output and the largest deviation, when not invariant.
    """
    default_atol, default_rtol = _DEFAULT_TOLERANCES.get(batch.dtype, (1e-4, 1e-3))
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    reference = _flatten(fn(batch))
    generator = torch.Generator().manual_seed(seed)
    for trial in range(trials):
        M = random_unimodular((batch.num_crystals,), max_entry=max_entry, generator=generator)
        moved = _flatten(fn(batch.apply_basis_change(M.to(batch.device))))
        if len(moved) != len(reference):
            raise AssertionError(f"trial {trial}: fn returned {len(moved)} tensors, expected {len(reference)}")
        for k, (ref, out) in enumerate(zip(reference, moved)):
            ref_c, out_c = ref.detach().to(torch.float64).cpu(), out.detach().to(torch.float64).cpu()
            if ref_c.shape != out_c.shape or not torch.allclose(out_c, ref_c, atol=atol, rtol=rtol, equal_nan=True):
                deviation = (out_c - ref_c).abs().max().item() if ref_c.shape == out_c.shape else float("nan")
                raise AssertionError(
                    f"not GL(3,Z)-invariant: trial {trial}, output {k}: largest deviation {deviation:.3e} "
                    f"(atol={atol}, rtol={rtol}) under basis changes {M.tolist()}")
