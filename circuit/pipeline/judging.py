"""Measure every claim case of a run first, then judge them together.

Benjamini-Hochberg makes each verdict depend on every p-value of the run, so verdicts are
final only once all cases are measured: :func:`measure_case` measures one case (intervals
and uncorrected p-values); :func:`judge_run` corrects across all of them and applies the
rule, producing one :class:`~circuit.reports.ClaimRecord` per case.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from circuit import ablation, attribution, metrics, patching, paths
from circuit.claims import ClaimCase
from circuit.engine import forward, kernels, lowrank, memory, weights
from circuit.kinds import KINDS
from circuit.kinds import measurements as measurement_code
from circuit.kinds.measurements import Subject
from circuit.pipeline.model_cache import ModelCache
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
from circuit.sweeps import SubjectKey, SweepStore, model_fingerprint, source_digest, tensor_digest
from circuit.syllogisms import DatasetError, build_dataset


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
        for evidence in KINDS[case.claim.kind].evidence(case.claim, subject, settings)
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


@dataclass(frozen=True)
class CaseEvidence:
    """What a report's figures read for one measured case: its subject (model, dataset and the
    sweep store) and each check's bootstrap replicates and null draws."""

    subject: "Subject"
    draws: tuple[Draws, ...]


def judge_cases(
    cases: Sequence[ClaimCase],
    models: ModelCache,
    store: SweepStore,
    progress: Callable[[str], None] | None = None,
    keep: dict[tuple, CaseEvidence] | None = None,
) -> dict[tuple, ClaimRecord]:
    """Measure every case (one dataset per model x variant) and judge them together; with
    ``keep``, also fill it with each measured case's :class:`CaseEvidence` (for figures).

    A case that cannot be measured (unavailable model, a dataset its filter empties, a
    normalised metric undefined on random weights, ...) becomes an ERROR record with the
    reason; it never passes.
    """
    if progress is not None and cases:
        progress(f"measuring {len(cases)} claim case(s), then judging them together")
    measured = []
    subjects: dict[tuple, Subject | str] = {}
    for case in cases:
        settings = case.file.verdict
        recipe = case.file.dataset
        key = (case.model, case.revision, case.variant, recipe.seed, recipe.n_pairs)
        if key not in subjects:
            subjects[key] = subject_for(case, models, store)
            if progress is not None and not isinstance(subjects[key], str):
                size = len(subjects[key].dataset)
                progress(f"dataset {case.variant} on {case.model}: {size} prompts")
        subject = subjects[key]
        if isinstance(subject, str):
            measured.append(failed_case(case, settings, subject))
            continue
        try:
            measured.append(measure_case(case, subject, settings, keep_draws=keep is not None))
            if keep is not None:
                keep[case.key] = CaseEvidence(subject, measured[-1].draws)
        except ValueError as exc:  # MetricError, DatasetError, guard errors of the engine
            measured.append(failed_case(case, settings, f"{type(exc).__name__}: {exc}"))
    records = judge_run(measured)
    return {case.key: record for case, record in zip(cases, records, strict=True)}


def subject_for(case: ClaimCase, models: ModelCache, store: SweepStore) -> Subject | str:
    """The model x dataset a case is measured on, or why it cannot be built (a string)."""
    model = models.get(case.model, case.revision)
    if model is None:
        return models.unavailable_reason(case.model, case.revision) or "model unavailable"
    recipe = case.file.dataset
    overrides = {} if recipe.n_pairs is None else {"n_pairs": recipe.n_pairs}
    try:
        dataset = build_dataset(model, case.variant, seed=recipe.seed, **overrides)
    except DatasetError as exc:
        return f"dataset {case.variant!r} could not be built: {exc}"
    key = SubjectKey(
        model=case.model,
        revision=case.revision,
        dtype=models.dtype,
        device=str(model.cfg.device),
        variant=case.variant,
        seed=recipe.seed,
        n_pairs=recipe.n_pairs,
    )
    return Subject(model, dataset, key, store, _fingerprint(model, dataset, store))


def _fingerprint(model, dataset, store: SweepStore) -> str:
    """Weights, dataset and measuring code: only computed when a disk cache is used."""
    if store.cache_dir is None:
        return ""
    engine = [ablation, attribution, patching, paths, forward, kernels, lowrank, memory, weights]
    data = tensor_digest([dataset.clean_tokens, dataset.corrupted_tokens, dataset.answers])
    roles = ",".join(f"{k}={v}" for k, v in sorted(dataset.roles.items()))
    code = source_digest([measurement_code, metrics, *engine])
    return f"{model_fingerprint(model)}:{data}:{roles}:{code}"
