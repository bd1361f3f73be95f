"""Measure every claim case of a run first, then judge them together.

Benjamini-Hochberg makes each verdict depend on every p-value of the run, so verdicts are
final only once all cases are measured: :func:`measure_case` measures one case (intervals
and uncorrected p-values); :func:`judge_run` corrects across all of them and applies the
rule, producing one :class:`~circuit.reports.ClaimRecord` per case.
"""

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from circuit import ablation, attribution, metrics, patching, paths
from circuit.claims import ClaimCase
from circuit.engine import forward, kernels, lowrank, memory, weights
from circuit.kinds import KINDS
from circuit.kinds import measurements as measurement_code
from circuit.kinds.measurements import Subject
from circuit.kinds.rankings import top_heads
from circuit.measurement_store import (
    MeasurementStore,
    SubjectKey,
    model_fingerprint,
    source_digest,
    tensor_digest,
)
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
    top_heads: tuple[str, ...] = ()
    """The model's top heads by the kind's own measure, as many as the claim names."""
    dataset_digest: str = ""
    """A digest of the dataset's tokens and answers (what the numbers were measured on)."""


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
    kind = KINDS[case.claim.kind]
    top: tuple[str, ...] = ()
    if kind.rank_heads is not None:
        scores = kind.rank_heads(case.claim, subject)
        top = top_heads(scores, len(case.claim.primary_heads), subject.n_heads)
    data = subject.dataset
    digest = tensor_digest([data.clean_tokens, data.corrupted_tokens, data.answers])
    return MeasuredCase(
        case,
        settings,
        checks,
        n_prompts=len(data),
        draws=draws,
        top_heads=top,
        dataset_digest=digest,
    )


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
            top_heads=m.top_heads,
            dataset_digest=m.dataset_digest,
        )
        for index, m in enumerate(measured)
    ]


def _subject_name(case: ClaimCase) -> str:
    recipe = case.dataset
    return (
        f"{case.model}@{case.revision}/{recipe.family}/{case.variant}/{recipe.seed}/"
        f"{recipe.n_pairs}"
    )


@dataclass(frozen=True)
class CaseEvidence:
    """What a report's figures read for one measured case: its subject (model, dataset and the
    measurement store) and each check's bootstrap replicates and null draws."""

    subject: "Subject"
    draws: tuple[Draws, ...]


def judge_cases(
    cases: Sequence[ClaimCase],
    models: ModelCache,
    store: MeasurementStore,
    progress: Callable[[str], None] | None = None,
    keep: dict[tuple, CaseEvidence] | None = None,
    seconds: dict[str, float] | None = None,
) -> dict[tuple, ClaimRecord]:
    """Measure every case (:func:`measure_cases`) and judge them together
    (:func:`judge_run`): case key -> record."""
    measured = measure_cases(cases, models, store, progress, keep, seconds)
    return records_by_key(measured)


def records_by_key(measured: Sequence[MeasuredCase]) -> dict[tuple, ClaimRecord]:
    """:func:`judge_run` over ``measured``, keyed by each case's key."""
    records = judge_run(measured)
    return {m.case.key: record for m, record in zip(measured, records, strict=True)}


def measure_cases(
    cases: Sequence[ClaimCase],
    models: ModelCache,
    store: MeasurementStore,
    progress: Callable[[str], None] | None = None,
    keep: dict[tuple, CaseEvidence] | None = None,
    seconds: dict[str, float] | None = None,
    take: Callable[[int], bool] | None = None,
) -> list[MeasuredCase]:
    """Measure every case (one dataset per model x revision x variant), in the order given;
    with ``keep``, also fill it with each measured case's :class:`CaseEvidence` (for
    figures); with ``seconds``, the time spent on each ``model@revision``; with ``take``,
    only the cases ``take(index)`` grants, asked just before each would be measured (a
    pytest-xdist worker's share, :func:`circuit.pipeline.distributed.take`).

    Cases are measured grouped by model and revision, each group's model loaded once and
    released before the next loads (unless ``keep`` holds on to its subjects). A case that
    cannot be measured (unavailable model, a dataset its filter empties, a normalised metric
    undefined on random weights, ...) becomes an ERROR record with the reason; it never
    passes.
    """
    if progress is not None and cases:
        progress(f"measuring {len(cases)} claim case(s), then judging them together")
    measured: dict[int, MeasuredCase] = {}
    groups: dict[tuple[str, str | None], list[int]] = {}
    for index, case in enumerate(cases):
        groups.setdefault((case.model, case.revision), []).append(index)
    for (model, revision), indices in groups.items():
        start = time.perf_counter()
        subjects: dict[tuple, Subject | str] = {}
        for index in _taken(indices, cases, subjects, take):
            case = cases[index]
            measured[index] = _measure_in_group(case, models, store, subjects, keep, progress)
        if not subjects:
            continue
        subjects.clear()
        if keep is None:
            models.release()
        if seconds is not None:
            seconds[f"{model}@{revision or 'default'}"] = time.perf_counter() - start
    return [measured[i] for i in sorted(measured)]


def _taken(
    indices: Sequence[int],
    cases: Sequence[ClaimCase],
    subjects: Mapping[tuple, object],
    take: Callable[[int], bool] | None,
) -> Iterator[int]:
    """The cases of one model x revision this process measures, in order.

    Serially, all of them in the run's order. With ``take`` (a pytest-xdist worker), the
    next case is the first one not yet taken whose subject this worker has already built
    (its dataset and shared sweeps are in this worker's store), else the first one not yet
    taken: workers that start on different subjects keep to them instead of building each
    other's.
    """
    if take is None:
        yield from indices
        return
    pending = list(indices)
    while pending:
        built = [i for i in pending if _subject_key(cases[i]) in subjects]
        for index in built + [i for i in pending if i not in built]:
            pending.remove(index)
            if take(index):
                yield index
                break


def _subject_key(case: ClaimCase) -> tuple:
    recipe = case.dataset
    return (case.model, case.revision, recipe.family, case.variant, recipe.seed, recipe.n_pairs)


def _measure_in_group(
    case: ClaimCase,
    models: ModelCache,
    store: MeasurementStore,
    subjects: dict[tuple, Subject | str],
    keep: dict[tuple, CaseEvidence] | None,
    progress: Callable[[str], None] | None,
) -> MeasuredCase:
    """One case, its subject built once per model x revision x variant (in ``subjects``)."""
    settings = case.file.verdict
    key = _subject_key(case)
    if key not in subjects:
        subjects[key] = built = subject_for(case, models, store)
        if progress is not None and not isinstance(built, str):
            progress(f"dataset {case.variant} on {case.model}: {len(built.dataset)} prompts")
    subject = subjects[key]
    if isinstance(subject, str):
        return failed_case(case, settings, subject)
    try:
        result = measure_case(case, subject, settings, keep_draws=keep is not None)
    except ValueError as exc:  # MetricError, DatasetError, guard errors of the engine
        return failed_case(case, settings, f"{type(exc).__name__}: {exc}")
    if keep is not None:
        keep[case.key] = CaseEvidence(subject, result.draws)
    return result


def subject_for(case: ClaimCase, models: ModelCache, store: MeasurementStore) -> Subject | str:
    """The model x dataset a case is measured on, or why it cannot be built (a string)."""
    model = models.get(case.model, case.revision)
    if model is None:
        return models.unavailable_reason(case.model, case.revision) or "model unavailable"
    recipe = case.dataset
    overrides = {} if recipe.n_pairs is None else {"n_pairs": recipe.n_pairs}
    if recipe.family != "study":
        overrides["family"] = recipe.family
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
        family=recipe.family,
    )
    return Subject(model, dataset, key, store, subject_fingerprint(model, dataset, store))


def subject_fingerprint(model, dataset, store: MeasurementStore) -> str:
    """Weights, dataset and measuring code: only computed when a disk cache is used."""
    if store.cache_dir is None:
        return ""
    engine = [ablation, attribution, patching, paths, forward, kernels, lowrank, memory, weights]
    data = tensor_digest([dataset.clean_tokens, dataset.corrupted_tokens, dataset.answers])
    roles = ",".join(f"{k}={v}" for k, v in sorted(dataset.roles.items()))
    code = source_digest([measurement_code, metrics, *engine])
    return f"{model_fingerprint(model)}:{data}:{roles}:{code}"
