"""Claim kinds: what each kind of claim measures, as :class:`~circuit.statistics.Evidence`.

``KINDS`` maps every kind named in :data:`circuit.claims.KIND_SCHEMAS` to the function that
turns a claim and a subject (model x dataset) into its checks' evidence.
"""

from collections.abc import Callable, Mapping
from types import MappingProxyType

from circuit.claims import Claim
from circuit.kinds import query_influencers, value_position, word_movers
from circuit.kinds.measurements import Subject
from circuit.statistics import Evidence

EvidenceFn = Callable[[Claim, Subject], list[Evidence]]

KINDS: Mapping[str, EvidenceFn] = MappingProxyType(
    {
        "word-movers": word_movers.evidence,
        "value-position": value_position.evidence,
        "query-influencers": query_influencers.evidence,
    }
)


def evidence_for(claim: Claim, subject: Subject) -> list[Evidence]:
    """Every check of ``claim`` measured on ``subject``."""
    return KINDS[claim.kind](claim, subject)
