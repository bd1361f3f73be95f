"""Query influencers: heads whose path into the receivers' queries carries the task.

From path patching into the receivers' queries
(:func:`~circuit.kinds.measurements.path_query`), the per-prompt effect of sender ``s`` is
the drop of the normalised metric from the prompt's clean value,
``e[i, s] = clean_norm[i] - patched[i, s]`` (the study's ``-(res - clean) / clean`` with
clean = 1). Candidates are the heads with a path (not NaN) that are not receivers. Checks:

* ``top-k``: every claimed sender ranks within the ``top_k`` candidates by mean effect;
  statistic: the weakest sender's mean effect minus the best effect ranked outside the top k
  (threshold 0);
* ``effect``: the weakest claimed sender's mean effect is at least ``effect``.

Null: random sender sets of the claimed size from the candidates in the senders' layer range,
drawn afresh in every prompt (:func:`~circuit.statistics.permuted_columns_null`).
"""

import numpy as np

from circuit.claims import Claim
from circuit.kinds.common import flat, layer_range_pool, top_k_margin
from circuit.kinds.measurements import Subject, normalised_baselines, path_query
from circuit.statistics import Evidence, Side, permuted_columns_null


def evidence(claim: Claim, subject: Subject) -> list[Evidence]:
    """The two checks of a query-influencer claim on one subject."""
    receivers = claim.heads["receivers"]
    patched = path_query(subject, receivers)["patched"].double().flatten(1)  # [n, K]
    clean, _ = normalised_baselines(subject)
    effects = clean.double()[:, None] - patched
    n_heads = subject.n_heads
    candidates = ~np.isnan(effects.numpy()).any(axis=0)
    candidates[flat(receivers, n_heads)] = False
    rows = np.nan_to_num(effects.numpy(), nan=0.0)  # [n, K]
    senders = claim.primary_heads
    claimed = flat(senders, n_heads)
    if not candidates[claimed].all():
        raise ValueError(f"claim {claim.id!r}: a claimed sender has no path to the receivers")
    pool, pool_text = layer_range_pool(senders, subject.n_layers, n_heads, candidates)
    k = int(claim.thresholds["top_k"])

    def margin(batch: np.ndarray) -> np.ndarray:
        return top_k_margin(batch.mean(axis=1), claimed, k, candidates)

    def weakest(batch: np.ndarray) -> np.ndarray:
        return batch.mean(axis=1)[:, claimed].min(axis=1)

    return [
        Evidence(
            check=f"top-{k}",
            rows=rows,
            statistic=margin,
            threshold=0.0,
            side=Side.AT_LEAST,
            null=permuted_columns_null(rows, pool, margin),
            null_name=pool_text,
            unit="margin (of the normalised metric)",
        ),
        Evidence(
            check="effect",
            rows=rows,
            statistic=weakest,
            threshold=claim.thresholds["effect"],
            side=Side.AT_LEAST,
            null=permuted_columns_null(rows, pool, weakest),
            null_name=pool_text,
            unit="of the normalised metric (weakest sender)",
        ),
    ]
