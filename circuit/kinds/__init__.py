"""Claim kinds: what each kind of claim measures, as :class:`~circuit.statistics.Evidence`.

``KINDS`` maps every kind named in :data:`circuit.claims.KIND_SCHEMAS` to the function that
turns a claim, a subject (model x dataset) and the verdict settings (whose effect-size
floors every kind applies) into its checks' evidence.
"""

from collections.abc import Callable, Mapping
from types import MappingProxyType

from circuit.claims import Claim
from circuit.kinds import (
    minimality,
    necessity,
    query_influencers,
    sufficiency,
    value_position,
    word_movers,
)
from circuit.kinds.measurements import Subject
from circuit.statistics import Evidence, VerdictSettings

EvidenceFn = Callable[[Claim, Subject, VerdictSettings], list[Evidence]]

KINDS: Mapping[str, EvidenceFn] = MappingProxyType(
    {
        "word-movers": word_movers.evidence,
        "value-position": value_position.evidence,
        "query-influencers": query_influencers.evidence,
        "sufficiency": sufficiency.evidence,
        "necessity": necessity.evidence,
        "minimality": minimality.evidence,
    }
)


def evidence_for(claim: Claim, subject: Subject, settings: VerdictSettings) -> list[Evidence]:
    """Every check of ``claim`` measured on ``subject``."""
    return KINDS[claim.kind](claim, subject, settings)
