"""Statistics shared by claim kinds: head pools, top-k margins, rank correlations.

Heads are addressed by their flat index ``layer * n_heads + head``. Functions ending in a
batch axis ``B`` are vectorised so that the same code yields the bootstrap replicates
(``B`` prompt weightings) and the null draws (``B`` random head sets).

Every claim also carries the checks of :func:`gap_check` (the behaviour is there at all) and
of :func:`head_floor_checks` (each named head contributes on its own): the effect-size floors
of the verdict rule.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from circuit.heads import Head

if TYPE_CHECKING:
    from circuit.claims import Claim
from circuit.statistics import Clusters, Evidence, Side, weighted_mean


def flat(heads: Sequence[Head], n_heads: int) -> np.ndarray:
    """Flat indices ``[m]`` of heads."""
    return np.array([h.flat(n_heads) for h in heads], dtype=np.int64)


def layer_range_pool(
    heads: Sequence[Head],
    n_layers: int,
    n_heads: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """Heads a random head set of the same size and layer range is drawn from.

    Every head in the layers the claimed heads span (claimed heads included), minus those
    ``allowed`` (bool ``[L*H]``) rules out (e.g. receivers, heads with no path). If that
    leaves no head besides the claimed ones, the range widens one layer on each side.
    Returns the pool and a description such as ``L18-L20 (48 heads)``.
    """
    size = len(heads)
    low, high = min(h.layer for h in heads), max(h.layer for h in heads)
    if allowed is None:
        allowed = np.ones(n_layers * n_heads, dtype=bool)
    layers = np.arange(n_layers * n_heads) // n_heads
    while True:
        pool = np.flatnonzero(allowed & (layers >= low) & (layers <= high))
        if pool.size > size or (low == 0 and high == n_layers - 1):
            break
        low, high = max(0, low - 1), min(n_layers - 1, high + 1)
    if pool.size <= size:
        raise ValueError(f"only {pool.size} candidate heads for a {size}-head null")
    return pool, f"random {size}-head sets per prompt from L{low}-L{high} ({pool.size} heads)"


def top_k_margin(means: np.ndarray, sets: np.ndarray, k: int, candidates: np.ndarray) -> np.ndarray:
    """How far the weakest head of each set clears the best head ranked outside the top k.

    ``means`` ``[B, K]`` per-head effects, ``sets`` ``[B, m]`` (or ``[m]``) flat head
    indices, ``candidates`` bool ``[K]`` (heads that compete). Returns ``[B]``:
    ``min(means[set]) - (k - m + 1)-th largest mean among candidates outside the set``;
    positive iff every head of the set ranks within the top ``k`` of the candidates.
    """
    batch = means.shape[0]
    sets = np.broadcast_to(sets, (batch, sets.shape[-1]))
    size = sets.shape[1]
    rows = np.arange(batch)[:, None]
    weakest = means[rows, sets].min(axis=1)
    others = np.where(candidates[None, :], means, -np.inf)
    others[rows, sets] = -np.inf
    rank = k - size
    if not 0 <= rank < int(candidates.sum()) - size:
        raise ValueError(
            f"top-{k} of {int(candidates.sum())} candidates is undefined for {size} heads"
        )
    kth = -np.partition(-others, rank, axis=1)[:, rank]
    return weakest - kth


def weighted_spearman(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Spearman correlation over prompts of a weighted sample, for every trailing column.

    ``x``, ``y``: ``[B|1, n, m]``; ``weights``: ``[B|1, n]`` (prompt ``i`` counted
    ``weights[b, i]`` times, as a bootstrap resample counts it) -> ``[B, m]``. Ties get mid
    ranks; a constant column gives 0. With unit weights this is :func:`spearman_per_column`.
    """
    if weights.shape[0] == 1 and np.all(weights == 1):
        return spearman_per_column(x, y)
    if x.shape[0] != 1 or y.shape[0] != 1:
        raise ValueError("weighted Spearman takes fixed rows [1, n, m] and batched weights")
    w = weights[:, :, None]  # [B, n, 1]
    total = w.sum(axis=1)  # [B, 1]
    rx, ry = _weighted_ranks(x[0], weights), _weighted_ranks(y[0], weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (w * rx).sum(axis=1) / total
        my = (w * ry).sum(axis=1) / total
        dx, dy = rx - mx[:, None], ry - my[:, None]
        covariance = (w * dx * dy).sum(axis=1)
        denominator = np.sqrt((w * dx**2).sum(axis=1) * (w * dy**2).sum(axis=1))
        result = np.where(denominator > 0, covariance / denominator, 0.0)
    return np.where(total > 0, result, np.nan)


def _weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mid ranks ``[B, n, m]`` of ``values`` ``[n, m]`` in the sample weighted by ``[B, n]``."""
    n, m = values.shape
    less = (values[None, :, :] < values[:, None, :]).astype(float)  # [i, j, m]: x_j < x_i
    equal = (values[None, :, :] == values[:, None, :]).astype(float)
    below = weights @ less.transpose(1, 0, 2).reshape(n, n * m)  # [B, i*m]
    tied = weights @ equal.transpose(1, 0, 2).reshape(n, n * m)
    return (below + (tied + 1) / 2).reshape(-1, n, m)


def spearman_per_column(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation over axis ``-2`` (prompts) for every trailing column.

    ``x``, ``y``: ``[..., n, m]`` -> ``[..., m]``; a constant column gives 0.
    """
    rx = stats.rankdata(x, axis=-2)
    ry = stats.rankdata(y, axis=-2)
    rx = rx - rx.mean(axis=-2, keepdims=True)
    ry = ry - ry.mean(axis=-2, keepdims=True)
    denominator = np.sqrt((rx**2).sum(axis=-2) * (ry**2).sum(axis=-2))
    numerator = (rx * ry).sum(axis=-2)
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 0.0)


def gap_check(clean: np.ndarray, corrupted: np.ndarray, clusters: Clusters, minimum: float):
    """The floor every claim needs: the clean-corrupted logit-difference gap is real.

    ``clean``, ``corrupted``: per-prompt logit differences ``[n]`` (right minus wrong answer
    on the clean prompt and on its corrupted twin). Statistic: the difference of their
    weighted means, in logits; it must lie above ``minimum`` (a floor check: p from the
    cluster bootstrap). Every claim on the same subject shares it (``pooled="gap"``).
    """
    rows = np.stack([clean, corrupted], axis=1).astype(float)  # [n, 2]

    def statistic(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
        means = weighted_mean(batch, weights)
        return means[:, 0] - means[:, 1]

    return Evidence(
        check="gap",
        rows=rows,
        clusters=clusters,
        statistic=statistic,
        threshold=minimum,
        side=Side.AT_LEAST,
        null=None,
        null_name=f"cluster bootstrap against the {minimum:g}-logit floor",
        unit="logits (clean - corrupted)",
        pooled="gap",
    )


def head_floor_checks(
    heads: Sequence[Head],
    rows: np.ndarray,
    clusters: Clusters,
    minimum: float,
    name: str,
    unit: str,
    denominator: int | None = None,
) -> list[Evidence]:
    """One floor check per named head: its own contribution is at least ``minimum``.

    ``rows`` ``[n, m + (1 if denominator else 0)]``: column ``j`` is head ``heads[j]``'s
    per-prompt effect; with ``denominator`` set, that column holds the per-prompt quantity
    the effect is a share of (ratio of weighted means). A dead or silent head lies below the
    floor, so a claim that names one cannot be CONFIRMED.
    """
    checks = []
    for column, head in enumerate(heads):

        def statistic(batch: np.ndarray, weights: np.ndarray, column: int = column) -> np.ndarray:
            means = weighted_mean(batch, weights)
            if denominator is None:
                return means[:, column]
            with np.errstate(invalid="ignore", divide="ignore"):
                return means[:, column] / means[:, denominator]

        checks.append(
            Evidence(
                check=f"{name}[{head}]",
                rows=rows,
                clusters=clusters,
                statistic=statistic,
                threshold=minimum,
                side=Side.AT_LEAST,
                null=None,
                null_name=f"cluster bootstrap against the {minimum:g} floor",
                unit=unit,
            )
        )
    return checks


def share_in_unit_interval(claim: "Claim") -> str | None:
    """A share of the effect must lie in (0, 1] (the rule of the share-claiming kinds)."""
    share = claim.thresholds["share"]
    if not 0 < share <= 1:
        return f"threshold 'share' must lie in (0, 1], got {share:g}"
    return None
