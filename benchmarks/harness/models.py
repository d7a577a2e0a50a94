"""The CSP models of the training benchmarks (:mod:`benchmarks.ablation`, :mod:`benchmarks.proxy_training`):
composition in, lattice and fractional coordinates out.

Row convention: the predicted lattice is ``(B, 3, 3)`` with the lattice vectors as rows; Cartesian
positions are ``X = F @ L``. Neither model is told which basis to emit: any of the infinitely many
bases of the right lattice is an equally correct answer, and the loss decides what is rewarded.

Both models see only the composition, as in CSP with known composition: the atomic numbers of a
crystal in the label's atom order (atoms are matched to the label's by that order, as DiffCSP does).

* :class:`CompositionMLP` (``"mlp"``), the model of the discrete-proxy study this project starts from: the element-count vector over
  Z = 1..100 normalised to fractions, plus ``n_atoms / max_atoms``, through an MLP to 9 lattice
  numbers and ``max_atoms × 3`` fractional coordinates, one triple per atom *slot* (slot ``i`` is the
  ``i``-th atom of the crystal).
* :class:`SetTransformer` (``"transformer"``): per-atom tokens (species embedding + slot embedding,
  the slot breaking the tie between atoms of one species), a few masked self-attention layers,
  per-atom fractional coordinates from each token and the lattice from the masked mean of the tokens.

Lattice outputs are in units of a length scale ``s = (v · n_atoms)^(1/3)`` with ``v`` the mean volume
per atom of the training labels (a fixed buffer): the same normalisation for every strategy, so an
untrained model emits cells of about the right size but in a random, generally skewed, basis. With
``volume_per_atom=None`` the lattice numbers are used as emitted (Å), as in that study's model, whose
untrained cells are of any size (:mod:`benchmarks.proxy_training`).

A model of your own plugs in by name, ``"package.module:Class"`` (``--models`` of the ablation): it is
built as ``Class(max_atoms, volume_per_atom, **options)`` and called as ``model(batch)`` with a
:class:`~soft_niggli.CrystalBatch` (only its ``species`` and ``num_atoms`` should be read), returning
``(lattice (B, 3, 3), frac (N, 3))``.
Fractional coordinates are emitted unwrapped; every loss in the study is periodic, and evaluation
wraps them.

>>> import torch
>>> from soft_niggli import CrystalBatch
>>> crystals = CrystalBatch(torch.eye(3).repeat(2, 1, 1), torch.rand(3, 3), [2, 1], [8, 14, 26])
>>> L, F = build_model("mlp", max_atoms=4, volume_per_atom=12.0)(crystals)
>>> tuple(L.shape), tuple(F.shape)
((2, 3, 3), (3, 3))
"""

from __future__ import annotations

import torch
from torch import nn

from soft_niggli import CrystalBatch

__all__ = ["MODELS", "CompositionMLP", "SetTransformer", "build_model", "import_object"]

NUM_ELEMENTS = 100


class _Base(nn.Module):
    def __init__(self, max_atoms: int, volume_per_atom: float | None):
        super().__init__()
        if max_atoms < 1:
            raise ValueError(f"max_atoms: expected an int >= 1, got {max_atoms!r}")
        if volume_per_atom is not None and not volume_per_atom > 0:
            raise ValueError(f"volume_per_atom: expected a number > 0 or None, got {volume_per_atom!r}")
        self.max_atoms = int(max_atoms)
        self.register_buffer("volume_per_atom",
                             None if volume_per_atom is None else torch.tensor(float(volume_per_atom)))

    def _padded_species(self, batch: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Atomic numbers ``(B, max_atoms)`` (0 = no atom) and the mask of real atoms; slot ``i`` of a
        crystal is its ``i``-th atom, so ``per_slot[mask]`` lists per-slot outputs in the batch's atom order."""
        if batch.species is None:
            raise ValueError("batch: expected species (atomic numbers), got None")
        _, mask, species = batch.to_padded()
        if mask.shape[1] > self.max_atoms:
            raise ValueError(f"batch: expected at most max_atoms = {self.max_atoms} atoms per crystal, "
                             f"got {mask.shape[1]}")
        pad = (0, self.max_atoms - mask.shape[1])
        return nn.functional.pad(species, pad).clamp(0, NUM_ELEMENTS), nn.functional.pad(mask, pad)

    def _scale(self, batch: CrystalBatch, dtype: torch.dtype) -> torch.Tensor:
        if self.volume_per_atom is None:
            return torch.ones(len(batch), dtype=dtype, device=batch.device)
        return (self.volume_per_atom * batch.num_atoms.to(dtype).clamp_min(1)).pow(1.0 / 3.0)


class CompositionMLP(_Base):
    """Composition → (lattice (B, 3, 3), fractional coordinates (N_total, 3)); see the module docstring."""

    def __init__(self, max_atoms: int, volume_per_atom: float | None, hidden: int = 256, layers: int = 3):
        super().__init__(max_atoms, volume_per_atom)
        dims = [NUM_ELEMENTS + 1] + [hidden] * layers
        body = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(a, b), nn.SiLU()]
        self.body = nn.Sequential(*body)
        self.lattice_head = nn.Linear(hidden, 9)
        self.coord_head = nn.Linear(hidden, 3 * self.max_atoms)

    def forward(self, batch: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        species, mask = self._padded_species(batch)
        dtype = self.lattice_head.weight.dtype
        counts = torch.zeros(len(batch), NUM_ELEMENTS + 1, dtype=dtype, device=batch.device)
        counts.scatter_add_(1, species, mask.to(dtype))
        counts = counts[:, 1:]  # drop the padding "element" 0
        n = batch.num_atoms.to(dtype).clamp_min(1)
        x = torch.cat([counts / n[:, None], (n / self.max_atoms)[:, None]], dim=1)
        h = self.body(x)
        lattice = self.lattice_head(h).view(-1, 3, 3) * self._scale(batch, dtype)[:, None, None]
        coords = self.coord_head(h).view(-1, self.max_atoms, 3)
        return lattice, coords[mask]


class SetTransformer(_Base):
    """Atom tokens → self-attention → per-atom coordinates and a pooled lattice (module docstring)."""

    def __init__(self, max_atoms: int, volume_per_atom: float | None, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__(max_atoms, volume_per_atom)
        self.species_embedding = nn.Embedding(NUM_ELEMENTS + 1, dim)
        self.slot_embedding = nn.Embedding(self.max_atoms, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.coord_head = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 3))
        self.lattice_head = nn.Sequential(nn.Linear(dim + 1, dim), nn.SiLU(), nn.Linear(dim, 9))

    def forward(self, batch: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        species, mask = self._padded_species(batch)
        slots = torch.arange(self.max_atoms, device=batch.device)
        tokens = self.species_embedding(species) + self.slot_embedding(slots)[None]
        h = self.encoder(tokens, src_key_padding_mask=~mask)
        dtype = h.dtype
        w = mask.to(dtype)[..., None]
        pooled = (h * w).sum(1) / w.sum(1).clamp_min(1)
        n = batch.num_atoms.to(dtype).clamp_min(1)
        lattice = self.lattice_head(torch.cat([pooled, (n / self.max_atoms)[:, None]], 1)).view(-1, 3, 3)
        lattice = lattice * self._scale(batch, dtype)[:, None, None]
        return lattice, self.coord_head(h)[mask]


MODELS = {"mlp": CompositionMLP, "transformer": SetTransformer}


def build_model(name: str, *, max_atoms: int, volume_per_atom: float | None, **options) -> nn.Module:
    """Build ``"mlp"``, ``"transformer"`` or a model of your own, ``"package.module:Class"`` (module
    docstring); ``ValueError`` listing the names for anything else.

    ``options`` go to the model's constructor (e.g. ``layers=2`` for the MLP)."""
    if ":" in name:
        return import_object(name)(max_atoms, volume_per_atom, **options)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}, or 'package.module:Class'")
    return MODELS[name](max_atoms, volume_per_atom, **options)


def import_object(spec: str):
    """``"package.module:Name"`` → the object; ``ValueError`` naming the spec when it cannot be found."""
    import importlib

    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"model: expected 'package.module:Class', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model: cannot import {spec!r} ({err})") from err
