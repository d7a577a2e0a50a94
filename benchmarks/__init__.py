"""Benchmarks of soft_niggli, run as modules from the repository root: ``python -m benchmarks.<name>``.

Each writes its results under ``benchmarks/results/`` (or ``--out``) through :mod:`benchmarks.report`,
which records the exact command and a description of the machine; ``--help`` lists the options.

* :mod:`benchmarks.ablation`: trains CSP models on labels in several bases with every loss
  (:mod:`benchmarks.data`, :mod:`benchmarks.models`, :mod:`benchmarks.training`,
  :mod:`benchmarks.ablation_report`).
* :mod:`benchmarks.proxy_training`: the spglib proxy loss against the guarded one on an untrained model.
* :mod:`benchmarks.continuity`: losses along a path that crosses a Niggli-cone boundary.
* :mod:`benchmarks.loss_cost`: forward + backward cost of every loss.
* :mod:`benchmarks.reducer_robustness`, :mod:`benchmarks.reducer_speed`: the reducer against its peers,
  judged by the independent checker :mod:`benchmarks.reduction_check`.
"""
