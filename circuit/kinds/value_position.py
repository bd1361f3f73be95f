"""Value position: the claimed heads' values matter most at one role's position.

From value patching by position (:func:`~circuit.kinds.measurements.value_by_position`),
per prompt ``i`` and position ``p`` the recovery ``e[i, p]`` is the sum over the claimed
heads of (patched normalised metric - the prompt's corrupted normalised metric). Checks:

* ``share``: ``mean e[:, role] / sum_p |mean e[:, p]|`` is at least ``share``;
* ``largest``: ``(mean e[:, role] - max_{p != role} mean e[:, p]) / sum_p |mean e[:, p]|``
  is above 0 (the role's position is the largest).

Null: roles shuffled within each prompt (positions permuted independently in every prompt,
:func:`~circuit.statistics.permuted_columns_null`), on the same per-prompt data. Only
positions from the first one where clean and corrupted prompts differ take part: earlier
positions carry identical values in both runs, so their effect is zero by construction and
would make the null trivially easy to beat.
"""

import numpy as np
import torch

from circuit.claims import Claim
from circuit.kinds.measurements import Subject, normalised_baselines, value_by_position
from circuit.statistics import Evidence, Side, permuted_columns_null


def evidence(claim: Claim, subject: Subject) -> list[Evidence]:
    """The two checks of a value-position claim on one subject."""
    patched = value_by_position(subject)["patched"].double()  # [n, L, pos, H]
    _, corrupted = normalised_baselines(subject)
    heads = claim.primary_heads
    layers = [h.layer for h in heads]
    indices = [h.head for h in heads]
    per_head = patched.permute(0, 1, 3, 2)[:, layers, indices]  # [n, m, pos]
    effects = (per_head - corrupted.double()[:, None, None]).sum(dim=1)  # [n, pos]
    first = first_difference(subject.dataset.clean_tokens, subject.dataset.corrupted_tokens)
    rows = effects[:, first:].numpy()  # [n, pos - first]
    role = claim.roles["position"]
    if subject.dataset.roles[role] < first:
        raise ValueError(
            f"claim {claim.id!r}: role {role!r} lies before the first corrupted position "
            f"{first}, where value patching has no effect by construction"
        )
    position = subject.dataset.roles[role] - first
    positions = np.arange(rows.shape[1])
    null_text = f"'{role}' shuffled with the positions >= {first} within each prompt"

    def share(batch: np.ndarray) -> np.ndarray:
        means = batch.mean(axis=1)  # [B, pos]
        return means[:, position] / _total(means)

    def largest(batch: np.ndarray) -> np.ndarray:
        means = batch.mean(axis=1)
        others = np.delete(means, position, axis=1).max(axis=1)
        return (means[:, position] - others) / _total(means)

    return [
        Evidence(
            check=f"share@{role}",
            rows=rows,
            statistic=share,
            threshold=claim.thresholds["share"],
            side=Side.AT_LEAST,
            null=permuted_columns_null(rows, positions, share),
            null_name=null_text,
            unit="of the |value-patching effect|",
        ),
        Evidence(
            check=f"largest@{role}",
            rows=rows,
            statistic=largest,
            threshold=0.0,
            side=Side.AT_LEAST,
            null=permuted_columns_null(rows, positions, largest),
            null_name=null_text,
            unit="margin (of the |effect|)",
        ),
    ]


def first_difference(clean: torch.Tensor, corrupted: torch.Tensor) -> int:
    """The first position where any clean prompt differs from its corrupted twin."""
    differs = (clean != corrupted).any(dim=0)
    if not bool(differs.any()):
        raise ValueError("clean and corrupted prompts are identical: nothing to patch")
    return int(differs.nonzero()[0, 0])


def _total(means: np.ndarray) -> np.ndarray:
    total = np.abs(means).sum(axis=1)
    return np.where(total > 0, total, np.inf)
