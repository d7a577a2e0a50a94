"""One training step of a flow-matching CSP model on canonical labels, with the reduced-form coupling.

Flow matching (FlowMM, CrystalFlow) interpolates from noise ``(L_0, f_0)`` to a label ``(L_1, f_1)``,
``L_t = (1 - t) L_0 + t L_1``, ``f_t = wrap(f_0 + t · mi(f_1 - f_0))`` (``mi``: minimum image), and trains a
network to predict the clean crystal from ``(L_t, f_t, t, species)``; the velocity used for sampling is
``(L̂_1 - L_t) / (1 - t)``. Rows of a lattice are its vectors.

What soft_niggli adds, in the order a training step uses it:

1. canonical labels, once, in the data pipeline (:func:`soft_niggli.canonicalize_labels`, the guarded reducer);
2. per step, each label re-based to the one of its equally canonical reduced forms nearest its noise sample
   (:func:`soft_niggli.couple_reduced_forms`), and the noise turned to the label (:func:`soft_niggli.align_rotation`);
3. any registered loss on the predicted clean crystal: ``get_loss(name)(predicted_clean, target)``.

Runs on a few of the real crystals that ship with soft_niggli; reading them needs pymatgen
(``pip install "soft-niggli[bench]"``). ``TinyFlowNet`` follows the plug-in signature of the generative
benchmark, so ``python -m benchmarks.generative --model examples.flow_matching_step:TinyFlowNet`` trains it
at scale from a checkout.

    python examples/flow_matching_step.py [--crystals 16] [--loss mse] [--steps 1]
"""

import argparse
import sys

import torch
from torch import nn

from soft_niggli import CrystalBatch, align_rotation, canonicalize_labels, couple_reduced_forms, get_loss
from soft_niggli.datasets import load_dataset
from soft_niggli.lattice import wrap


class TinyFlowNet(nn.Module):
    """``(L_t, f_t, t, species, num_atoms) -> (L̂_1, f̂_1)``: per-atom features, pooled per crystal for the lattice."""

    def __init__(self, volume_per_atom: float = 15.0, hidden: int = 64, max_z: int = 100, **_):
        super().__init__()
        self.scale = volume_per_atom ** (1 / 3)  # Å: lattices enter the network in units of about 1
        self.embed = nn.Embedding(max_z + 1, hidden)
        self.atom = nn.Sequential(nn.Linear(hidden + 6 + 9 + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.frac_head = nn.Linear(hidden, 3)
        self.lattice_head = nn.Sequential(nn.Linear(hidden + 9 + 1, hidden), nn.SiLU(), nn.Linear(hidden, 9))

    def forward(self, lattice, frac, t, species, num_atoms):
        owner = torch.repeat_interleave(torch.arange(len(num_atoms), device=frac.device), num_atoms)
        L, f, t = lattice.float() / self.scale, frac.float(), t.float()
        angle = 2 * torch.pi * f
        per_atom = torch.cat([self.embed(species), torch.sin(angle), torch.cos(angle), L.flatten(1)[owner],
                              t[owner, None]], dim=1)
        h = self.atom(per_atom)
        pooled = torch.zeros(len(num_atoms), h.shape[1], device=h.device).index_add(0, owner, h)
        pooled = pooled / num_atoms[:, None]
        L1 = L + self.lattice_head(torch.cat([pooled, L.flatten(1), t[:, None]], dim=1)).view(-1, 3, 3)
        f1 = f + self.frac_head(h)  # unwrapped: the losses are periodic
        return (L1 * self.scale).to(lattice.dtype), f1.to(frac.dtype)


def main(crystals: int, loss_name: str, steps: int, among: str) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    raw = CrystalBatch.from_structures(load_dataset("perov_5_small", "train", limit=crystals))
    labels = canonicalize_labels(raw).batch  # 1. canonical labels, once
    model = TinyFlowNet(volume_per_atom=float(torch.linalg.det(labels.lattice).abs().sum() / labels.num_atoms.sum()))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = get_loss(loss_name)  # e.g. "mse", "reduced-forms", "softmin"

    # Noise of the labels' size, and the time of each crystal.
    scale = labels.lattice.flatten(1).norm(dim=1).div(3)[:, None, None]
    L0 = scale * torch.randn(labels.lattice.shape, generator=g, dtype=labels.dtype)
    f0 = torch.rand(labels.frac.shape, generator=g, dtype=labels.dtype)
    t = torch.rand(len(labels), generator=g, dtype=labels.dtype)

    # 2. The target: the label's reduced form nearest the noise; the noise turned to it.
    coupled = couple_reduced_forms(L0, labels, prior_frac=f0, among=among)
    target = coupled.batch
    L0 = align_rotation(L0, target.lattice)
    print(f"coupling ({among}): {int((coupled.transform != torch.eye(3, dtype=torch.int64)).flatten(1).any(1).sum())}"
          f" of {len(labels)} labels re-based, among {coupled.choices.float().mean():.1f} forms on average")

    d = target.frac - f0
    d = d - torch.round(d)  # minimum image
    owner = target.batch
    Lt = (1 - t)[:, None, None] * L0 + t[:, None, None] * target.lattice
    ft = wrap(f0 + t[owner, None] * d)
    for step in range(steps):
        L1, f1 = model(Lt, ft, t, target.species, target.num_atoms)
        predicted_clean = CrystalBatch(L1, f1, target.num_atoms, target.species)
        result = loss_fn(predicted_clean, target)  # 3. the loss on the predicted clean crystal
        optimiser.zero_grad()
        result.loss.backward()
        optimiser.step()
        print(f"step {step}: {loss_name} loss {result.loss.item():.4f} (lattice term "
              f"{result.terms['lattice'].mean().item():.4f}, coordinate term {result.terms['coords'].mean().item():.4f})")
    with torch.no_grad():
        L1, f1 = model(Lt, ft, t, target.species, target.num_atoms)
        after = loss_fn(CrystalBatch(L1, f1, target.num_atoms, target.species), target).loss.item()
    print(f"same batch after {steps} step(s): {after:.4f}")
    # Sampling integrates v = (L̂_1 - L_t) / (1 - t) from t = 0 to 1 (benchmarks/harness/flow_matching.py in a
    # checkout).


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--crystals", type=int, default=16, help="labels in the batch (bundled Perov-5 crystals)")
    parser.add_argument("--loss", default="mse", help="any registered loss name (soft_niggli.available_losses())")
    parser.add_argument("--steps", type=int, default=1, help="optimiser steps on the one batch")
    parser.add_argument("--among", default="automorphisms", choices=["automorphisms", "reduced-forms"],
                        help="which of the label's reduced forms the coupling chooses among")
    args = parser.parse_args()
    try:
        import pymatgen  # noqa: F401 - the bundled crystals are CIFs
    except ImportError:
        sys.exit("this example reads CIF files with pymatgen: pip install \"soft-niggli[bench]\" (or pymatgen)")
    main(args.crystals, args.loss, args.steps, args.among)
