"""What a claim kind is: the fields its claims state and the evidence it measures.

A kind is one module of :mod:`circuit.kinds` that defines ``KIND``, a :class:`ClaimKind`;
the package registers every such module (see :data:`circuit.kinds.KINDS`), so adding a kind
means adding one module (``docs/writing-claims.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from circuit.claims import Claim
    from circuit.kinds.measurements import Subject
    from circuit.statistics import Evidence, VerdictSettings


@dataclass(frozen=True)
class KindSchema:
    """What a claim of one kind must state: head lists, roles and thresholds by name."""

    heads: tuple[str, ...]
    roles: tuple[str, ...]
    thresholds: tuple[str, ...]
    integer_thresholds: tuple[str, ...] = ()
    optional_thresholds: tuple[str, ...] = ()
    """Thresholds whose check runs only when the claim states them."""
    options: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    """Further claim fields (e.g. ``ablation``) and their allowed values; a list value is
    allowed when each of its items is (``positions = ["descriptor"]``)."""
    required_options: tuple[str, ...] = ()


EvidenceFn = Callable[["Claim", "Subject", "VerdictSettings"], "list[Evidence]"]
"""``(claim, subject, settings) -> evidence``: every check of a claim measured on one
model x dataset, before correction (the verdict rule judges it)."""

HeadRanking = Callable[["Claim", "Subject"], "np.ndarray"]
"""``(claim, subject) -> scores [n_layers * n_heads]``: every head scored by the measure the
claim's evidence uses (see :mod:`circuit.kinds.rankings`)."""

ClaimCheck = Callable[["Claim"], "str | None"]
"""Cross-field rules of a kind that need no model: why ``claim`` is malformed, or None."""


def no_further_rules(claim: Claim) -> str | None:
    """The :data:`ClaimCheck` of a kind whose fields need no cross-field rule."""
    return None


@dataclass(frozen=True)
class ClaimKind:
    """One claim kind: its ``name`` (the ``kind`` of a claim file), the fields its claims
    state (``schema``), the rules across those fields (``check``) and what it measures
    (``evidence``), and optionally how every head ranks by that measure (``rank_heads``: for
    the top heads per revision and their Jaccard similarity with the claimed set)."""

    name: str
    schema: KindSchema
    evidence: EvidenceFn
    check: ClaimCheck = no_further_rules
    rank_heads: HeadRanking | None = None
