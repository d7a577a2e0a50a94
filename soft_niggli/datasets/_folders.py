"""Dataset names, and the data folder that the folder datasets are read from.

The installed library never looks for data relative to its own files: the folder is ``data_dir=`` or
``$SOFT_NIGGLI_DATA`` (:func:`resolve_data_dir`), holding ``<name>/<split>.csv.gz`` (:func:`split_files`).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Datasets read from a data folder (``<data_dir>/<name>/{train,val,test}.csv[.gz]``, CDVAE/DiffCSP CSV
#: files); ``mp_20_biternary`` is MP-20 restricted to binary and ternary compounds.
FOLDER_DATASETS = ("mp_20", "perov_5", "carbon_24", "mpts_52", "mp_20_biternary")
#: Small real-crystal sets that ship inside the package (``soft_niggli/data/<name>.csv.gz``, see its NOTICE).
BUNDLED = ("perov_5_small", "carbon_24_small")
#: Names accepted by :func:`load_dataset`: ``"aflow"`` (bundled with pymatgen), the folder datasets, the
#: bundled ones.
DATASETS = ("aflow", *FOLDER_DATASETS, *BUNDLED)
#: Splits accepted by :func:`load_dataset`.
SPLITS = ("train", "val", "test", "all")

#: Environment variable naming the data folder when no ``data_dir`` is passed.
DATA_ENV = "SOFT_NIGGLI_DATA"

#: The files a data folder holds, as the error messages describe them.
EXPECTED_FILES = ("<data_dir>/<name>/train.csv.gz, val.csv.gz and/or test.csv.gz (or .csv; the CDVAE/DiffCSP CSV "
                  "files, one CIF per row in a 'cif' column; <name> one of " + ", ".join(FOLDER_DATASETS) + ")")


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding ``<name>/<split>.csv.gz``: ``path`` if given, else ``$SOFT_NIGGLI_DATA``.

    Nothing else: the installed library never guesses a folder relative to its own files.

    Raises:
        FileNotFoundError: neither is given, or the folder does not exist; the message names both ways
            to give it and the files expected inside.
        TypeError: ``path`` is not a str or path-like.
    """
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"data_dir: expected a str or os.PathLike folder, or None, got {type(path).__name__} {path!r}")
    how = (f"pass data_dir=... or set the environment variable {DATA_ENV} to a folder holding {EXPECTED_FILES}; "
           "or use a dataset that needs no folder: " + ", ".join(repr(n) for n in BUNDLED)
           + " (real crystals shipped with soft_niggli) or 'aflow' (bundled with pymatgen)")
    if path is not None:
        folder, source = Path(path).expanduser(), "data_dir"
    elif os.environ.get(DATA_ENV):
        folder, source = Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"
    else:
        raise FileNotFoundError(f"no data folder given: {how}")
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} (from {source}) does not exist: {how}")
    return folder


def split_files(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The files of folder dataset ``name``: ``{split: path}`` for each of ``train``, ``val``, ``test``
    present as ``<data_dir>/<name>/<split>.csv.gz`` or ``.csv`` (the compressed one where both exist).

    Raises:
        FileNotFoundError: the folder holds none of them (the message lists what was looked for).
    """
    folder = resolve_data_dir(data_dir) / name
    present = {}
    for split in ("train", "val", "test"):
        for suffix in (".csv.gz", ".csv"):
            path = folder / f"{split}{suffix}"
            if path.is_file():
                present[split] = path
                break
    if not present:
        raise FileNotFoundError(f"dataset {name!r}: none of train, val, test (.csv.gz or .csv) exists in {folder} "
                                f"(expected {EXPECTED_FILES})")
    return present

