"""The per-item outcome of a reduction: :class:`Status`, shared by the reducer's API and its cores."""

from __future__ import annotations

import enum

__all__ = ["Status"]


class Status(enum.IntEnum):
    """Per-item outcome of :func:`niggli_reduce`."""

    OK = 0  #: reduced and verified against the Niggli conditions (the checks of :func:`is_niggli_reduced`)
    NOT_CONVERGED = 1  #: iteration cap reached; best basis so far, valid unimodular transform
    DEGENERATE = 2  #: not resolvable in float64 (rank-deficient, see "Resolution"); input and identity returned
    NONFINITE = 3  #: NaN or inf in the input (or a reduced cell overflowing float64); input and identity returned

    def __str__(self) -> str:
        # An IntEnum prints its number since Python 3.11; a status reads better by name: "OK".
        return self.name

    def __format__(self, spec: str) -> str:
        # f"{status}" and f"{status:>12}" give the name; numeric formats (f"{status:d}") the number.
        try:
            return format(self.name, spec)
        except ValueError:
            return format(int(self), spec)
