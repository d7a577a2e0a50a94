"""Canonicalise a small dataset, then test a model of your own for GL(3,Z) (change-of-basis) invariance.

Rows of a lattice are its vectors; a change of basis is L' = M L, F' = wrap(F M^-1), M an integer
matrix of determinant +-1. The same crystal has infinitely many such descriptions.

1. Canonicalise: every crystal of the bundled Carbon-24 subset (real cells, most of them not
   Niggli-reduced as stored) into its Niggli basis with the guarded reducer, with the reducer's status
   and integer transform per crystal. For a CSV file on disk the command line does the same:
   `soft-niggli canonicalize IN.csv OUT.csv`.
2. Test: `soft_niggli.testing.assert_gl3z_invariant` re-bases every crystal at random and checks that a
   model's outputs do not change. A model reading the lattice matrix directly fails; the same model fed
   the Niggli-reduced metric passes. Put the same call in your test suite (with hypothesis and
   `soft_niggli.testing.crystals()` / `symmetric_crystals()` for generated crystals:
   pip install "soft-niggli[test]").

Needs pymatgen to read the bundled crystals (CIFs): pip install "soft-niggli[bench]" (or pymatgen).

    python examples/canonicalize_and_test.py [--crystals 64]
"""

import argparse
import sys

import torch
from torch import nn

from soft_niggli import CrystalBatch, Status, canonicalize_labels, gram, is_niggli_reduced
from soft_niggli.datasets import load_dataset
from soft_niggli.testing import assert_gl3z_invariant


class EnergyModel(nn.Module):
    """Stands for your model: a crystal -> one number per crystal (an energy, a property)."""

    def __init__(self, canonical_input: bool):
        super().__init__()
        self.canonical_input = canonical_input
        self.net = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 1)).double()

    def forward(self, batch: CrystalBatch) -> torch.Tensor:
        lattice = batch.lattice
        if self.canonical_input:  # the basis chosen by the data, not by whoever wrote the file
            lattice = canonicalize_labels(batch).batch.lattice
        G = gram(lattice)  # rotation-invariant, but the basis still shows unless it is canonical
        features = torch.stack([G[:, 0, 0], G[:, 1, 1], G[:, 2, 2], G[:, 1, 2], G[:, 0, 2], G[:, 0, 1]], dim=1)
        return self.net(features / batch.num_atoms[:, None] ** (2 / 3)).squeeze(1)


def main(crystals: int) -> None:
    torch.manual_seed(0)
    batch = CrystalBatch.from_structures(load_dataset("carbon_24_small", "all", limit=crystals))

    canonical = canonicalize_labels(batch)
    print(f"{len(batch)} Carbon-24 crystals: {int(is_niggli_reduced(batch.lattice).sum())} Niggli-reduced as stored, "
          f"{int(is_niggli_reduced(canonical.batch.lattice).sum())} after canonicalize_labels")
    counts = {s.name: int((canonical.status == int(s)).sum()) for s in Status}
    print(f"reducer status: {counts}; transform of crystal 0: {canonical.transform[0].tolist()}")

    with torch.no_grad():
        for canonical_input in (False, True):
            model = EnergyModel(canonical_input)
            try:
                assert_gl3z_invariant(model, batch, trials=3)
                verdict = "passes: invariant to the unit cell"
            except AssertionError as err:
                verdict = "fails: " + str(err).splitlines()[0][:72] + " ..."
            print(f"model on {'the Niggli-reduced' if canonical_input else 'the stored'} metric {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Needs pymatgen.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--crystals", type=int, default=64, help="bundled Carbon-24 crystals to canonicalise and test")
    args = parser.parse_args()
    try:
        import pymatgen  # noqa: F401 - the bundled crystals are CIFs
    except ImportError:
        sys.exit("this example reads CIF files with pymatgen: pip install \"soft-niggli[bench]\" (or pymatgen)")
    main(args.crystals)
