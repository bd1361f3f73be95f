"""Query influencers: heads whose path into the receivers' queries carries the task.

From path patching into the receivers' queries
(:func:`~circuit.kinds.measurements.path_query`), the per-prompt effect of sender ``s`` is
the drop of the normalised metric from the prompt's clean value,
``e[i, s] = clean_norm[i] - patched[i, s]`` (the study's ``-(res - clean) / clean`` with
clean = 1), a fraction of the clean-corrupted gap. Candidates are the heads with a path (not
NaN) that are not receivers. Checks:

* ``gap``: the clean-corrupted gap is real (the shared floor);
* ``top-k``: every claimed sender ranks within the ``top_k`` candidates by mean effect;
  statistic: the weakest sender's mean effect minus the best effect ranked outside the top k
  (threshold 0);
* ``effect[sender]``, one per claimed sender: its own mean effect is at least ``effect``
  (a floor).

Null of ``top-k`` (one sentence a reviewer can check): the claimed senders are replaced by a
random sender set of the same size from the candidates of their layer range, drawn once per
level of the coarsest dataset factor.

Option ``receiver_input`` (``"q"`` when absent, as the study claims): which input of the
receivers the senders' paths enter, ``"q"``, ``"k"`` or ``"v"``; a claim that the senders steer
the receivers' *keys* states ``receiver_input = "k"`` and is judged on that path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from circuit.kinds.base import ClaimKind, KindSchema
from circuit.kinds.common import flat, gap_check, head_floor_checks, layer_range_pool, top_k_margin
from circuit.kinds.measurements import Subject, baselines, normalised_baselines, path_query
from circuit.kinds.rankings import by_query_effect
from circuit.statistics import (
    Evidence,
    Side,
    VerdictSettings,
    permuted_columns_null,
    weighted_mean,
)

if TYPE_CHECKING:
    from circuit.claims import Claim


def evidence(claim: Claim, subject: Subject, settings: VerdictSettings) -> list[Evidence]:
    """The checks of a query-influencer claim on one subject."""
    receivers = claim.heads["receivers"]
    receiver_input = str(claim.options.get("receiver_input", "q"))
    patched = path_query(subject, receivers, receiver_input)["patched"].double().flatten(1)
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
    clusters = subject.clusters
    pool, pool_text = layer_range_pool(senders, subject.n_layers, n_heads, candidates)
    pool_text += f", one set per {clusters.primary_name()}"
    k = int(claim.thresholds["top_k"])

    def margin(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return top_k_margin(weighted_mean(batch, weights), claimed, k, candidates)

    base = baselines(subject)
    return [
        gap_check(
            base["clean"].double().numpy(),
            base["corrupted"].double().numpy(),
            clusters,
            settings.min_gap,
        ),
        Evidence(
            check=f"top-{k}",
            rows=rows,
            clusters=clusters,
            statistic=margin,
            threshold=0.0,
            side=Side.AT_LEAST,
            null=permuted_columns_null(rows, pool, margin, clusters),
            null_name=pool_text,
            unit="margin (of the normalised metric)",
        ),
        *head_floor_checks(
            senders,
            rows[:, claimed],
            clusters,
            claim.thresholds["effect"],
            "effect",
            f"of the gap (path into the receivers' {receiver_input}, this sender alone)",
        ),
    ]


def _senders_before_receivers(claim: Claim) -> str | None:
    """No head is both sender and receiver, and every sender precedes the last receiver."""
    senders, receivers = claim.heads["heads"], claim.heads["receivers"]
    overlap = set(senders) & set(receivers)
    if overlap:
        return f"heads {sorted(map(str, overlap))} are both sender and receiver"
    last = max(r.layer for r in receivers)
    late = [str(s) for s in senders if s.layer >= last]
    if late:
        return f"sender(s) {late} are not before the last receiver layer {last}: no path exists"
    return None


KIND = ClaimKind(
    name="query-influencers",
    schema=KindSchema(
        heads=("heads", "receivers"),
        roles=(),
        thresholds=("top_k", "effect"),
        integer_thresholds=("top_k",),
        options={"receiver_input": ("q", "k", "v")},
    ),
    evidence=evidence,
    rank_heads=by_query_effect,
    check=_senders_before_receivers,
)
