"""Value position: the claimed heads' values matter most at one role's position.

From value patching by position (:func:`~circuit.kinds.measurements.value_by_position`,
restricted to the claimed heads at every position and every head at the role's position),
per prompt ``i`` and position ``p`` the recovery ``e[i, p]`` is the sum over the claimed
heads of (patched normalised metric - the prompt's corrupted normalised metric), a fraction
of the clean-corrupted gap. Only positions where some claimed head's clean and corrupted
value vectors actually differ take part (:func:`~circuit.kinds.measurements.value_differences`):
elsewhere patching the value changes nothing, by construction. Checks:

* ``gap``: the clean-corrupted gap is real (the shared floor);
* ``share@role``: ``mean e[:, role] / sum_p |mean e[:, p]|`` is at least ``share``;
* ``largest@role``: ``(mean e[:, role] - max_{p != role} mean e[:, p]) / sum_p |mean e[:, p]|``
  is above 0 (the role's position is the largest);
* ``effect[head]@role``, one per named head: that head's own recovery at the role is at least
  ``min_head_effect`` of the gap (a floor: a share of almost nothing is still a share, and a
  dead head added to live ones leaves the summed share intact).

Null of the two comparisons (one sentence a reviewer can check): within every level of the
coarsest dataset factor, the role's label is moved to a random position among those where
the value vectors differ, and the statistic is recomputed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from circuit.kinds.base import ClaimKind, KindSchema
from circuit.kinds.common import gap_check, head_floor_checks, share_in_unit_interval
from circuit.kinds.measurements import (
    Subject,
    baselines,
    normalised_baselines,
    value_by_position,
    value_differences,
)
from circuit.kinds.rankings import by_value_effect
from circuit.statistics import (
    Evidence,
    Side,
    VerdictSettings,
    permuted_columns_null,
    weighted_mean,
)

DIFFERENCE_TOLERANCE = 1e-5
"""Value vectors differing by less than this fraction of the largest difference are equal."""

if TYPE_CHECKING:
    from circuit.claims import Claim


def evidence(claim: Claim, subject: Subject, settings: VerdictSettings) -> list[Evidence]:
    """The checks of a value-position claim on one subject."""
    heads = claim.primary_heads
    role = claim.roles["position"]
    at = subject.dataset.roles[role]
    patched = value_by_position(subject, heads, at)["patched"].double()  # [n, L, pos, H]
    _, corrupted = normalised_baselines(subject)
    layers = [h.layer for h in heads]
    indices = [h.head for h in heads]
    per_head = patched.permute(0, 1, 3, 2)[:, layers, indices]  # [n, m, pos]
    per_head = per_head - corrupted.double()[:, None, None]
    differs = value_differences(subject)["largest"].double()[layers, :, indices]  # [m, pos]
    pool = np.flatnonzero(
        (differs > DIFFERENCE_TOLERANCE * max(float(differs.max()), 1e-30)).any(dim=0).numpy()
    )
    if at not in pool:
        raise ValueError(
            f"claim {claim.id!r}: the claimed heads' value vectors are identical in the clean "
            f"and corrupted prompts at role {role!r} (position {at}), so value patching has no "
            "effect there by construction"
        )
    if pool.size < 2:
        raise ValueError(f"claim {claim.id!r}: value vectors differ at one position only")
    rows = per_head.sum(dim=1)[:, pool].numpy()  # [n, pool]
    position = int(np.flatnonzero(pool == at)[0])
    columns = np.arange(rows.shape[1])
    clusters = subject.clusters
    null_text = (
        f"'{role}' moved to a random one of the {pool.size} positions where the value vectors "
        f"differ, per {clusters.primary_name()}"
    )

    def share(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
        means = weighted_mean(batch, weights)  # [B, pos]
        return means[:, position] / _total(means)

    def largest(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
        means = weighted_mean(batch, weights)
        others = np.delete(means, position, axis=1).max(axis=1)
        return (means[:, position] - others) / _total(means)

    base = baselines(subject)
    own = per_head[:, :, at].numpy()  # [n, m]
    return [
        gap_check(
            base["clean"].double().numpy(),
            base["corrupted"].double().numpy(),
            clusters,
            settings.min_gap,
        ),
        Evidence(
            check=f"share@{role}",
            rows=rows,
            clusters=clusters,
            statistic=share,
            threshold=claim.thresholds["share"],
            side=Side.AT_LEAST,
            null=permuted_columns_null(rows, columns, share, clusters),
            null_name=null_text,
            unit="of the |value-patching effect|",
        ),
        Evidence(
            check=f"largest@{role}",
            rows=rows,
            clusters=clusters,
            statistic=largest,
            threshold=0.0,
            side=Side.AT_LEAST,
            null=permuted_columns_null(rows, columns, largest, clusters),
            null_name=null_text,
            unit="margin (of the |effect|)",
        ),
        *head_floor_checks(
            heads,
            own,
            clusters,
            claim.thresholds.get("min_head_effect", settings.min_head_effect),
            f"effect@{role}",
            "of the gap (value patching, this head alone)",
        ),
    ]


def _total(means: np.ndarray) -> np.ndarray:
    total = np.abs(means).sum(axis=1)
    return np.where(total > 0, total, np.inf)


KIND = ClaimKind(
    name="value-position",
    schema=KindSchema(
        heads=("heads",),
        roles=("position",),
        thresholds=("share",),
        optional_thresholds=("min_head_effect",),
    ),
    evidence=evidence,
    rank_heads=by_value_effect,
    check=share_in_unit_interval,
)
