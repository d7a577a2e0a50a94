"""One training step of a flow-matching CSP model, with a soft_niggli loss on the predicted clean crystal.

Flow matching (FlowMM, CrystalFlow) interpolates from noise ``(L_0, f_0)`` to a label ``(L_1, f_1)``,
``L_t = (1 - t) L_0 + t L_1``, ``f_t = wrap(f_0 + t · mi(f_1 - f_0))`` (``mi``: minimum image), and trains a
network to predict the clean crystal from ``(L_t, f_t, t, species)``; the velocity used for sampling
is ``(L̂_1 - L_t) / (1 - t)``. The loss on the prediction is any registered strategy:
``get_loss(name)(predicted_clean, labels)``, both :class:`soft_niggli.CrystalBatch`. Rows of a lattice
are its vectors.

A minimal, self-contained step on a few of the real crystals that ship with soft_niggli (needs
pymatgen to read them): a tiny network, one optimiser step, the loss before and after. The full
benchmark (prior scaled to the data, alignment of the prior, a coupling to the label's reduced
forms, sampling and evaluation, distributed training) is ``benchmarks/flow_matching.py`` with the
network in ``benchmarks/flow_model.py``, in the source repository (not installed).

    python examples/flow_matching_step.py [--crystals 16] [--loss softmin] [--steps 1]
"""

import argparse

import torch
from torch import nn

from soft_niggli import CrystalBatch, get_loss
from soft_niggli.datasets import load_dataset
from soft_niggli.lattice import wrap


class TinyFlowNet(nn.Module):
    """(L_t, f_t, t, species) -> (L̂_1, f̂_1): per-atom features, pooled per crystal for the lattice."""

    def __init__(self, hidden: int = 64, max_z: int = 100):
        super().__init__()
        self.embed = nn.Embedding(max_z + 1, hidden)
        self.atom = nn.Sequential(nn.Linear(hidden + 6 + 9 + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.frac_head = nn.Linear(hidden, 3)
        self.lattice_head = nn.Sequential(nn.Linear(hidden + 9 + 1, hidden), nn.SiLU(), nn.Linear(hidden, 9))

    def forward(self, noisy: CrystalBatch, t: torch.Tensor) -> CrystalBatch:
        owner = torch.repeat_interleave(torch.arange(len(noisy)), noisy.num_atoms)  # each atom's crystal
        L, f = noisy.lattice.float(), noisy.frac.float()
        angle = 2 * torch.pi * f
        per_atom = torch.cat([self.embed(noisy.species), torch.sin(angle), torch.cos(angle),
                              L.flatten(1)[owner], t[owner, None]], dim=1)
        h = self.atom(per_atom)
        pooled = torch.zeros(len(noisy), h.shape[1]).index_add(0, owner, h) / noisy.num_atoms[:, None]
        L1 = L + self.lattice_head(torch.cat([pooled, L.flatten(1), t[:, None]], dim=1)).view(-1, 3, 3)
        f1 = f + self.frac_head(h)  # unwrapped: the losses are periodic
        return CrystalBatch(L1.to(noisy.dtype), f1.to(noisy.dtype), noisy.num_atoms, noisy.species)


def noisy_crystals(labels: CrystalBatch, t: torch.Tensor, generator: torch.Generator) -> CrystalBatch:
    """The interpolant at times ``t (B,)`` between a Gaussian lattice / uniform coordinates and the labels."""
    owner = torch.repeat_interleave(torch.arange(len(labels)), labels.num_atoms)
    scale = labels.lattice.flatten(1).norm(dim=1).div(3)[:, None, None]  # noise of the labels' size
    L0 = scale * torch.randn(labels.lattice.shape, generator=generator, dtype=labels.dtype)
    f0 = torch.rand(labels.frac.shape, generator=generator, dtype=labels.dtype)
    d = labels.frac - f0
    d = d - torch.round(d)  # minimum image
    Lt = (1 - t)[:, None, None] * L0 + t[:, None, None] * labels.lattice
    return CrystalBatch(Lt, wrap(f0 + t[owner, None] * d), labels.num_atoms, labels.species)


def main(crystals: int, loss_name: str, steps: int) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    labels = CrystalBatch.from_structures(load_dataset("perov_5_small", "train", limit=crystals))
    model = TinyFlowNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = get_loss(loss_name)  # e.g. "softmin", "gram", "reduced-forms", "mse"

    t = torch.rand(len(labels), generator=g, dtype=labels.dtype)
    noisy = noisy_crystals(labels, t, g)
    for step in range(steps):
        predicted_clean = model(noisy, t.float())
        result = loss_fn(predicted_clean, labels)  # the loss on the predicted clean crystal
        optimiser.zero_grad()
        result.loss.backward()
        optimiser.step()
        print(f"step {step}: {loss_name} loss {result.loss.item():.4f} (lattice term "
              f"{result.terms['lattice'].mean().item():.4f}, coordinate term {result.terms['coords'].mean().item():.4f})")
    with torch.no_grad():
        after = loss_fn(model(noisy, t.float()), labels).loss.item()
    print(f"same batch after {steps} step(s): {after:.4f}")
    # Sampling would integrate v = (L̂_1 - L_t) / (1 - t) from t = 0 to 1 (benchmarks/flow_matching.py).


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crystals", type=int, default=16)
    parser.add_argument("--loss", default="softmin")
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    main(args.crystals, args.loss, args.steps)
