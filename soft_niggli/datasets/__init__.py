"""Crystal datasets: the CDVAE/DiffCSP CSV format, and a default set that ships with pymatgen.

Row convention: every structure's lattice matrix (``structure.lattice.matrix``) has the lattice
vectors a, b, c as rows, as in pymatgen and the rest of soft_niggli; Cartesian positions are
``X = F @ L``. Cells are returned *as stored* (not Niggli-reduced): choosing a basis is the caller's
business (see ``benchmarks/ablation.py``).

Two sources:

* :func:`read_cdvae_csv` reads the CSV files published with CDVAE and DiffCSP (one CIF per row in
  the ``cif`` column, gzipped or not). Parsing CIFs is slow (it dominates reading a dataset), so the
  parsed structures are cached, in compact JSON (lattice, atomic numbers, fractional coordinates,
  ``material_id``), under ``$SOFT_NIGGLI_CACHE`` or else ``$XDG_CACHE_HOME/soft_niggli`` or else
  ``~/.cache/soft_niggli``, keyed by the file's absolute path, size and modification time, never in
  the repository.
* ``"mp_20"``, ``"perov_5"``, ``"carbon_24"``, ``"mpts_52"``: those CSV files, in a data folder that
  the caller names: ``data_dir=`` or the environment variable ``SOFT_NIGGLI_DATA``
  (:func:`resolve_data_dir`), holding ``<name>/train.csv.gz`` and/or ``<name>/val.csv.gz``. The library
  never looks for data relative to its own files.
* ``"perov_5_small"``, ``"carbon_24_small"`` (:data:`BUNDLED`): real crystals that ship inside this
  package (``soft_niggli/data/``, :func:`bundled_path`): 500 rows of Perov-5's and 300 of Carbon-24's
  validation files, a seeded random sample in the same CSV format, with a ``NOTICE`` naming the
  sources and licences (CDVAE's files, MIT; Castelli et al. 2012; Pickard 2020). They need no data
  folder, so they are the default data of the examples and of the ablation benchmark; each is one
  file, split 80/20 by :func:`train_val_split`.
* ``"aflow"``: the 288 AFLOW prototype structures bundled with pymatgen
  (``pymatgen/analysis/prototypes/aflow_prototypes.json.gz``), of which the 250 ordered ones with at
  most 20 atoms are kept. It needs nothing but an installed pymatgen.

:func:`load_dataset` resolves a name to structures and a split; :func:`train_val_split` is the
deterministic split used where a benchmark ships a single file.

For tools of your own: :func:`open_csv` streams the rows of such a CSV file (every column, duplicate
names too, each row with its line in the file, malformed rows flagged rather than fatal; the reader of
``soft-niggli canonicalize``), and :func:`cif_cell_parameters` reads a CIF's six cell parameters
without pymatgen.

pymatgen is an optional dependency of soft_niggli: it is imported inside the functions that need it.

Outputs are pymatgen ``Structure`` lists, or torch tensors (:func:`read_cdvae_cells`), never NumPy
arrays. Wrong argument types (a float or a bool for ``limit``, a number for ``name``) raise
``TypeError``, wrong values (unknown names, negative counts) ``ValueError``, missing files
``FileNotFoundError``.

>>> train = load_dataset("perov_5_small", split="train")      # doctest: +SKIP
>>> len(train), len(load_dataset("perov_5_small", split="val"))  # doctest: +SKIP
(400, 100)
"""

from ._aflow import read_aflow_prototypes
from ._bundled import bundled_path
from ._cache import cache_dir
from ._cdvae import cif_cell_parameters, read_cdvae_cells, read_cdvae_csv
from ._csv import CsvRow, CsvRows, open_csv
from ._folders import BUNDLED, DATA_ENV, DATASETS, FOLDER_DATASETS, SPLITS, resolve_data_dir, split_files
from ._splits import load_dataset, split_source, train_val_split

__all__ = [
    "DATASETS",
    "BUNDLED",
    "FOLDER_DATASETS",
    "SPLITS",
    "DATA_ENV",
    "cache_dir",
    "resolve_data_dir",
    "read_cdvae_csv",
    "read_cdvae_cells",
    "read_aflow_prototypes",
    "bundled_path",
    "train_val_split",
    "load_dataset",
    "split_files",
    "split_source",
    "open_csv",
    "CsvRows",
    "CsvRow",
    "cif_cell_parameters",
]
