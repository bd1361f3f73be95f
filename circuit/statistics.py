"""The one verdict rule every claim is judged by.

A claim's *check* is measured as per-prompt rows (``[n, ...]``, one row per prompt) and a
vectorised statistic that reduces a batch of row sets ``[B, n, ...]`` to ``[B]`` values.
From that alone the rule derives:

* a percentile bootstrap confidence interval over prompts (``scipy.stats.bootstrap``,
  resampling prompt indices, fixed ``rng``);
* a one-sided p-value against a null distribution drawn from the same per-prompt data, no
  new forward passes: random head sets of the claimed size and layer range, or shuffled
  roles, both drawn afresh within every prompt (:func:`permuted_columns_null`), or, for an
  association, the pairing shuffled across prompts (:func:`permuted_pairs_null`);
  ``p = (1 + #{null at least as extreme}) / (1 + draws)``;
* Benjamini-Hochberg correction across every check of the run
  (``scipy.stats.false_discovery_control``);
* the verdict: CONFIRMED iff the interval lies wholly on the claimed side of the threshold
  and the corrected p-value is below ``alpha``; REFUTED iff the interval lies wholly on the
  other side; INCONCLUSIVE otherwise.

Everything is deterministic: each check draws from its own generator, seeded from the run
seed and the check's identity, so a check's numbers do not depend on which other checks
run with it (only its corrected p-value does, by design).
"""

import enum
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps per-prompt rows ``[B, n, ...]`` to one value per row set ``[B]``."""

NullSampler = Callable[[np.random.Generator, int], np.ndarray]
"""Draws ``draws`` values ``[draws]`` of the statistic under the null hypothesis."""

MAX_BATCH_ELEMENTS = 20_000_000
"""Bootstrap batches are sized so one batch of resampled rows stays below this many floats."""


class Side(enum.StrEnum):
    """Which side of the threshold the claim says the statistic lies on."""

    AT_LEAST = ">="
    AT_MOST = "<="


class Verdict(enum.StrEnum):
    """The outcome of judging one check, or one claim (the worst of its checks)."""

    CONFIRMED = "CONFIRMED"
    INCONCLUSIVE = "INCONCLUSIVE"
    REFUTED = "REFUTED"


VERDICT_ORDER: dict[Verdict, int] = {
    Verdict.CONFIRMED: 0,
    Verdict.INCONCLUSIVE: 1,
    Verdict.REFUTED: 2,
}
"""Severity: a claim's verdict is its checks' most severe verdict."""


@dataclass(frozen=True)
class VerdictSettings:
    """Parameters of the rule; defaults are the project's, a claim file may override."""

    alpha: float = 0.05
    confidence_level: float = 0.95
    n_resamples: int = 2000
    null_draws: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if not 0 < self.confidence_level < 1:
            raise ValueError(f"confidence_level must lie in (0, 1), got {self.confidence_level}")
        if self.n_resamples < 100 or self.null_draws < 100:
            raise ValueError("n_resamples and null_draws must each be at least 100")


@dataclass(frozen=True)
class Evidence:
    """One check's measurement, ready to be judged.

    ``rows`` is ``[n, ...]`` (first axis: prompts). ``statistic`` is vectorised over a
    leading batch axis. ``null`` draws the statistic under the null hypothesis from the same
    per-prompt data, without new forward passes. ``unit`` names what the statistic measures.
    """

    check: str
    rows: np.ndarray
    statistic: Statistic
    threshold: float
    side: Side
    null: NullSampler
    null_name: str
    unit: str = ""

    def observed(self) -> float:
        """The statistic on the prompts as measured."""
        return float(self.statistic(self.rows[None])[0])


@dataclass(frozen=True)
class Measured:
    """A check with its interval and uncorrected p-value, before correction across the run."""

    check: str
    statistic: float
    low: float
    high: float
    threshold: float
    side: Side
    p: float
    null_name: str
    null_median: float
    n_prompts: int
    unit: str
    confidence_level: float = 0.95


@dataclass(frozen=True)
class Judgement:
    """A check's final verdict after Benjamini-Hochberg correction across the run."""

    measured: Measured
    p_corrected: float
    alpha: float
    verdict: Verdict

    def explanation(self) -> str:
        """Statistic, interval, threshold, p-values, and what a CONFIRMED verdict needed."""
        m = self.measured
        bound, other = ("lower", "upper") if m.side is Side.AT_LEAST else ("upper", "lower")
        text = (
            f"{m.check}: {self.verdict} — statistic {m.statistic:.4g} {m.unit}".rstrip()
            + f", {confidence_text(m)} [{m.low:.4g}, {m.high:.4g}], claimed {m.side.value} "
            f"{m.threshold:.4g}; p = {m.p:.3g} (null: {m.null_name}, median "
            f"{m.null_median:.4g}), BH-corrected p = {self.p_corrected:.3g}, alpha = "
            f"{self.alpha:g}"
        )
        if self.verdict is Verdict.CONFIRMED:
            return text
        needs = []
        if not interval_clears(m):
            needs.append(f"the interval's {bound} bound beyond {m.threshold:.4g}")
        if self.p_corrected >= self.alpha:
            needs.append(f"a corrected p below {self.alpha:g}")
        if self.verdict is Verdict.REFUTED:
            needs.append(f"(the whole interval lies on the wrong side: its {other} bound too)")
        return text + "; a CONFIRMED verdict needed " + " and ".join(needs)


def confidence_text(measured: Measured) -> str:
    """Label of the interval in messages (e.g. ``95% bootstrap CI``)."""
    return f"{measured.confidence_level:.0%} bootstrap CI"


def check_rng(seed: int, *identity: str) -> np.random.Generator:
    """A generator seeded from the run seed and a check's identity (stable across runs)."""
    key = zlib.crc32("\x1f".join(identity).encode())
    return np.random.default_rng([seed, key])


def bootstrap_interval(
    rows: np.ndarray,
    statistic: Statistic,
    rng: np.random.Generator,
    n_resamples: int,
    confidence_level: float,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over prompts (rows resampled jointly)."""
    n = rows.shape[0]
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 prompts, got {n}")

    def resampled(index: np.ndarray, axis: int = -1) -> np.ndarray:
        del axis
        return statistic(rows[index])

    per_row = max(1, int(np.prod(rows.shape[1:])))
    batch = max(1, min(n_resamples, MAX_BATCH_ELEMENTS // (n * per_row)))
    result = stats.bootstrap(
        (np.arange(n),),
        resampled,
        n_resamples=n_resamples,
        batch=batch,
        vectorized=True,
        confidence_level=confidence_level,
        method="percentile",
        rng=rng,
    )
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


def null_p_value(observed: float, null: np.ndarray, side: Side) -> float:
    """One-sided p-value with the +1 correction: the null at least as extreme as observed."""
    null = np.asarray(null, dtype=float)
    if null.ndim != 1 or null.size == 0:
        raise ValueError(f"the null must be a non-empty 1-d array, got shape {null.shape}")
    extreme = null >= observed if side is Side.AT_LEAST else null <= observed
    return float((1 + np.count_nonzero(extreme)) / (1 + null.size))


def interval_clears(measured: Measured) -> bool:
    """Whether the whole interval lies strictly on the claimed side of the threshold."""
    if measured.side is Side.AT_LEAST:
        return measured.low > measured.threshold
    return measured.high < measured.threshold


def interval_refutes(measured: Measured) -> bool:
    """Whether the whole interval lies strictly on the wrong side of the threshold."""
    if measured.side is Side.AT_LEAST:
        return measured.high < measured.threshold
    return measured.low > measured.threshold


def measure(evidence: Evidence, settings: VerdictSettings, *identity: str) -> Measured:
    """Interval and uncorrected p-value of one check (seeded from ``identity``)."""
    rng = check_rng(settings.seed, *identity, evidence.check)
    observed = evidence.observed()
    low, high = bootstrap_interval(
        evidence.rows, evidence.statistic, rng, settings.n_resamples, settings.confidence_level
    )
    null = np.asarray(evidence.null(rng, settings.null_draws), dtype=float)
    return Measured(
        check=evidence.check,
        statistic=observed,
        low=low,
        high=high,
        threshold=float(evidence.threshold),
        side=evidence.side,
        p=null_p_value(observed, null, evidence.side),
        null_name=evidence.null_name,
        null_median=float(np.median(null)),
        n_prompts=int(evidence.rows.shape[0]),
        unit=evidence.unit,
        confidence_level=settings.confidence_level,
    )


def verdict_of(measured: Measured, p_corrected: float, alpha: float) -> Verdict:
    """The rule: CONFIRMED / REFUTED / INCONCLUSIVE from interval and corrected p."""
    if interval_clears(measured) and p_corrected < alpha:
        return Verdict.CONFIRMED
    if interval_refutes(measured):
        return Verdict.REFUTED
    return Verdict.INCONCLUSIVE


def correct(ps: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (empty in, empty out)."""
    if len(ps) == 0:
        return np.zeros(0)
    return np.asarray(stats.false_discovery_control(np.asarray(ps, dtype=float), method="bh"))


def judge_all(measured: Sequence[Measured], alpha: float) -> list[Judgement]:
    """Judge every check of a run together: BH across all of them, then the rule."""
    adjusted = correct([m.p for m in measured])
    return [
        Judgement(m, float(p), alpha, verdict_of(m, float(p), alpha))
        for m, p in zip(measured, adjusted, strict=True)
    ]


def worst(verdicts: Sequence[Verdict]) -> Verdict:
    """A claim's verdict: the most severe of its checks' verdicts."""
    if not verdicts:
        raise ValueError("a claim needs at least one check")
    return max(verdicts, key=VERDICT_ORDER.__getitem__)


def permuted_columns_null(rows: np.ndarray, pool: np.ndarray, statistic: Statistic) -> NullSampler:
    """Null from labels permuted within each prompt: random head sets, or shuffled roles.

    ``rows`` is ``[n, K, ...]`` (axis 1: heads, or positions); ``pool`` holds the columns
    whose labels are exchangeable under the null (the claimed heads' layer range, or the
    positions a role could be). Each draw applies, to every prompt independently, a uniformly
    random permutation of the pool's columns, then the same vectorised ``statistic`` as the
    observed value. Reading the claimed columns of a permuted prompt is reading a random set
    of pool columns of the claimed size, drawn afresh for every prompt: a within-prompt
    permutation test, valid when under the null the claimed labels are exchangeable with the
    others in the pool, and with a resolution not limited by how many distinct sets exist.
    """
    pool = np.asarray(pool)
    n = rows.shape[0]
    if pool.ndim != 1 or pool.size < 2:
        raise ValueError(f"a permutation pool needs at least 2 columns, got {pool.tolist()}")

    def draw(rng: np.random.Generator, draws: int) -> np.ndarray:
        out = np.empty(draws)
        chunk = max(1, MAX_BATCH_ELEMENTS // max(1, rows.size))
        prompts = np.arange(n)[None, :, None]
        for start in range(0, draws, chunk):
            count = min(chunk, draws - start)
            order = np.argsort(rng.random((count, n, pool.size)), axis=2)
            permuted = np.broadcast_to(rows, (count, *rows.shape)).copy()
            permuted[:, :, pool] = rows[prompts, pool[order]]
            out[start : start + count] = statistic(permuted)
        return out

    return draw


def permuted_pairs_null(rows: np.ndarray, statistic: Statistic) -> NullSampler:
    """Null for an association between two per-prompt quantities: pairing shuffled.

    ``rows`` is ``[n, 2, ...]``; each draw permutes ``rows[:, 1]`` across prompts (one
    permutation per draw, shared by the trailing columns), breaking the pairing of the two
    quantities while keeping each one's distribution, then applies ``statistic``.
    """
    n = rows.shape[0]

    def draw(rng: np.random.Generator, draws: int) -> np.ndarray:
        out = np.empty(draws)
        chunk = max(1, MAX_BATCH_ELEMENTS // max(1, rows.size))
        for start in range(0, draws, chunk):
            count = min(chunk, draws - start)
            order = np.argsort(rng.random((count, n)), axis=1)
            permuted = np.broadcast_to(rows, (count, *rows.shape)).copy()
            permuted[:, :, 1] = rows[order, 1]
            out[start : start + count] = statistic(permuted)
        return out

    return draw
