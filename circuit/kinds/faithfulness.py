"""What the faithfulness kinds (sufficiency, necessity, minimality) share.

Every one measures the clean prompts with head sets ablated (a claim's ``ablation``,
``ablation_source`` and ``positions``; docs/ablations.md) through
:func:`~circuit.kinds.measurements.head_ablation`, in the study's normalised metric (clean 1,
corrupted 0, batch-mean baselines), and states its checks as a fraction of the clean-corrupted
gap: ``rows`` ``[n, 1 + A + 2]`` hold per prompt the claimed quantity's numerator (column 0),
the same numerator for ``A`` alternatives (random head sets, or random added heads), then the
prompt's clean and corrupted normalised metric; the statistic is the ratio of weighted means
``mean(column 0) / (mean(clean) - mean(corrupted))``.

Nulls that need forward passes of their own (random head sets kept or ablated) are computed
once per subject as part of the sweep: :data:`NULL_SETS` random sets, drawn from a generator
seeded by the pool and the set size; the null then gives each level of the coarsest dataset
factor one of them (uniformly, with the claimed set among the candidates, as the pool nulls of
the other kinds), through :func:`~circuit.statistics.permuted_columns_null` over the columns.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from circuit.dataset import ROLE_NAMES
from circuit.heads import Head
from circuit.kinds.base import KindSchema
from circuit.kinds.common import gap_check, head_floor_checks
from circuit.kinds.measurements import (
    Subject,
    ablation_of,
    baselines,
    head_ablation,
    normalised_baselines,
)

if TYPE_CHECKING:
    from circuit.claims import Claim

from circuit.statistics import (
    Evidence,
    Side,
    VerdictSettings,
    permuted_columns_null,
    weighted_mean,
)

NULL_SETS = 64
"""Random head sets measured per subject (and set size and pool) for a random-set null."""


def random_sets(pool: np.ndarray, size: int, count: int = NULL_SETS) -> np.ndarray:
    """``count`` random ``size``-head subsets of ``pool`` ``[count, size]`` (flat indices),
    from a generator seeded by the pool and the size (the same for every claim that shares
    them, so their sweep runs once)."""
    key = zlib.crc32(f"{size}:{','.join(map(str, pool.tolist()))}".encode())
    rng = np.random.default_rng([key, count])
    return np.stack([np.sort(rng.choice(pool, size, replace=False)) for _ in range(count)])


def masks_keeping(sets: list[np.ndarray], n_layers: int, n_heads: int) -> np.ndarray:
    """Masks ``[len(sets), L, H]`` that ablate every head except each set's."""
    masks = np.ones((len(sets), n_layers * n_heads), dtype=bool)
    for row, heads in enumerate(sets):
        masks[row, np.asarray(heads, dtype=np.int64)] = False
    return masks.reshape(len(sets), n_layers, n_heads)


def masks_ablating(sets: list[np.ndarray], n_layers: int, n_heads: int) -> np.ndarray:
    """Masks ``[len(sets), L, H]`` that ablate each set's heads only."""
    return ~masks_keeping(sets, n_layers, n_heads)


class MaskSweep:
    """The sweep of one claim's masks on one subject, and the per-prompt baselines."""

    def __init__(self, claim: Claim, subject: Subject, masks: np.ndarray) -> None:
        self.ablation = ablation_of(subject, claim.options)
        self.metric = head_ablation(subject, self.ablation, masks)["metric"].double().numpy()
        clean, corrupted = normalised_baselines(subject)
        self.clean = clean.double().numpy()
        self.corrupted = corrupted.double().numpy()
        self.clusters = subject.clusters

    @property
    def gap(self) -> np.ndarray:
        return self.clean - self.corrupted


def gap_floor(subject: Subject, settings: VerdictSettings) -> Evidence:
    """The shared floor every claim carries first (the clean-corrupted gap is real)."""
    base = baselines(subject)
    return gap_check(
        base["clean"].double().numpy(),
        base["corrupted"].double().numpy(),
        subject.clusters,
        settings.min_gap,
    )


def fraction_of_gap(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``mean(column 0) / (mean(clean) - mean(corrupted))`` of rows ``[B|1, n, K]``."""
    means = weighted_mean(batch, weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        return means[:, 0] / (means[:, -2] - means[:, -1])


def compared(
    check: str,
    claimed: np.ndarray,
    alternatives: np.ndarray,
    m: MaskSweep,
    threshold: float,
    null_name: str,
    unit: str,
) -> Evidence:
    """A comparison check: the claimed numerator ``[n]`` against ``alternatives`` ``[n, A]``."""
    rows = np.concatenate(
        [claimed[:, None], alternatives, m.clean[:, None], m.corrupted[:, None]], axis=1
    )
    pool = np.arange(1 + alternatives.shape[1])
    return Evidence(
        check=check,
        rows=rows,
        clusters=m.clusters,
        statistic=fraction_of_gap,
        threshold=threshold,
        side=Side.AT_LEAST,
        null=permuted_columns_null(rows, pool, fraction_of_gap, m.clusters),
        null_name=f"{null_name}, one per {m.clusters.primary_name()}",
        unit=unit,
    )


def per_head_floors(
    heads: tuple[Head, ...],
    numerators: np.ndarray,
    m: MaskSweep,
    minimum: float,
    name: str,
    unit: str,
) -> list[Evidence]:
    """:func:`~circuit.kinds.common.head_floor_checks` of per-head numerators ``[n, m]`` as
    fractions of the gap (a floor per named head; none for a one-head claim)."""
    if len(heads) < 2:
        return []
    rows = np.concatenate([numerators, m.gap[:, None]], axis=1)
    return head_floor_checks(heads, rows, m.clusters, minimum, name, unit, len(heads))


ABLATION_OPTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "ablation": ("mean", "resample", "zero"),
        "ablation_source": ("clean", "corrupted"),
        "positions": ("all", *ROLE_NAMES),
    }
)
"""Options of the faithfulness kinds (docs/ablations.md): how heads are ablated, the prompts
the values come from (not for ``zero``; required otherwise) and where (default: all)."""


def ablation_schema(threshold: str) -> KindSchema:
    """The fields of a faithfulness kind whose one threshold is named ``threshold``."""
    return KindSchema(
        heads=("heads",),
        roles=(),
        thresholds=(threshold,),
        options=ABLATION_OPTIONS,
        required_options=("ablation",),
    )


def ablation_options_rule(claim: Claim) -> str | None:
    """``mean`` and ``resample`` name the prompts their values come from; ``zero`` does not."""
    method = claim.options.get("ablation")
    if method in ("mean", "resample") and "ablation_source" not in claim.options:
        return (
            f"ablation = {method!r} needs ablation_source ('clean' or 'corrupted'): the prompts "
            "its values come from"
        )
    if method == "zero" and "ablation_source" in claim.options:
        return "ablation = 'zero' takes no ablation_source"
    return None
