"""The small real-crystal sets that ship inside the package (``soft_niggli/data/<name>.csv.gz``, with a
``NOTICE`` naming the sources and licences): :func:`bundled_path` finds their files.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._folders import BUNDLED

# The package holding data/: this module's own package is soft_niggli.datasets.
_PACKAGE = "soft_niggli"


def bundled_path(name: str) -> Path:
    """The file of a bundled dataset (:data:`BUNDLED`): ``soft_niggli/data/<name>.csv.gz``, CDVAE CSV format.

    Found through :mod:`importlib.resources`, wherever the package is installed. The sources and
    licences are in ``soft_niggli/data/NOTICE``.

    >>> bundled_path("perov_5_small").name
    'perov_5_small.csv.gz'

    Raises:
        TypeError: ``name`` not a str.
        ValueError: ``name`` not one of :data:`BUNDLED`.
        FileNotFoundError: the file is missing from this installation (a build that left out the package
            data), or the package is installed in a form without files (a zip).
    """
    import importlib.resources

    if not isinstance(name, str):
        raise TypeError(f"name: expected one of {BUNDLED} (a str), got {type(name).__name__} {name!r}")
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled dataset {name!r}; bundled: {', '.join(BUNDLED)}")
    resource = importlib.resources.files(_PACKAGE).joinpath("data", f"{name}.csv.gz")
    path = Path(os.fspath(resource)) if isinstance(resource, os.PathLike) else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"the bundled dataset {name!r} ({resource}) is missing from this installation of "
                                "soft_niggli: reinstall it (the wheel carries soft_niggli/data/*.csv.gz)")
    return path
