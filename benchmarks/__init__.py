"""Benchmarks of soft_niggli, run as modules from the repository root: ``python -m benchmarks.<name>``.

Layout:

* ``benchmarks/<name>.py``: the experiments, one per module, each runnable as
  ``python -m benchmarks.<name> [options]`` (``--help`` lists them). Every one has ``main(argv=None)``,
  which writes its results under ``benchmarks/results/`` (or ``--out``) and to stdout and returns the
  exit status 0; bad arguments exit through ``SystemExit`` with a message.
* :mod:`benchmarks.harness`: what the experiments share: the data holder (:mod:`~benchmarks.harness.data`),
  the CSP models (:mod:`~benchmarks.harness.models`), the training loop (:mod:`~benchmarks.harness.training`),
  the flow-matching network and loop (:mod:`~benchmarks.harness.flow_model`,
  :mod:`~benchmarks.harness.flow_matching`), and the one results writer (:mod:`~benchmarks.harness.report`:
  the exact command, the machine, every markdown table, the JSON).
* ``benchmarks/results/``: the committed results; ``benchmarks/generative_matrix.sh`` reruns the
  generative comparison.

The experiments (:data:`EXPERIMENTS`):

* :mod:`benchmarks.ablation`: trains CSP models on labels in several bases with every loss
  (tables and figures by :mod:`benchmarks.ablation_report`).
* :mod:`benchmarks.generative`: flow matching with every loss and coupling;
  :mod:`benchmarks.generative_cost`: the loss's share of one flow-matching step;
  :mod:`benchmarks.sampler_study`: one trained flow model sampled several ways;
  :mod:`benchmarks.generative_comparison`: every setting against independent pairing, in one page.
* :mod:`benchmarks.proxy_training`: the spglib proxy loss against the guarded one on an untrained model;
  :mod:`benchmarks.proxy_boundary`: the proxy loss next to its label, at the Niggli-cone boundary.
* :mod:`benchmarks.continuity`: losses along a path that crosses a Niggli-cone boundary;
  :mod:`benchmarks.float32_near_faces`: how far re-basing a label near a face moves each loss, float32
  against float64.
* :mod:`benchmarks.loss_cost`: forward + backward cost of every loss.
* :mod:`benchmarks.reduced_forms_census`: how many reduced forms real cells have.
* :mod:`benchmarks.reducer_robustness`, :mod:`benchmarks.reducer_speed`: the reducer against its peers,
  judged by the independent checker :mod:`soft_niggli.testing.reduction_check`.

Lattices are ``(..., 3, 3)`` with the lattice vectors as rows, as in soft_niggli. The script that makes
the crystals bundled with the package is ``tools/make_bundled_data.py``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["EXPERIMENTS", "MOVED"]

#: The modules run as ``python -m benchmarks.<name>``.
EXPERIMENTS = ("ablation", "continuity", "float32_near_faces", "generative", "generative_comparison", "generative_cost",
               "loss_cost", "proxy_boundary", "proxy_training", "reduced_forms_census", "reducer_robustness",
               "reducer_speed", "sampler_study")

#: Old module name -> where the module lives; importing the old name warns once and gives that module.
MOVED = {**{f"benchmarks.{m}": f"benchmarks.harness.{m}"
            for m in ("data", "models", "training", "flow_model", "flow_matching", "report")},
         "benchmarks.reduction_check": "soft_niggli.testing.reduction_check"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old name of :data:`MOVED` as the module at its place (one module object, not a copy,
    so that monkeypatching either name patches both)."""

    def __init__(self):
        self._specs = {}

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} is {MOVED[spec.name]}: import it from there", FutureWarning, stacklevel=2)
        module = importlib.import_module(MOVED[spec.name])
        # The import system sets __spec__ to the old name's; exec_module gives the module its own back.
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._specs.pop(module.__spec__.name)


# By class name: a re-imported package defines a new class, and one finder is enough.
if not any(type(f).__name__ == _MovedModules.__name__ for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
