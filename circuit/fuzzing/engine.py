"""The fuzz engine: judge claims on datasets that hypothesis draws, then shrink a failure.

For each claim file x model x revision of a run, :func:`judge_with_fuzz`

1. draws ``examples`` dataset recipes with :func:`~circuit.fuzzing.strategies.fuzz_recipes`
   (hypothesis, generate phase only, seeded by the file's ``[fuzz] seed``; no example
   database), rejecting and counting draws that fail the dataset checks
   (:func:`~circuit.fuzzing.recipes.build_checked`);
2. measures every fuzzed claim of the file on every drawn dataset (the sweeps of one dataset
   are shared by its claims, as for a built-in variant) with the same code as a regular case
   (:func:`circuit.pipeline.judging.measure_case`);
3. judges the run's regular cases and every fuzz judgement together
   (:func:`circuit.pipeline.judging.judge_run`: Benjamini-Hochberg across all of them, the
   gap of each drawn dataset entering once);
4. for each claim not CONFIRMED on some drawn dataset *whatever the correction* (every check
   has ``min_clusters`` levels and some check's interval misses its threshold or its
   uncorrected p is at least alpha: see :func:`fails`), replays the same draws and lets
   hypothesis shrink the first such dataset, re-judging the claim on each candidate, at most
   ``[fuzz] shrink`` new judgements; the minimal recipe is judged alone (as
   ``python -m circuit fuzz-repro`` judges it) and reported with the words it needs.

A claim is *robust* only if it is CONFIRMED on every drawn dataset.
"""

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import HypothesisException

from circuit.claims import Claim, ClaimCase, ClaimFile
from circuit.dataset import SyllogismDataset
from circuit.fuzzing.pools import Pools, usable_pools
from circuit.fuzzing.recipes import build_checked, recipe_digest
from circuit.fuzzing.strategies import DrawSizes, fuzz_recipes
from circuit.kinds.measurements import Subject
from circuit.measurement_store import MeasurementStore, SubjectKey
from circuit.pipeline.judging import (
    MeasuredCase,
    failed_case,
    judge_run,
    measure_case,
    subject_fingerprint,
)
from circuit.pipeline.model_cache import ModelCache
from circuit.reports import ClaimRecord
from circuit.statistics import MIN_CLUSTERS, VerdictSettings, interval_clears
from circuit.syllogisms import Recipe

MeasureFn = Callable[[ClaimCase, Subject, VerdictSettings], MeasuredCase]
Progress = Callable[[str], None]
OUTCOMES: tuple[str, ...] = ("CONFIRMED", "INCONCLUSIVE", "REFUTED", "ERROR")


@dataclass(frozen=True)
class FuzzTarget:
    """One claim to fuzz, on the model and revision its cases run against."""

    file: ClaimFile
    claim: Claim
    model: str
    revision: str | None
    prefix: str = ""
    examples: int = 0

    @property
    def test_id(self) -> str:
        """E.g. ``word-movers[L3H6,L3H0,L3H4,L1H1]-fuzz``."""
        return f"{self.prefix}{self.claim.label}-fuzz"

    @property
    def key(self) -> tuple[str, str, str | None, str]:
        return (str(self.file.path), self.claim.id, self.revision, self.model)

    def case(self, recipe: Recipe) -> ClaimCase:
        """The claim as a case on a drawn dataset (its variant names the recipe)."""
        variant = f"fuzz-{recipe_digest(recipe)}"
        return ClaimCase(self.file, self.claim, variant, self.model, self.revision, self.prefix)


def targets_for(cases: Sequence[ClaimCase], examples: int) -> list[FuzzTarget]:
    """One target per claim of ``cases`` (in order) that fuzzes: ``examples`` draws, or its
    file's ``[fuzz] examples`` when set; none with 0."""
    targets: dict[tuple, FuzzTarget] = {}
    for case in cases:
        own = case.file.fuzz.examples
        count = examples if own is None else own
        if count <= 0:
            continue
        target = FuzzTarget(case.file, case.claim, case.model, case.revision, case.prefix, count)
        targets.setdefault(target.key, target)
    return list(targets.values())


@dataclass(frozen=True)
class DrawResult:
    """A claim judged on one drawn dataset, within the run's correction."""

    index: int
    recipe: Recipe
    n_prompts: int
    record: ClaimRecord


@dataclass(frozen=True)
class Counterexample:
    """The shrunk failing dataset of a claim, judged alone (as the repro command does)."""

    recipe: Recipe
    record: ClaimRecord
    needed: Mapping[str, tuple[str, ...]]
    judgements: int
    budget_exhausted: bool
    from_draw: int


@dataclass(frozen=True)
class ClaimFuzz:
    """A claim's fuzz result: its verdict on each drawn dataset, and a counterexample."""

    target: FuzzTarget
    seed: int
    draws: tuple[DrawResult, ...] = ()
    rejections: Mapping[str, int] = field(default_factory=dict)
    counterexample: Counterexample | None = None
    note: str = ""

    def counts(self) -> dict[str, int]:
        """Drawn datasets per outcome (CONFIRMED, INCONCLUSIVE, REFUTED, ERROR)."""
        tally = Counter(d.record.outcome for d in self.draws)
        return {outcome: tally.get(outcome, 0) for outcome in OUTCOMES}

    @property
    def robust(self) -> bool:
        """CONFIRMED on every drawn dataset (and at least one was drawn)."""
        return bool(self.draws) and all(d.record.passed for d in self.draws)

    def main_check(self) -> str | None:
        """The check that most often decided a verdict short of CONFIRMED (first in check
        order on a tie); on a robust claim, its first check after the gap (its headline)."""
        order: list[str] = []
        tally: Counter[str] = Counter()
        for draw in self.draws:
            order += [j.measured.check for j in draw.record.checks if j.measured.check not in order]
            deciding = draw.record.deciding()
            if deciding is not None and not draw.record.passed:
                tally[deciding.measured.check] += 1
        if tally:
            return max(order, key=lambda name: (tally[name], -order.index(name)))
        headline = [name for name in order if name != "gap"] or order
        return headline[0] if headline else None

    def main_statistics(self) -> list[float]:
        """The main check's statistic on each drawn dataset that has it."""
        name = self.main_check()
        return [
            j.measured.statistic
            for d in self.draws
            for j in d.record.checks
            if j.measured.check == name
        ]

    def quartiles(self) -> tuple[float, float, float, float, float] | None:
        """Min, lower quartile, median, upper quartile, max of the main statistic."""
        values = [v for v in self.main_statistics() if math.isfinite(v)]
        if not values:
            return None
        q = np.percentile(np.asarray(values), [0, 25, 50, 75, 100])
        return tuple(float(v) for v in q)  # type: ignore[return-value]


@dataclass
class FuzzRun:
    """Every fuzzed claim of a run, in target order."""

    results: dict[tuple, ClaimFuzz] = field(default_factory=dict)
    judgements: int = 0
    shrink_judgements: int = 0
    seconds: float = 0.0


def fails(measured: MeasuredCase) -> bool:
    """Not CONFIRMED in any run that contains it, on a judgeable dataset: every check has
    ``min_clusters`` levels, and some check's interval misses its threshold or its
    uncorrected p is at least alpha (a corrected p is never smaller)."""
    if measured.error is not None or not measured.checks:
        return False
    if not all(check.enough_clusters for check in measured.checks):
        return False
    alpha = measured.settings.alpha
    return any(not interval_clears(c) or not c.p < alpha for c in measured.checks)


def needed_words(recipe: Recipe, pools: Pools) -> dict[str, tuple[str, ...]]:
    """What a shrunk recipe holds beyond the simplest draw of its size: the words of each
    factor outside the first ones of the pool, and the template unless it is the first. The
    shrinker would have replaced these by simpler ones had the failure not needed them."""
    needed: dict[str, tuple[str, ...]] = {}
    factors = {
        "categories": (recipe.words.categories, pools.categories),
        "descriptor_pairs": (
            tuple("/".join(sorted(p)) for p in recipe.words.descriptor_pairs),
            tuple("/".join(sorted(p)) for p in pools.descriptor_pairs),
        ),
        "nouns": (recipe.words.nouns, pools.nouns),
    }
    for name, (drawn, pool) in factors.items():
        simplest = set(pool[: len(drawn)])
        extra = tuple(word for word in drawn if word not in simplest)
        if extra:
            needed[name] = extra
    if pools.templates and recipe.template != pools.templates[0]:
        needed["template"] = (recipe.template,)
    return needed


class _Quiet(Exception):
    """Raised inside a hypothesis probe when the claim fails on the drawn dataset."""


def _hypothesis_settings(examples: int, phases: tuple[Phase, ...]) -> settings:
    """Explicit settings: whatever profile is loaded, a fuzz run is the same run."""
    return settings(
        max_examples=examples,
        phases=phases,
        database=None,
        derandomize=False,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        print_blob=False,
        verbosity=Verbosity.quiet,
    )


class DatasetFuzzer:
    """Draws, builds and judges datasets for the claims of one file on one model."""

    def __init__(
        self,
        model,
        model_name: str,
        revision: str | None,
        store: MeasurementStore,
        dtype: str = "float32",
        seed: int = 0,
        min_clusters: int = MIN_CLUSTERS,
        sizes: DrawSizes | None = None,
        pools: Pools | None = None,
        measure: MeasureFn = measure_case,
    ) -> None:
        self.model = model
        self.model_name = model_name
        self.revision = revision
        self.store = store
        self.dtype = dtype
        self.seed = seed
        self.min_clusters = min_clusters
        words = max(min_clusters, MIN_CLUSTERS)
        self.sizes = sizes or DrawSizes(min_words=words, max_words=words + 2)
        self.pools = pools or usable_pools(model.tokenizer)
        self.measure_fn = measure
        self._datasets: dict[Recipe, SyllogismDataset | str] = {}
        self._subjects: dict[Recipe, Subject] = {}
        self._measured: dict[tuple, MeasuredCase] = {}
        self.judgements = 0

    def strategy(self):
        return fuzz_recipes(self.pools, self.sizes)

    def dataset(self, recipe: Recipe) -> SyllogismDataset | str:
        """The recipe's dataset, or why it is rejected (memoised)."""
        if recipe not in self._datasets:
            self._datasets[recipe] = build_checked(self.model.tokenizer, recipe, self.min_clusters)
        return self._datasets[recipe]

    def subject(self, recipe: Recipe) -> Subject:
        """The model on the recipe's dataset (its sweeps named by the recipe's digest)."""
        if recipe not in self._subjects:
            dataset = self.dataset(recipe)
            assert not isinstance(dataset, str), dataset
            key = SubjectKey(
                model=self.model_name,
                revision=self.revision,
                dtype=self.dtype,
                device=str(self.model.cfg.device),
                variant=f"fuzz-{recipe_digest(recipe)}",
                seed=recipe.seed,
                n_pairs=recipe.n_pairs,
            )
            fingerprint = subject_fingerprint(self.model, dataset, self.store)
            self._subjects[recipe] = Subject(self.model, dataset, key, self.store, fingerprint)
        return self._subjects[recipe]

    def measured(self, target: FuzzTarget, recipe: Recipe) -> MeasuredCase:
        """The target claim measured on the recipe's dataset (memoised)."""
        key = (target.key, recipe)
        if key not in self._measured:
            case = target.case(recipe)
            settings_ = target.file.verdict
            try:
                result = self.measure_fn(case, self.subject(recipe), settings_)
            except ValueError as exc:  # as judge_cases: metric, dataset and guard errors
                result = failed_case(case, settings_, f"{type(exc).__name__}: {exc}")
            self._measured[key] = result
            self.judgements += 1
        return self._measured[key]

    def is_measured(self, target: FuzzTarget, recipe: Recipe) -> bool:
        return (target.key, recipe) in self._measured

    def draw(self, examples: int) -> tuple[list[Recipe], Counter[str]]:
        """Up to ``examples`` distinct recipes that pass the checks, in draw order, and the
        rejected draws by reason."""
        recipes: list[Recipe] = []
        seen: set[Recipe] = set()
        rejections: Counter[str] = Counter()

        @_hypothesis_settings(examples, (Phase.generate,))
        @hypothesis_seed(self.seed)
        @given(self.strategy())
        def probe(recipe: Recipe) -> None:
            built = self.dataset(recipe)
            if isinstance(built, str):
                rejections[built] += 1
                reject()
            if recipe in seen:
                rejections["duplicate"] += 1
                return
            seen.add(recipe)
            recipes.append(recipe)

        with contextlib.suppress(HypothesisException):  # Unsatisfiable: every draw rejected
            probe()
        return recipes, rejections

    def shrink(
        self, target: FuzzTarget, examples: int, budget: int
    ) -> tuple[Recipe | None, int, bool]:
        """Replay the draws until the first that :func:`fails` and let hypothesis shrink it,
        judging at most ``budget`` new candidates. Returns the minimal failing recipe (None if
        the replay found none), the judgements spent and whether the budget ran out."""
        failing: list[Recipe] = []
        spent = 0
        exhausted = False

        @_hypothesis_settings(examples, (Phase.generate, Phase.shrink))
        @hypothesis_seed(self.seed)
        @given(self.strategy())
        def probe(recipe: Recipe) -> None:
            nonlocal spent, exhausted
            if isinstance(self.dataset(recipe), str):
                reject()
            if not self.is_measured(target, recipe):
                if spent >= budget:
                    exhausted = True
                    return  # not judged: counts as not failing
                spent += 1
            if fails(self.measured(target, recipe)):
                failing.append(recipe)
                raise _Quiet

        try:
            probe()
        except _Quiet:
            pass
        except HypothesisException:
            pass
        return (failing[-1] if failing else None), spent, exhausted


def _unjudged(case: ClaimCase, record: ClaimRecord) -> MeasuredCase:
    """A judged regular case back to its measurements (each judgement keeps its uncorrected
    :class:`~circuit.statistics.Measured`), to be judged again in the joint correction."""
    return MeasuredCase(
        case,
        case.file.verdict,
        tuple(j.measured for j in record.checks),
        error=record.error,
        n_prompts=record.n_prompts,
    )


def _describe(recipe: Recipe, pools: Pools) -> str:
    words = recipe.words
    template = pools.templates.index(recipe.template) if recipe.template in pools.templates else -1
    return (
        f"template #{template}, {len(words.categories)} categories, "
        f"{len(words.descriptor_pairs)} pairs, {len(words.nouns)} nouns, "
        f"{recipe.n_pairs} pairs sampled (seed {recipe.seed})"
    )


def judge_with_fuzz(
    cases: Sequence[ClaimCase],
    records: Mapping[tuple, ClaimRecord],
    targets: Sequence[FuzzTarget],
    models: ModelCache,
    store: MeasurementStore,
    progress: Progress | None = None,
    measure: MeasureFn = measure_case,
) -> tuple[dict[tuple, ClaimRecord], FuzzRun]:
    """Measure every target on its drawn datasets and judge them with the run's regular
    ``cases`` (``records``: as :func:`~circuit.pipeline.judging.judge_cases` judged them),
    all in one Benjamini-Hochberg correction; then shrink each failure. Returns the regular
    cases' records re-judged in that correction, and the fuzz results."""
    start = time.perf_counter()
    say = progress or (lambda line: None)
    regular = [_unjudged(case, records[case.key]) for case in cases]
    groups: dict[tuple, list[FuzzTarget]] = {}
    for target in targets:
        groups.setdefault((str(target.file.path), target.model, target.revision), []).append(target)
    drawn: dict[tuple, Counter[str]] = {}
    flat: list[tuple[FuzzTarget, int, Recipe, MeasuredCase]] = []
    notes: dict[tuple, str] = {}
    shrunk: dict[tuple, Counterexample] = {}
    run = FuzzRun()
    for group_key, members in groups.items():
        first = members[0]
        model = models.get(first.model, first.revision)
        if model is None:
            reason = models.unavailable_reason(first.model, first.revision) or "unavailable"
            for target in members:
                notes[target.key] = f"not fuzzed: {reason}"
            continue
        fuzz = first.file.fuzz
        fuzzer = DatasetFuzzer(
            model,
            first.model,
            first.revision,
            store,
            dtype=models.dtype,
            seed=fuzz.seed,
            min_clusters=first.file.verdict.min_clusters,
            measure=measure,
        )
        say(
            f"fuzz {first.file.path.name} on {first.model}: drawing {first.examples} "
            f"dataset(s), seed {fuzz.seed} (pools: {fuzzer.pools.size()})"
        )
        recipes, rejections = fuzzer.draw(first.examples)
        drawn[group_key] = rejections
        rejected = ", ".join(f"{n} {reason}" for reason, n in sorted(rejections.items()))
        say(f"fuzz: drew {len(recipes)} dataset(s); rejected draws: {rejected or 'none'}")
        for index, recipe in enumerate(recipes):
            size = len(fuzzer.dataset(recipe))  # type: ignore[arg-type]
            say(
                f"fuzz draw {index + 1}/{len(recipes)}: {size} prompts, "
                f"{_describe(recipe, fuzzer.pools)}; {len(members)} claim(s)"
            )
            for target in members:
                flat.append((target, index, recipe, fuzzer.measured(target, recipe)))
        for target in members:  # failing whatever the correction: shrink it now
            counterexample, note = _shrink(target, recipes, fuzzer, say)
            if counterexample is not None:
                shrunk[target.key] = counterexample
            if note:
                notes[target.key] = note
        run.judgements += fuzzer.judgements
    records = judge_run([*regular, *(m for *_, m in flat)])
    regular_records = {
        case.key: record for case, record in zip(cases, records[: len(regular)], strict=True)
    }
    per_target: dict[tuple, list[DrawResult]] = {}
    for (target, index, recipe, measured), record in zip(
        flat, records[len(regular) :], strict=True
    ):
        per_target.setdefault(target.key, []).append(
            DrawResult(index, recipe, measured.n_prompts, record)
        )
    for target in targets:
        group_key = (str(target.file.path), target.model, target.revision)
        draws = tuple(per_target.get(target.key, ()))
        note = notes.get(target.key, "")
        robust = bool(draws) and all(d.record.passed for d in draws)
        if draws and not robust and target.key not in shrunk and not note:
            note = (
                "no drawn dataset fails whatever the correction (each failure is an ERROR or "
                "due to the run's correction): nothing to shrink"
            )
        run.results[target.key] = ClaimFuzz(
            target,
            target.file.fuzz.seed,
            draws,
            dict(sorted(drawn.get(group_key, Counter()).items())),
            shrunk.get(target.key),
            note,
        )
    run.shrink_judgements = sum(c.judgements for c in shrunk.values())
    run.seconds = time.perf_counter() - start
    return regular_records, run


def _shrink(
    target: FuzzTarget, recipes: Sequence[Recipe], fuzzer: DatasetFuzzer, say: Progress
) -> tuple[Counterexample | None, str]:
    """The shrunk counterexample of a target that :func:`fails` on some drawn dataset."""
    first = next((i for i, r in enumerate(recipes) if fails(fuzzer.measured(target, r))), None)
    if first is None:
        return None, ""
    budget = target.file.fuzz.shrink
    say(f"fuzz: shrinking {target.test_id} from draw {first + 1} (budget {budget})")
    minimal, spent, exhausted = fuzzer.shrink(target, target.examples, budget)
    if minimal is None:
        return None, "the replay of the draws found no failure to shrink"
    record = judge_run([fuzzer.measured(target, minimal)])[0]
    counterexample = Counterexample(
        minimal, record, needed_words(minimal, fuzzer.pools), spent, exhausted, first
    )
    say(
        f"fuzz: {target.test_id} shrank to {_describe(minimal, fuzzer.pools)} in {spent} "
        f"judgement(s): {record.outcome}"
    )
    return counterexample, ""
