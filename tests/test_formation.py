"""The claim x revision matrix and the formation report, from synthetic judged records."""

from circuit.formation import formation_json, formation_table, formations, jaccard, matrix_table
from circuit.reports import ClaimRecord
from circuit.statistics import Judgement, Measured, Side, Verdict


def _record(revision: str, verdict: Verdict, statistic: float, top=("L1H0", "L1H1")):
    def judged(check: str, value: float) -> Judgement:
        measured = Measured(
            check=check,
            statistic=value,
            low=value - 0.1,
            high=value + 0.1,
            threshold=0.5,
            side=Side.AT_LEAST,
            p=0.01,
            null_name="null",
            null_median=0.0,
            n_prompts=10,
            unit="",
        )
        return Judgement(measured, 0.01, 0.05, verdict)

    return ClaimRecord(
        test_id=f"movers[L1H0,L1H1]-heldout@{revision}",
        claim_id="movers",
        kind="word-movers",
        model="m",
        revision=revision,
        variant="heldout",
        claim_file="c.toml",
        heads=("L1H0", "L1H1"),
        checks=(judged("gap", 5.0), judged("share", statistic)),
        top_heads=top,
    )


CONFIRMED, REFUTED = Verdict.CONFIRMED, Verdict.REFUTED


def test_first_confirmed_stays_confirmed_and_regressions():
    records = [
        _record("step800", CONFIRMED, 0.8),
        _record("step1", REFUTED, 0.1, top=("L0H0", "L0H1")),
        _record("step100", CONFIRMED, 0.7),
        _record("step400", REFUTED, 0.3),
    ]
    (row,) = formations(records)
    assert [c.revision for c in row.cells] == ["step1", "step100", "step400", "step800"]
    assert row.claim == "movers/heldout"
    assert row.first_confirmed == "step100"
    assert row.stays_confirmed_from == "step800"
    assert row.regressions == (("step100", "step400"),)
    assert [c.statistic for c in row.cells] == [0.1, 0.7, 0.3, 0.8]  # the main check, not gap
    assert [c.jaccard for c in row.cells] == [0.0, 1.0, 1.0, 1.0]
    assert "REFUTED 0.1 [0, 0.2]" in matrix_table([row])
    assert "step100 -> step400" in formation_table([row])
    data = formation_json([row])[0]
    assert data["regressions"] == [{"confirmed_at": "step100", "not_confirmed_at": "step400"}]
    assert data["revisions"][0]["top_heads"] == ["L0H0", "L0H1"]


def test_a_claim_never_confirmed_says_so():
    (row,) = formations([_record("step1", REFUTED, 0.1), _record("step2", REFUTED, 0.2)])
    assert row.first_confirmed is None
    assert row.stays_confirmed_from is None
    assert row.regressions == ()
    assert "never" in formation_table([row])


def test_jaccard():
    assert jaccard(["a", "b"], ["b", "c"]) == 1 / 3
    assert jaccard(["a"], []) is None
