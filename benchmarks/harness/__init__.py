"""What the experiments of :mod:`benchmarks` share; none of it is run on its own.

* :mod:`~benchmarks.harness.data`: the CDVAE/DiffCSP data folder and the data holder of a CSP run
  (crystals, labels in each basis, the no-learning reference).
* :mod:`~benchmarks.harness.models`: the CSP models (composition MLP, set transformer, or your own).
* :mod:`~benchmarks.harness.training`: one CSP training run with one loss and one label basis.
* :mod:`~benchmarks.harness.flow_model`, :mod:`~benchmarks.harness.flow_matching`: the flow-matching
  network, prior, couplings, training loop and sampler.
* :mod:`~benchmarks.harness.report`: the one writer of results: the exact command, the machine, every
  markdown table (:func:`~benchmarks.harness.report.markdown_table`) and the JSON.

Lattices are ``(..., 3, 3)`` with the lattice vectors as rows, as in soft_niggli.
"""

__all__ = ["data", "flow_matching", "flow_model", "models", "report", "training"]
