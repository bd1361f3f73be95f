"""Verdict table and JSON report from judged records."""

import dataclasses
import json

import numpy as np
import pytest

from circuit.reports import (
    ERROR,
    TABLE_HEADERS,
    ClaimRecord,
    json_report,
    verdict_table,
    write_json_report,
)
from circuit.statistics import Judgement, Measured, Side, Verdict


def _judgement(check: str, low: float, high: float, p: float, verdict: Verdict) -> Judgement:
    measured = Measured(
        check, (low + high) / 2, low, high, 0.5, Side.AT_LEAST, p, "null", 0.1, 20, ""
    )
    return Judgement(measured, min(1.0, 2 * p), 0.05, verdict)


def _record(checks, error=None, variant="heldout") -> ClaimRecord:
    return ClaimRecord(
        test_id=f"word-movers[L1H0]-{variant}",
        claim_id="word-movers",
        kind="word-movers",
        model="bundled",
        revision=None,
        variant=variant,
        claim_file="claims/bundled.toml",
        heads=("L1H0",),
        checks=tuple(checks),
        error=error,
        n_prompts=20,
    )


CONFIRMED = _judgement("share", 0.6, 0.8, 0.001, Verdict.CONFIRMED)
INCONCLUSIVE = _judgement("top-2", 0.4, 0.8, 0.002, Verdict.INCONCLUSIVE)
REFUTED = _judgement("share", 0.1, 0.2, 0.9, Verdict.REFUTED)


def test_claim_outcome_is_the_worst_check_and_only_confirmed_passes():
    assert _record([CONFIRMED]).passed
    mixed = _record([CONFIRMED, INCONCLUSIVE])
    assert mixed.outcome == "INCONCLUSIVE"
    assert not mixed.passed
    assert mixed.deciding() is INCONCLUSIVE
    assert _record([CONFIRMED, REFUTED, INCONCLUSIVE]).outcome == "REFUTED"
    assert _record([], error="dataset emptied").outcome == ERROR


def test_failure_message_shows_numbers_and_what_was_needed():
    message = _record([CONFIRMED, REFUTED]).failure_message()
    assert "REFUTED" in message
    assert "[0.1, 0.2]" in message
    assert ">= 0.5" in message
    assert "p = 0.9" in message
    assert "needed" in message
    assert "could not be measured: boom" in _record([], error="boom").failure_message()


def test_verdict_table_has_every_column_and_a_row_per_check():
    table = verdict_table([_record([CONFIRMED, INCONCLUSIVE]), _record([], "x", "unfiltered")])
    lines = table.splitlines()
    for header in TABLE_HEADERS:
        assert header in lines[0]
    assert len(lines) == 2 + 3
    assert "word-movers[L1H0]-heldout" in lines[2]
    assert "INCONCLUSIVE" in lines[2]
    assert "[0.6, 0.8]" in table
    assert ERROR in lines[-1]


def test_json_report_is_strict_json_with_one_record_per_case(tmp_path):
    nan = _judgement("share", float("nan"), float("nan"), 1.0, Verdict.INCONCLUSIVE)
    records = [_record([CONFIRMED]), _record([nan], variant="unfiltered")]
    path = write_json_report(tmp_path / "out" / "claims.json", records, {"torch": "x"})
    report = json.loads(path.read_text())
    assert report == json_report(records, {"torch": "x"})
    assert report["environment"] == {"torch": "x"}
    first, second = report["records"]
    for key in (
        "id",
        "kind",
        "model",
        "revision",
        "variant",
        "statistic",
        "interval",
        "threshold",
        "p",
        "corrected_p",
        "verdict",
    ):
        assert key in first
    assert first["verdict"] == "CONFIRMED"
    assert first["interval"] == [0.6, 0.8]
    assert second["interval"] == [None, None]
    assert np.isclose(first["corrected_p"], 0.002)


def test_compact_table_fits_100_columns_and_auto_picks_by_width():
    long_name = "value-position[L3H6,L3H0,L3H4,L1H1]-unfiltered"
    records = [dataclasses.replace(_record([CONFIRMED, INCONCLUSIVE]), test_id=long_name)]
    compact = verdict_table(records, layout="compact")
    assert max(len(line) for line in compact.splitlines()) <= 100
    assert "(claim)" in compact
    full = verdict_table(records, layout="full")
    assert verdict_table(records, layout="auto", width=400) == full
    assert verdict_table(records, layout="auto", width=80) == compact
    with pytest.raises(ValueError, match="layout"):
        verdict_table(records, layout="wide")
