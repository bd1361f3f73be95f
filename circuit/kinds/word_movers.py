"""Word-mover heads: they carry the logit difference and copy what they attend to.

Three checks, all from one clean run (:func:`~circuit.kinds.measurements.clean_run`):

* ``share``: the claimed heads' summed direct logit attribution divided by the logit
  difference (ratio of prompt means) is at least ``share``;
* ``top-k``: every claimed head ranks within the ``top_k`` heads of the model by mean
  direct logit attribution; statistic: the weakest claimed head's attribution minus the
  best attribution ranked outside the top k, divided by the absolute mean logit
  difference of the measured prompts (a fixed scale; threshold 0);
* ``attention-writing`` (only when the claim states ``spearman``): attention from the final
  position to the ``attends_to`` role
  predicts how strongly the head writes in the answer direction: the mean over the claimed
  heads of the Spearman correlation across prompts, between that attention and the head's
  projection on the logit-difference direction (right minus wrong answer, i.e. its per-prompt
  direct logit attribution), is at least ``spearman``. The study plotted the projection on the
  right answer alone; the difference also credits a head that attends to the opposite and
  writes against it, and cancels what a head writes to both answers alike.

Nulls, from the same per-prompt data: for ``share`` and ``top-k``, random head sets of the
claimed size from the claimed heads' layer range, drawn afresh in every prompt
(:func:`~circuit.statistics.permuted_columns_null`); for ``attention-writing``, attention and
writing paired at random across prompts (:func:`~circuit.statistics.permuted_pairs_null`).
"""

import numpy as np

from circuit.claims import Claim
from circuit.kinds.common import flat, layer_range_pool, spearman_per_column, top_k_margin
from circuit.kinds.measurements import Subject, clean_run
from circuit.statistics import Evidence, Side, permuted_columns_null, permuted_pairs_null


def evidence(claim: Claim, subject: Subject) -> list[Evidence]:
    """The checks of a word-mover claim on one subject (attention-writing if stated)."""
    run = clean_run(subject)
    n_heads = subject.n_heads
    dla = run["dla"].double().flatten(1).numpy()  # [n, K]
    ld = run["logit_diff"].double().numpy()  # [n]
    heads = claim.primary_heads
    claimed = flat(heads, n_heads)
    pool, pool_text = layer_range_pool(heads, subject.n_layers, n_heads)
    rows = np.concatenate([dla, ld[:, None]], axis=1)  # [n, K + 1]
    checks = [
        _share(claim, rows, claimed, pool, pool_text),
        _top_k(claim, rows, claimed, pool, pool_text),
    ]
    if "spearman" in claim.thresholds:
        checks.append(_attention_writing(claim, subject, run, claimed))
    return checks


def _share(claim, rows, claimed, pool, pool_text) -> Evidence:
    def statistic(batch: np.ndarray) -> np.ndarray:
        means = batch.mean(axis=1)
        return means[:, claimed].sum(axis=1) / means[:, -1]

    return Evidence(
        check="share",
        rows=rows,
        statistic=statistic,
        threshold=claim.thresholds["share"],
        side=Side.AT_LEAST,
        null=permuted_columns_null(rows, pool, statistic),
        null_name=pool_text,
        unit="of the logit diff",
    )


def _top_k(claim, rows, claimed, pool, pool_text) -> Evidence:
    k = int(claim.thresholds["top_k"])
    candidates = np.ones(rows.shape[1] - 1, dtype=bool)
    scale = abs(rows[:, -1].mean()) or 1.0  # fixed: a resampled denominator adds only noise

    def statistic(batch: np.ndarray) -> np.ndarray:
        means = batch.mean(axis=1)
        return top_k_margin(means[:, :-1], claimed, k, candidates) / scale

    return Evidence(
        check=f"top-{k}",
        rows=rows,
        statistic=statistic,
        threshold=0.0,
        side=Side.AT_LEAST,
        null=permuted_columns_null(rows, pool, statistic),
        null_name=pool_text,
        unit="margin (of the logit diff)",
    )


def _attention_writing(claim, subject, run, claimed) -> Evidence:
    role = claim.roles["attends_to"]
    position = subject.dataset.roles[role]
    attention = run["attention"][..., position].double().flatten(1).numpy()  # [n, K]
    writing = run["dla"].double().flatten(1).numpy()  # [n, K]
    rows = np.stack([attention[:, claimed], writing[:, claimed]], axis=1)  # [n, 2, m]

    def statistic(batch: np.ndarray) -> np.ndarray:
        return spearman_per_column(batch[:, :, 0, :], batch[:, :, 1, :]).mean(axis=-1)

    return Evidence(
        check=f"attention({role})-writing",
        rows=rows,
        statistic=statistic,
        threshold=claim.thresholds["spearman"],
        side=Side.AT_LEAST,
        null=permuted_pairs_null(rows, statistic),
        null_name="attention and writing paired at random across prompts",
        unit="Spearman rho",
    )
