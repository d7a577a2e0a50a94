"""The registry of losses: :func:`get_loss` builds a loss by name, :func:`register_loss` adds one,
:func:`available_losses` lists the names.

Names are checked when the loss is built (unknown name or option: ``ValueError`` listing the valid
ones), never at the first call. Losses come from two places: classes decorated with
:func:`register_loss` (the library's own), and the entry-point group ``soft_niggli.losses``
(:data:`ENTRY_POINT_GROUP`) of any installed distribution (name = loss name, value =
``"module:Class"``, a :class:`~soft_niggli.losses.base.CrystalLoss` subclass), loaded the first time
:func:`get_loss` asks for that name. The baseline ``"proxy-spglib"``
(``soft_niggli.baselines.spglib_proxy``) is registered that way, so other packages can add
strategies exactly as it does. An entry point whose name is already registered to another class (a
built-in loss, say) is ignored, with a warning naming the entry point and the name.
"""

from __future__ import annotations

import functools
import importlib.metadata
import warnings
from typing import Callable

from .base import CrystalLoss

__all__ = ["ENTRY_POINT_GROUP", "register_loss", "get_loss", "available_losses"]

#: Entry-point group through which installed packages add losses (name = loss name, value = class).
ENTRY_POINT_GROUP = "soft_niggli.losses"

_REGISTRY: dict[str, type["CrystalLoss"]] = {}


def register_loss(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`CrystalLoss` subclass buildable as ``get_loss(name, ...)``.

    Its options are the keyword-only arguments of its ``__init__``. Registering a different class under
    a taken name raises ``ValueError``; re-registering the same class (a module reload) replaces it.
    Packages outside the library can use this or, without importing anything at start-up, the
    entry-point group :data:`ENTRY_POINT_GROUP`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty str, got {name!r}")

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, CrystalLoss)):
            raise TypeError(f"register_loss({name!r}): expected a CrystalLoss subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"loss name {name!r}: already registered to "
                             f"{existing.__module__}.{existing.__qualname__}, got {cls.__module__}.{cls.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Losses declared by installed distributions, by name (read each time: installs can change).

    An entry point whose name is registered to another class is left out, with a warning: the
    registered loss keeps the name (a plugin cannot silently replace a built-in loss, nor be silently
    ignored)."""
    found = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        taken = _REGISTRY.get(entry_point.name)
        if taken is not None and (entry_point.module, entry_point.attr) != (taken.__module__, taken.__qualname__):
            _warn_shadowed(entry_point, taken)
            continue
        found[entry_point.name] = entry_point
    return found


def _warn_shadowed(entry_point: importlib.metadata.EntryPoint, taken: type) -> None:
    dist = getattr(entry_point, "dist", None)
    origin = f" of the distribution {dist.name!r}" if dist is not None else ""
    warnings.warn(
        f"soft_niggli: the entry point {entry_point.name} = {entry_point.value!r}{origin} (group "
        f"{ENTRY_POINT_GROUP!r}) declares the loss {entry_point.name!r}, a name already registered to "
        f"{taken.__module__}.{taken.__qualname__}; get_loss({entry_point.name!r}) builds that one and the "
        f"entry point is ignored. Rename the plugin's loss.",
        UserWarning, stacklevel=2)


@functools.lru_cache(maxsize=None)
def _check_entry_points_once() -> None:
    """Reads the entry points once per process for :func:`get_loss` of a registered name, so that a
    plugin shadowed by it warns (reading them costs milliseconds: not on every call)."""
    _entry_points()


def available_losses() -> tuple[str, ...]:
    """Sorted names accepted by :func:`get_loss`: registered losses and those declared in the
    :data:`ENTRY_POINT_GROUP` entry points of installed packages (not imported until asked for)."""
    return tuple(sorted(set(_REGISTRY) | set(_entry_points())))


def _load_entry_point(name: str) -> None:
    entry_point = _entry_points().get(name)
    if entry_point is None:
        return
    try:
        cls = entry_point.load()
    except ImportError as err:
        raise ValueError(f"loss {name!r} is declared by the entry point {entry_point.value!r}, which could not be "
                         f"imported ({err}); built-in losses: {', '.join(sorted(_REGISTRY))}") from err
    if _REGISTRY.get(name) is not cls:
        register_loss(name)(cls)


def get_loss(name: str, **options) -> "CrystalLoss":
    """Build the loss registered as ``name`` with keyword ``options``.

    >>> get_loss("proxy", lattice_metric="gram", fallback="skip")  # doctest: +ELLIPSIS
    NiggliProxyLoss(...)

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: for an unknown name (listing the valid names), an unknown option (listing the
            valid options), or an invalid option value (naming what was expected).
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, one of {available_losses()}, got {type(name).__name__}")
    if name not in _REGISTRY:
        _load_entry_point(name)
    else:
        _check_entry_points_once()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(available_losses())}")
    valid = cls.option_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"loss {name!r}: unknown option(s) {', '.join(unknown)}; "
                         f"valid options: {', '.join(valid) if valid else 'none'}")
    return cls(**options)
