"""From a DiffCSP/PyG-style batch to a soft_niggli loss, and back. Needs only the core install.

DiffCSP (and CDVAE, FlowMM) hand the model a torch_geometric Batch whose crystals are flat tensors:
frac_coords (N, 3), atom_types (N,), num_atoms (B,), lattices (B, 3, 3) (rows are the lattice vectors,
as in soft_niggli) and batch (N,), each atom's crystal index. That is exactly a soft_niggli.CrystalBatch.
This script builds such a batch with plain torch (no torch_geometric needed; a real Batch has the same
attributes), scores a prediction with a basis-invariant loss (the same value whichever basis the labels
are stored in; plain MSE changes), and writes canonical (Niggli) labels back into the batch, lengths and
angles included.

    python examples/pyg_batch.py [--crystals 8]
"""

import argparse
from types import SimpleNamespace

import torch

from soft_niggli import CrystalBatch, canonicalize_labels, get_loss, lattice_parameters, random_unimodular


def fake_diffcsp_batch(num_crystals: int, generator: torch.Generator) -> SimpleNamespace:
    """What a DataLoader of DiffCSP's CrystDataset yields, with random crystals."""
    num_atoms = torch.randint(1, 7, (num_crystals,), generator=generator)
    lattices = torch.diag_embed(4 + 2 * torch.rand(num_crystals, 3, generator=generator, dtype=torch.float64))
    lattices = random_unimodular((num_crystals,), max_entry=1, generator=generator).double() @ lattices  # as stored
    n = int(num_atoms.sum())
    return SimpleNamespace(frac_coords=torch.rand(n, 3, generator=generator, dtype=torch.float64),
                           atom_types=torch.randint(1, 90, (n,), generator=generator),
                           num_atoms=num_atoms, lattices=lattices,
                           batch=torch.repeat_interleave(torch.arange(num_crystals), num_atoms))


def main(num_crystals: int) -> None:
    g = torch.Generator().manual_seed(0)
    pyg = fake_diffcsp_batch(num_crystals, g)

    # PyG batch -> CrystalBatch: either from the per-crystal counts ...
    target = CrystalBatch(pyg.lattices, pyg.frac_coords, pyg.num_atoms, species=pyg.atom_types)
    # ... or from the per-atom crystal index (PyG's `batch` vector); the two are the same batch.
    same = CrystalBatch.from_flat(pyg.lattices, pyg.frac_coords, pyg.batch, species=pyg.atom_types)
    assert torch.equal(same.num_atoms, target.num_atoms)

    # A model's output for these compositions (here: the labels, slightly off), with gradients.
    pred_lattice = (target.lattice * 1.02).requires_grad_()
    pred_frac = (target.frac + 0.01).requires_grad_()
    pred = CrystalBatch(pred_lattice, pred_frac, pyg.num_atoms, species=pyg.atom_types)

    # The same labels written in other bases (L' = M L, F' = wrap(F M^-1)): a dataset may store either.
    rebased = target.apply_basis_change(random_unimodular((num_crystals,), max_entry=2, generator=g))
    softmin, mse = get_loss("softmin"), get_loss("mse")
    result = softmin(pred, target)
    result.loss.backward()
    print(f"{num_crystals} crystals, {len(pyg.atom_types)} atoms")
    print(f"softmin: {result.loss.item():.6f} on the stored labels, {softmin(pred, rebased).loss.item():.6f} on the "
          "re-based ones")
    print(f"mse:     {mse(pred, target).loss.item():.6f} on the stored labels, {mse(pred, rebased).loss.item():.6f} on "
          "the re-based ones")
    print(f"gradients: lattice {tuple(pred_lattice.grad.shape)}, fractional coordinates {tuple(pred_frac.grad.shape)}")

    # CrystalBatch -> PyG batch: canonical labels back into the flat tensors the model trains on.
    canonical = canonicalize_labels(target)
    assert bool(canonical.ok.all()), canonical.status
    pyg.lattices, pyg.frac_coords = canonical.batch.lattice, canonical.batch.frac
    params = lattice_parameters(pyg.lattices)  # DiffCSP also stores lengths and angles (degrees)
    pyg.lengths, pyg.angles = params[:, :3], params[:, 3:]
    print(f"Niggli labels written back: lattices {tuple(pyg.lattices.shape)}, frac_coords "
          f"{tuple(pyg.frac_coords.shape)}, lengths of crystal 0 {[round(x, 3) for x in pyg.lengths[0].tolist()]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--crystals", type=int, default=8, help="random crystals in the fake DiffCSP batch")
    main(parser.parse_args().crystals)
