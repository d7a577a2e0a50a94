"""Argument checks shared by the modules.

One rule everywhere: a wrong Python *type* (a string or ``None`` where a tensor or a number is
expected, a bool where a number is expected, a float where an int is expected) raises ``TypeError``; a
wrong *value* (shape, dtype, range, unknown name) raises ``ValueError``. Messages name the argument,
what was expected and what came.

Tensors: every public function accepts torch tensors, NumPy arrays and (nested) Python lists of
numbers, and returns torch tensors. NumPy arrays keep their dtype (``torch.from_numpy``, so float64
stays float64); lists become tensors as ``torch.as_tensor`` makes them (floats in the default dtype).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch


def _kind(x) -> str:
    return "None" if x is None else type(x).__name__


def _conversion_error_kind(x) -> type:
    """Why torch could not convert ``x``: a ragged list is a shape (``ValueError``); strings, ``None`` or
    other objects inside are types (``TypeError``). (torch's own error types do not tell them apart.)"""
    try:
        kind = np.asarray(x).dtype.kind
    except ValueError:  # ragged
        return ValueError
    return TypeError if kind in "OUSV" else ValueError


def as_tensor(x, name: str) -> torch.Tensor:
    """``x`` as a torch tensor: tensors as they are, NumPy arrays by ``torch.from_numpy`` (copied where
    torch cannot share them: byte-swapped or negatively strided), lists, tuples and Python/NumPy numbers by
    ``torch.as_tensor``. Anything else (a string, ``None``, a dict, a list holding strings) raises
    ``TypeError``; a NumPy array of objects or strings, or a ragged list, ``ValueError``."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        # The array is the right type; its dtype is a value: ValueError for one torch has no counterpart of.
        too_wide = (x.dtype.kind == "f" and x.dtype.itemsize > 8) or (x.dtype.kind == "c" and x.dtype.itemsize > 16)
        if x.dtype.kind not in "biufc" or too_wide:
            raise ValueError(f"{name}: expected a numeric dtype that torch supports (a floating dtype: "
                             f"float16/float32/float64, or an integer dtype), got numpy {x.dtype}")
        if not x.dtype.isnative or any(stride < 0 for stride in x.strides):
            # torch.from_numpy takes neither byte-swapped data nor negative strides (x[::-1]): copy those.
            x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
        return torch.from_numpy(x)
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a tensor, a numpy array, a (nested) list of numbers or a number, got bool {x!r}")
    if isinstance(x, (list, tuple, numbers.Number, np.generic)) and not isinstance(x, (str, bytes)):
        try:
            return torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            kind = _conversion_error_kind(x)
            raise kind(f"{name}: expected a tensor, a numpy array or a (nested) list of numbers of a regular "
                       f"shape, got a {_kind(x)} that torch cannot convert ({err})") from err
    raise TypeError(f"{name}: expected a torch.Tensor, a numpy.ndarray or a (nested) list of numbers, got {_kind(x)}")


def as_float_tensor(x, name: str) -> torch.Tensor:
    """``x`` as a floating torch tensor (see :func:`as_tensor` for what is accepted).

    A tensor or NumPy array must already be floating (float16/32/64; ``ValueError`` otherwise); a list of
    Python integers is taken as numbers and converted to the default floating dtype.
    """
    from_sequence = isinstance(x, (list, tuple, int))  # Python literals: integers are numbers here
    t = as_tensor(x, name)
    if not t.is_floating_point():
        if from_sequence and t.dtype != torch.bool and not t.is_complex():
            return t.to(torch.get_default_dtype())
        where = "numpy " if isinstance(x, np.ndarray) else ""
        raise ValueError(f"{name}: expected a floating dtype (float16/float32/float64), got {where}{x.dtype if where else t.dtype}")
    return t


def as_index_tensor(x, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """Integer tensor as int64 on ``device`` (see :func:`as_tensor` for what is accepted).

    An empty input is accepted whatever its dtype: ``[]``, ``np.array([])`` and ``torch.tensor([])``
    come out floating by default, yet hold no value that could fail to be an integer.
    """
    x = as_tensor(x, name)
    if x.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.int64, device=device if device is not None else x.device)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer dtype, got {x.dtype}")
    return x.to(device=device, dtype=torch.int64)


#: Accepted range of every ``rel_tol``: ``REL_TOL_RANGE[0] <= rel_tol < REL_TOL_RANGE[1]``.
REL_TOL_RANGE = (1e-12, 0.1)
#: The one default relative tolerance of the reducer, the reduced forms, the automorphisms and the losses.
DEFAULT_REL_TOL = 1e-5


def check_rel_tol(value, name: str = "rel_tol") -> float:
    """``value`` as a float in :data:`REL_TOL_RANGE`: ``TypeError`` unless a real number (not a bool),
    ``ValueError`` outside the range; one message for every function and loss that takes a tolerance."""
    low, high = REL_TOL_RANGE
    expected = f"a float in [{low:g}, {high:g})"
    value = check_real(value, name, expected)
    if not low <= value < high:  # NaN fails too
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


def as_lattice(x, name: str = "lattice") -> torch.Tensor:
    """The one entry point for lattices: ``x`` (tensor, NumPy array or nested list of numbers) as a floating
    tensor of shape ``(..., 3, 3)`` (rows are lattice vectors), ``ValueError`` naming the shape otherwise."""
    t = as_float_tensor(x, name)
    check_matrix_shape(t, name)
    return t


def as_crystal_lattices(x, name: str = "lattice", batch_size: int | None = None) -> torch.Tensor:
    """Lattices of a flat batch of crystals: ``x`` as a floating ``(B, 3, 3)`` tensor, one cell ``(3, 3)``
    taken as a batch of one crystal ``(1, 3, 3)``.

    A stack ``(..., 3, 3)`` with more than one leading dimension has no place in a flat batch, whose
    per-atom data (``frac``, ``batch``) follow the crystals in one order: ``ValueError``, as for a size
    other than ``batch_size`` (when given)."""
    t = as_float_tensor(x, name)
    expected = "(B, 3, 3) or (3, 3) (one crystal)" if batch_size is None else \
        f"(B, 3, 3) = ({batch_size}, 3, 3)" + (" or (3, 3)" if batch_size == 1 else "")
    if t.dim() not in (2, 3) or tuple(t.shape[-2:]) != (3, 3):
        stacked = t.dim() > 3 and tuple(t.shape[-2:]) == (3, 3)
        hint = (f"; a stack of batches does not fit a flat batch of crystals: reshape it to (-1, 3, 3) "
                f"= ({int(np.prod(t.shape[:-2]))}, 3, 3) with the per-crystal data in that order") if stacked else ""
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(t.shape)}{hint}")
    shape = tuple(t.shape)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if batch_size is not None and t.shape[0] != batch_size:
        raise ValueError(f"{name}: expected shape {expected}, got {shape}")
    return t


def check_matrix_shape(x: torch.Tensor, name: str) -> None:
    if x.dim() < 2 or tuple(x.shape[-2:]) != (3, 3):
        raise ValueError(f"{name}: expected shape (..., 3, 3), got {tuple(x.shape)}")


def check_last_dim(x: torch.Tensor, name: str, size: int = 3) -> None:
    if x.dim() < 1 or x.shape[-1] != size:
        raise ValueError(f"{name}: expected shape (..., {size}), got {tuple(x.shape)}")


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    """One of the strings ``choices`` (TypeError for a non-string, ValueError for another string)."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {choices}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def check_int(value, name: str, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as an ``int``: ``TypeError`` unless it is an int (NumPy integers included; not a bool nor
    a float, even an integral one), ``ValueError`` below ``minimum``."""
    if value is None and allow_none:
        return None
    expected = "an int" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if allow_none else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected {expected}, got {_kind(value)} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return int(value)


def check_count(value, name: str) -> int | None:
    """``value`` as an int, for arguments that must be ``None`` or an int >= 0 (``limit``, ``max_atoms``).

    A negative count would slice from the end (``limit=-1`` drops the last structure, ``ValueError``), and
    ``True`` would read as 1 (``TypeError``, as for floats and strings): both are refused rather than given
    a meaning. NumPy integers are accepted.
    """
    return check_int(value, name, minimum=0, allow_none=True)


def check_real(value, name: str, expected: str) -> float:
    """``value`` as a ``float``: ``TypeError`` unless it is a real number (ints and NumPy floats included,
    bools not). ``expected`` describes the accepted values for the message; the range is the caller's."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {expected}, got {_kind(value)} {value!r}")
    return float(value)


def check_dtype(value, name: str, *, floating: bool = True, allow_none: bool = False) -> torch.dtype | None:
    """A ``torch.dtype`` (``TypeError`` otherwise), floating where ``floating`` (``ValueError`` otherwise)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, torch.dtype):
        raise TypeError(f"{name}: expected a torch.dtype, got {_kind(value)} {value!r}")
    if floating and not value.is_floating_point:
        raise ValueError(f"{name}: expected a floating dtype (float32/float64), got {value}")
    return value


def has_values(x: torch.Tensor) -> bool:
    """Whether ``x`` holds values: False on the ``meta`` device, whose tensors have shapes and dtypes only.

    Checks that read values (is every count non-negative? is every matrix unimodular?) are skipped
    there, so that shape and device logic can be traced with meta tensors."""
    return x.device.type != "meta"


def require_values(x: torch.Tensor, what: str) -> None:
    """``ValueError`` for a ``meta`` tensor where ``what`` needs its values."""
    if not has_values(x):
        raise ValueError(f"{what} needs the tensor's values, which a tensor on the meta device does not have "
                         f"(meta tensors carry shapes and dtypes only)")
