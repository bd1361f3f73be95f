"""Measure every claim case of a run first, then judge them together.

Benjamini-Hochberg makes each verdict depend on every p-value of the run, so verdicts are
final only once all cases are measured: :func:`measure_case` measures one case (intervals
and uncorrected p-values); :func:`judge_run` corrects across all of them and applies the
rule, producing one :class:`~circuit.reports.ClaimRecord` per case.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from circuit.claims import ClaimCase
from circuit.kinds import evidence_for
from circuit.kinds.measurements import Subject
from circuit.reports import ClaimRecord
from circuit.statistics import (
    Draws,
    Judgement,
    Measured,
    VerdictSettings,
    correct_pooled,
    measure_with_draws,
    verdict_of,
)


@dataclass(frozen=True)
class MeasuredCase:
    """One case's checks before correction, or why it could not be measured."""

    case: ClaimCase
    settings: VerdictSettings
    checks: tuple[Measured, ...] = ()
    error: str | None = None
    n_prompts: int = 0
    draws: tuple[Draws, ...] = ()
    """Each check's bootstrap replicates and null draws (only with ``keep_draws``)."""


def measure_case(
    case: ClaimCase, subject: Subject, settings: VerdictSettings, keep_draws: bool = False
) -> MeasuredCase:
    """Every check of ``case`` on ``subject``: statistic, interval, uncorrected p; with
    ``keep_draws`` also the draws behind them (for figures; the numbers are the same)."""
    identity = (case.claim.id, case.claim.kind, case.variant)
    pairs = [
        measure_with_draws(evidence, settings, *identity)
        for evidence in evidence_for(case.claim, subject, settings)
    ]
    checks = tuple(measured for measured, _ in pairs)
    draws = tuple(d for _, d in pairs) if keep_draws else ()
    return MeasuredCase(case, settings, checks, n_prompts=len(subject.dataset), draws=draws)


def failed_case(case: ClaimCase, settings: VerdictSettings, error: str) -> MeasuredCase:
    """A case that could not be measured (its record will say ERROR and why)."""
    return MeasuredCase(case, settings, error=error)


def judge_run(measured: Sequence[MeasuredCase]) -> list[ClaimRecord]:
    """BH across every check of every measured case, then the verdict rule per check.

    Checks that measure one shared quantity of one subject (the gap, carried by every claim
    on a model x revision x dataset) enter the correction once.
    """
    flat = [(i, check) for i, m in enumerate(measured) for check in m.checks]
    subjects = [_subject_name(measured[i].case) for i, _ in flat]
    adjusted = correct_pooled([check for _, check in flat], *subjects)
    judged: dict[int, list[Judgement]] = {}
    for (index, check), p in zip(flat, adjusted, strict=True):
        alpha = measured[index].settings.alpha
        verdict = verdict_of(check, float(p), alpha)
        judged.setdefault(index, []).append(Judgement(check, float(p), alpha, verdict))
    return [
        ClaimRecord(
            test_id=m.case.test_id,
            claim_id=m.case.claim.id,
            kind=m.case.claim.kind,
            model=m.case.model,
            revision=m.case.revision,
            variant=m.case.variant,
            claim_file=str(m.case.file.path),
            heads=tuple(str(h) for h in m.case.claim.primary_heads),
            checks=tuple(judged.get(index, ())),
            error=m.error,
            n_prompts=m.n_prompts,
        )
        for index, m in enumerate(measured)
    ]


def _subject_name(case: ClaimCase) -> str:
    recipe = case.file.dataset
    return f"{case.model}@{case.revision}/{case.variant}/{recipe.seed}/{recipe.n_pairs}"
