"""Word-mover heads: they carry the logit difference and copy what they attend to.

Checks, all from one clean run (:func:`~circuit.kinds.measurements.clean_run`) and the
baselines:

* ``gap``: the clean-corrupted gap is real (the shared floor);
* ``share``: the claimed heads' summed direct logit attribution divided by the logit
  difference (ratio of prompt means) is at least ``share``;
* ``share[head]``, one per named head: that head's own share is at least ``min_head_share``
  (a floor: a dead head named beside live ones would otherwise ride on their share);
* ``top-k`` (only when the claim states ``top_k``): every claimed head ranks within the
  ``top_k`` heads of the model by mean direct logit attribution; statistic: the weakest
  claimed head's attribution minus the best attribution ranked outside the top k, divided
  by the absolute mean logit difference of the measured prompts (a fixed scale; threshold 0);
* ``attention-writing`` (only when the claim states ``spearman``): attention from the final
  position to the ``attends_to`` role predicts how strongly the head writes in the answer
  direction: the mean over the claimed heads of the Spearman correlation across prompts,
  between that attention and the head's projection on the logit-difference direction (right
  minus wrong answer, i.e. its per-prompt direct logit attribution), is at least
  ``spearman``. The study plotted the projection on the right answer alone; the difference
  also credits a head that attends to the opposite and writes against it, and cancels what a
  head writes to both answers alike.

Nulls (one sentence each a reviewer can check): ``share`` and ``top-k`` compare the claimed
set with a random head set of the same size from the claimed heads' layer range, drawn once
per level of the coarsest dataset factor; ``attention-writing`` compares with attention and
writing paired at random within each level of that factor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from circuit.kinds.base import ClaimKind, KindSchema
from circuit.kinds.common import (
    flat,
    gap_check,
    head_floor_checks,
    layer_range_pool,
    share_in_unit_interval,
    top_k_margin,
    weighted_spearman,
)
from circuit.kinds.measurements import Subject, baselines, clean_run
from circuit.kinds.rankings import by_direct_logit_attribution
from circuit.statistics import (
    Clusters,
    Evidence,
    Side,
    VerdictSettings,
    permuted_columns_null,
    permuted_pairs_null,
    weighted_mean,
)

if TYPE_CHECKING:
    from circuit.claims import Claim


def evidence(claim: Claim, subject: Subject, settings: VerdictSettings) -> list[Evidence]:
    """The checks of a word-mover claim on one subject (attention-writing if stated)."""
    run = clean_run(subject)
    base = baselines(subject)
    clusters = subject.clusters
    n_heads = subject.n_heads
    dla = run["dla"].double().flatten(1).numpy()  # [n, K]
    ld = run["logit_diff"].double().numpy()  # [n]
    heads = claim.primary_heads
    claimed = flat(heads, n_heads)
    pool, pool_text = layer_range_pool(heads, subject.n_layers, n_heads)
    pool_text += f", one set per {clusters.primary_name()}"
    rows = np.concatenate([dla, ld[:, None]], axis=1)  # [n, K + 1]
    own = np.concatenate([dla[:, claimed], ld[:, None]], axis=1)  # [n, m + 1]
    checks = [
        gap_check(
            base["clean"].double().numpy(),
            base["corrupted"].double().numpy(),
            clusters,
            settings.min_gap,
        ),
        _share(claim, rows, clusters, claimed, pool, pool_text),
        *head_floor_checks(
            heads,
            own,
            clusters,
            claim.thresholds.get("min_head_share", settings.min_head_share),
            "share",
            "of the logit diff (this head alone)",
            denominator=len(heads),
        ),
    ]
    if "top_k" in claim.thresholds:
        checks.append(_top_k(claim, rows, clusters, claimed, pool, pool_text))
    if "spearman" in claim.thresholds:
        checks.append(_attention_writing(claim, subject, run, clusters, claimed))
    return checks


def _share(claim, rows, clusters: Clusters, claimed, pool, pool_text) -> Evidence:
    def statistic(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
        means = weighted_mean(batch, weights)
        with np.errstate(invalid="ignore", divide="ignore"):
            return means[:, claimed].sum(axis=1) / means[:, -1]

    return Evidence(
        check="share",
        rows=rows,
        clusters=clusters,
        statistic=statistic,
        threshold=claim.thresholds["share"],
        side=Side.AT_LEAST,
        null=permuted_columns_null(rows, pool, statistic, clusters),
        null_name=pool_text,
        unit="of the logit diff",
    )


def _top_k(claim, rows, clusters: Clusters, claimed, pool, pool_text) -> Evidence:
    k = int(claim.thresholds["top_k"])
    candidates = np.ones(rows.shape[1] - 1, dtype=bool)
    scale = abs(rows[:, -1].mean()) or 1.0  # fixed: a resampled denominator adds only noise

    def statistic(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
        means = weighted_mean(batch, weights)
        return top_k_margin(means[:, :-1], claimed, k, candidates) / scale

    return Evidence(
        check=f"top-{k}",
        rows=rows,
        clusters=clusters,
        statistic=statistic,
        threshold=0.0,
        side=Side.AT_LEAST,
        null=permuted_columns_null(rows, pool, statistic, clusters),
        null_name=pool_text,
        unit="margin (of the logit diff)",
    )


def _attention_writing(claim, subject, run, clusters: Clusters, claimed) -> Evidence:
    role = claim.roles["attends_to"]
    position = subject.dataset.roles[role]
    attention = run["attention"][..., position].double().flatten(1).numpy()  # [n, K]
    writing = run["dla"].double().flatten(1).numpy()  # [n, K]
    rows = np.stack([attention[:, claimed], writing[:, claimed]], axis=1)  # [n, 2, m]

    def statistic(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return weighted_spearman(batch[:, :, 0, :], batch[:, :, 1, :], weights).mean(axis=-1)

    return Evidence(
        check=f"attention({role})-writing",
        rows=rows,
        clusters=clusters,
        statistic=statistic,
        threshold=claim.thresholds["spearman"],
        side=Side.AT_LEAST,
        null=permuted_pairs_null(rows, statistic, clusters),
        null_name=(f"attention and writing paired at random within each {clusters.primary_name()}"),
        unit="Spearman rho",
    )


KIND = ClaimKind(
    name="word-movers",
    schema=KindSchema(
        heads=("heads",),
        roles=("attends_to",),
        thresholds=("share",),
        integer_thresholds=("top_k",),
        optional_thresholds=("top_k", "spearman", "min_head_share"),
    ),
    evidence=evidence,
    rank_heads=by_direct_logit_attribution,
    check=share_in_unit_interval,
)
