"""The option checks every loss uses (and losses outside the library may use), so that one option has
the same bounds and the same message everywhere; and the choices of the two terms every loss has.

Each check takes the option's name and value and returns the value (as a float, int, str or bool),
or raises: a wrong Python type is a ``TypeError``, a value out of range or not among the choices a
``ValueError``, both naming the option, what was expected and what came. Losses call them in their
``__init__``, so a bad option fails when the loss is built, never at the first call.
"""

from __future__ import annotations

import math

from .._checks import check_choice, check_rel_tol

__all__ = [
    "LATTICE_METRICS",
    "COORDINATE_TERMS",
    "weight_option",
    "choice_option",
    "flag_option",
    "fraction_option",
    "positive_option",
    "int_option",
    "blur_option",
    "rel_tol_option",
]

#: Choices of the two terms every loss has (:mod:`soft_niggli.losses.terms`).
LATTICE_METRICS = ("cartesian", "gram")
COORDINATE_TERMS = ("periodic", "sinkhorn")


def _number(name: str, value, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__} {value!r}")
    return float(value)


def weight_option(name: str, value) -> float:
    """A term's weight: a finite number >= 0 (0 switches the term off)."""
    value = _number(name, value, "a finite number >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return value


def positive_option(name: str, value) -> float:
    """A finite number > 0 (a temperature, a scale)."""
    value = _number(name, value, "a finite number > 0")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return value


def fraction_option(name: str, value, high: float = 0.1) -> float:
    """A relative tolerance: a number in (0, ``high``)."""
    value = _number(name, value, f"a number in (0, {high})")
    if not 0 < value < high:
        raise ValueError(f"{name}: expected a number in (0, {high}), got {value!r}")
    return value


def blur_option(value) -> float:
    """Sinkhorn blur in Å, in (0, 10) in every loss (beyond 10 Å the cost says nothing of atoms)."""
    return fraction_option("blur", value, high=10.0)


def rel_tol_option(value, name: str = "rel_tol") -> float:
    """A relative tolerance (``rel_tol``, ``automorphism_rel_tol``): in
    :data:`~soft_niggli.niggli.REL_TOL_RANGE`, lower end included, the range and the message of every
    function of the library that takes one, so that an option accepted here never fails at the first
    call."""
    return check_rel_tol(value, name)


def int_option(name: str, value, low: int, high: int) -> int:
    """An int in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int in [{low}, {high}], got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}: expected an int in [{low}, {high}], got {value!r}")
    return value


def choice_option(name: str, value, choices: tuple[str, ...]) -> str:
    """One of the strings ``choices``."""
    return check_choice(value, name, choices)


def flag_option(name: str, value) -> bool:
    """True or False (not 0/1: a number here is more likely a misplaced argument)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return value
