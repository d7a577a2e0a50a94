"""Peer Niggli reducers (spglib, pymatgen, ASE, cctbx) behind one signature.

Used by the benchmarks to compare soft_niggli's guarded reducer with the
reducers that ship in common crystallography libraries.  Lattices follow the
package convention: a (3, 3) array whose ROWS are the lattice vectors a, b, c,
and a reduced lattice relates to its input by ``reduced = T @ L`` with T an
integer matrix of determinant +-1.  This package never imports torch (the
cctbx worker must not, see :mod:`baselines.reducers`).
"""

from baselines.reducers import PEER_REDUCERS, PeerResult, reduce_with, shutdown_workers

__all__ = ["PEER_REDUCERS", "PeerResult", "reduce_with", "shutdown_workers"]
