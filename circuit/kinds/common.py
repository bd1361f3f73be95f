"""Statistics shared by claim kinds: head pools, top-k margins, rank correlations.

Heads are addressed by their flat index ``layer * n_heads + head``. Functions ending in a
batch axis ``B`` are vectorised so that the same code yields the bootstrap replicates
(``B`` resamples of prompts) and the null draws (``B`` random head sets).
"""

from collections.abc import Sequence

import numpy as np
from scipy import stats

from circuit.claims import Head


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
