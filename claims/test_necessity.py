"""necessity claims: one test per claim of this kind x dataset variant.

Parametrised by ``fixtures.plugin`` from the run's claim files; every case is measured and
judged (Benjamini-Hochberg across the run) before any test asserts its verdict.
"""

from circuit.reports import ClaimRecord
from fixtures.plugin import assert_confirmed

CLAIM_KIND = "necessity"


def test_necessity(claim_case, claim_record: ClaimRecord) -> None:
    assert claim_record.kind == CLAIM_KIND
    assert_confirmed(claim_record)
