"""Every head of a model ranked by the measure a head claim uses, to see where the claimed
heads stand and which heads would be claimed at another revision.

Each function returns one score per head, ``[n_layers * n_heads]`` (flat index
``layer * n_heads + head``, NaN where the measure has no value), from the sweeps the claim's
own evidence reads (so ranking costs nothing more):

* :func:`by_direct_logit_attribution` (word movers): mean direct logit attribution;
* :func:`by_value_effect` (value position): mean value-patching effect at the claim's role;
* :func:`by_query_effect` (query influencers): mean path-patching effect into the claim's
  receivers' input (queries by default), as a fraction of the clean-corrupted gap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from circuit.kinds.measurements import (
    Subject,
    clean_run,
    normalised_baselines,
    path_query,
    value_by_position,
)

if TYPE_CHECKING:
    from circuit.claims import Claim


def by_direct_logit_attribution(claim: Claim, subject: Subject) -> np.ndarray:
    """Mean over prompts of each head's direct logit attribution (logits)."""
    return clean_run(subject)["dla"].double().mean(0).flatten().numpy()


def by_value_effect(claim: Claim, subject: Subject) -> np.ndarray:
    """Mean over prompts of each head's value-patching effect at ``claim.roles["position"]``
    (normalised metric minus its corrupted baseline)."""
    at = subject.dataset.roles[claim.roles["position"]]
    patched = value_by_position(subject, claim.primary_heads, at)["patched"].double()
    _, corrupted = normalised_baselines(subject)
    effect = patched[:, :, at, :] - corrupted.double()[:, None, None]  # [n, L, H]
    return effect.mean(0).flatten().numpy()


def by_query_effect(claim: Claim, subject: Subject) -> np.ndarray:
    """Mean over prompts of each sender's path-patching effect into the receivers' input the
    claim names (``receiver_input``, queries by default; clean normalised metric minus
    patched); NaN for heads with no path (and receivers)."""
    receivers = claim.heads["receivers"]
    receiver_input = str(claim.options.get("receiver_input", "q"))
    patched = path_query(subject, receivers, receiver_input)["patched"].double().flatten(1)
    clean, _ = normalised_baselines(subject)
    scores = (clean.double()[:, None] - patched).mean(0).numpy()
    scores[[h.layer * subject.n_heads + h.head for h in receivers]] = np.nan
    return scores


def top_heads(scores: np.ndarray, k: int, n_heads: int) -> tuple[str, ...]:
    """The ``k`` heads with the largest scores (NaN never ranks), written ``L3H6``."""
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    ranked = [int(i) for i in order if not np.isnan(scores[i])][:k]
    return tuple(f"L{i // n_heads}H{i % n_heads}" for i in ranked)
