"""Peer Niggli reducers (spglib, pymatgen, ASE, cctbx, moyopy) behind one signature, and the published proxy loss.

Used by the benchmarks to compare soft_niggli's guarded reducer with the reducers that ship in common
crystallography libraries (:mod:`soft_niggli.baselines.reducers`), and to train with the proxy loss as
first published (:mod:`soft_niggli.baselines.spglib_proxy`, the ``"proxy-spglib"`` entry point of the
``soft_niggli.losses`` group, imported by ``get_loss`` on first request). Lattices follow the package
convention: a (3, 3) array whose ROWS are the lattice vectors a, b, c, and a reduced lattice relates
to its input by ``reduced = T @ L`` with T an integer matrix of determinant +-1.
"""

from .reducers import PEER_REDUCERS, PeerResult, reduce_with, shutdown_workers

__all__ = ["PEER_REDUCERS", "PeerResult", "reduce_with", "shutdown_workers"]
