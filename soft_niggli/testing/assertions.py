"""``assert_gl3z_invariant``: check that a function of crystals ignores the choice of unit cell.

Row convention: lattices are ``(..., 3, 3)`` with rows as lattice vectors; a basis change by a
unimodular ``M`` maps a crystal to ``L' = M @ L``, ``F' = wrap(F @ M^{-1})`` (see
:meth:`soft_niggli.CrystalBatch.apply_basis_change`). Works without hypothesis.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import torch

from .._checks import check_int, check_real
from ..crystal import CrystalBatch
from ..unimodular import random_unimodular

__all__ = ["assert_gl3z_invariant"]


def _leaves(value, path: str = "output") -> list[tuple[str, object]]:
    """``(path, leaf)`` pairs of an output: tensors (numbers become float64 or int64 tensors) and, compared
    by equality, strings, ``None`` and enum members; tuples, lists, dicts and objects are walked."""
    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if value is None or isinstance(value, (str, enum.Enum)):
        return [(path, value)]
    if isinstance(value, bool):
        return [(path, torch.tensor(value))]
    if isinstance(value, int):
        return [(path, torch.tensor(value, dtype=torch.int64))]
    if isinstance(value, float):
        return [(path, torch.tensor(value, dtype=torch.float64))]
    if isinstance(value, dict):
        return [leaf for k in sorted(value, key=str) for leaf in _leaves(value[k], f"{path}[{k!r}]")]
    if isinstance(value, (tuple, list)):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{path}[{i}]")]
    if hasattr(value, "__dict__"):
        return [leaf for k in sorted(vars(value)) for leaf in _leaves(vars(value)[k], f"{path}.{k}")]
    raise TypeError(f"assert_gl3z_invariant: cannot compare outputs of type {type(value).__name__} (at {path})")


_DEFAULT_TOLERANCES = {torch.float64: (1e-9, 1e-7), torch.float32: (1e-4, 1e-3)}


def _plainly_close(out: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> bool:
    """Whether :func:`torch.testing.assert_close` would pass, by the same test (``torch.isclose`` with
    ``equal_nan``, equal shape, dtype, device and layout), for dense tensors with values. Its first call
    imports ``torch.distributed.tensor`` and sympy (about 1 s on a busy machine, enough to exceed
    hypothesis's 200 ms deadline): it is called only to report a difference, or for what this test
    does not cover."""
    if (type(out) is not torch.Tensor or type(ref) is not torch.Tensor or out.layout != torch.strided
            or ref.layout != torch.strided or out.device.type == "meta" or out.shape != ref.shape
            or out.dtype != ref.dtype or out.device != ref.device or out.is_quantized):
        return False
    return bool(torch.isclose(out, ref, atol=atol, rtol=rtol, equal_nan=True).all())


def _broken_crystals(ref: torch.Tensor, out: torch.Tensor, B: int, atol: float, rtol: float) -> list[int]:
    """Crystals whose entries differ, for outputs with one row per crystal (leading dimension ``B``)."""
    if ref.shape != out.shape or ref.dim() == 0 or ref.shape[0] != B or ref.device.type == "meta":
        return []
    if ref.is_floating_point() or ref.is_complex():
        same = torch.isclose(out, ref, atol=atol, rtol=rtol, equal_nan=True)
    else:
        same = out == ref
    return (~same.reshape(B, -1).all(dim=1)).nonzero().flatten().tolist()


def assert_gl3z_invariant(fn: Callable[[CrystalBatch], object], batch: CrystalBatch, *, trials: int = 3,
                          max_entry: int = 2, atol: float | None = None, rtol: float | None = None,
                          seed: int = 0) -> None:
    """Assert that ``fn(batch)`` does not change when every crystal is re-expressed in another basis.

    Draws ``trials`` sets of random unimodular matrices (one per crystal, entries bounded by
    ``max_entry``), applies them with :meth:`CrystalBatch.apply_basis_change` and compares ``fn``'s
    outputs (tensors, numbers, or tuples/lists/dicts/objects of them; strings and ``None`` by equality)
    with :func:`torch.testing.assert_close` (``equal_nan=True``; dtype and device must agree too).
    Tolerances default by the batch's dtype (float64: atol 1e-9, rtol 1e-7; float32 and others: 1e-4,
    1e-3). On the meta device only shapes, dtypes and devices are compared (there are no values).

    Raises:
        AssertionError: naming the trial, the output, the crystals that broke it and their basis changes,
            with :func:`torch.testing.assert_close`'s report (largest differences and where).
        TypeError: ``fn`` not callable, ``batch`` not a :class:`CrystalBatch`, or a wrongly typed option.
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable taking a CrystalBatch, got {type(fn).__name__}")
    if not isinstance(batch, CrystalBatch):
        raise TypeError(f"batch: expected a CrystalBatch, got {type(batch).__name__}")
    trials = check_int(trials, "trials", minimum=1)
    max_entry = check_int(max_entry, "max_entry", minimum=1)
    seed = check_int(seed, "seed")
    default_atol, default_rtol = _DEFAULT_TOLERANCES.get(batch.dtype, (1e-4, 1e-3))
    atol = default_atol if atol is None else check_real(atol, "atol", "a float >= 0 or None")
    rtol = default_rtol if rtol is None else check_real(rtol, "rtol", "a float >= 0 or None")
    reference = _leaves(fn(batch))
    generator = torch.Generator().manual_seed(seed)
    B = batch.num_crystals
    for trial in range(trials):
        M = random_unimodular((B,), max_entry=max_entry, generator=generator)
        moved = _leaves(fn(batch.apply_basis_change(M.to(batch.device))))
        if [p for p, _ in moved] != [p for p, _ in reference]:
            raise AssertionError(f"trial {trial}: fn returned outputs {[p for p, _ in moved]}, "
                                 f"expected {[p for p, _ in reference]}")
        for (path, ref), (_, out) in zip(reference, moved):
            if not isinstance(ref, torch.Tensor) or not isinstance(out, torch.Tensor):
                if not (type(ref) is type(out) and ref == out):
                    raise AssertionError(f"not GL(3,Z)-invariant: trial {trial}, {path}: {out!r} instead of "
                                         f"{ref!r} under basis changes {M.tolist()}")
                continue
            ref, out = ref.detach(), out.detach()
            broken = _broken_crystals(ref, out, B, atol, rtol)
            where = (f"crystals {broken} (basis changes {M[broken].tolist()})" if broken
                     else f"basis changes {M.tolist()}")

            def message(report: str, trial=trial, path=path, where=where) -> str:
                return f"not GL(3,Z)-invariant: trial {trial}, {path}, {where}:\n{report}"

            if not _plainly_close(out, ref, atol, rtol):
                torch.testing.assert_close(out, ref, atol=atol, rtol=rtol, equal_nan=True, msg=message)
