"""Names importable from a module other than the one that defines them: a module ``__getattr__`` that
finds each where it lives and says so once.

Usage, at the end of a module's imports::

    __getattr__ = moved_names(__name__, {"old_name": "package.module:new_name"})
"""

from __future__ import annotations

import importlib
import warnings


def moved_names(module: str, places: dict[str, str]):
    """A module-level ``__getattr__`` for ``module``: ``places`` maps a name to ``"module.path:name"``,
    where it is defined. The first lookup of each name warns (``DeprecationWarning`` naming that place);
    every lookup returns the object found there. Other names raise ``AttributeError`` as usual."""
    warned: set[str] = set()

    def __getattr__(name: str):
        place = places.get(name)
        if place is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        path, _, attribute = place.partition(":")
        if name not in warned:
            warned.add(name)
            warnings.warn(f"{module}.{name} is {path}.{attribute}: import it from there", DeprecationWarning,
                          stacklevel=2)
        return getattr(importlib.import_module(path), attribute)

    return __getattr__
