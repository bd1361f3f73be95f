"""Claim kinds: what each kind of claim states and measures.

Every module of this package that defines ``KIND`` (a :class:`~circuit.kinds.base.ClaimKind`)
is a kind; :data:`KINDS` maps each kind's name to it. A claim whose kind is not here is an
error when its file is parsed, never a silent skip.
"""

import importlib
import pkgutil
from collections.abc import Mapping
from types import MappingProxyType

from circuit.kinds.base import ClaimKind


def _registered() -> dict[str, ClaimKind]:
    """Every ``KIND`` defined by a module of this package, by name (names must be unique)."""
    found: dict[str, ClaimKind] = {}
    for info in sorted(pkgutil.iter_modules(__path__, f"{__name__}."), key=lambda i: i.name):
        kind = getattr(importlib.import_module(info.name), "KIND", None)
        if not isinstance(kind, ClaimKind):
            continue
        if kind.name in found:
            raise RuntimeError(f"claim kind {kind.name!r} is defined twice (in {info.name})")
        found[kind.name] = kind
    return found


KINDS: Mapping[str, ClaimKind] = MappingProxyType(_registered())
"""Kind name -> :class:`~circuit.kinds.base.ClaimKind`, for every kind module."""
