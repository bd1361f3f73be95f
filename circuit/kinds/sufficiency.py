"""Sufficiency: the claimed heads alone keep the behaviour when every other head is ablated.

From :func:`~circuit.kinds.measurements.head_ablation` (the clean prompts, the claim's
ablation; :mod:`circuit.kinds.faithfulness`), with ``x`` the normalised metric when every head
outside the claimed set is ablated. Checks:

* ``gap``: the clean-corrupted gap is real (the shared floor);
* ``recovered``: ``(mean x - mean corrupted) / (mean clean - mean corrupted)``, the fraction of
  the clean-corrupted gap the circuit keeps, is at least ``recovered``;
* ``removal[head]``, one per named head (claims of two or more heads): removing that head from
  the kept set loses at least ``min_head_effect`` of the gap (a floor: a dead head kept beside
  live ones would otherwise ride on their recovery).

Null of ``recovered`` (one sentence a reviewer can check): a random head set of the same size
from the claimed heads' layer range is kept in place of the claimed set, one of
:data:`~circuit.kinds.faithfulness.NULL_SETS` sets measured once per subject, drawn per level
of the coarsest dataset factor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from circuit.kinds.base import ClaimKind
from circuit.kinds.common import flat, layer_range_pool
from circuit.kinds.faithfulness import (
    MaskSweep,
    ablation_options_rule,
    ablation_schema,
    compared,
    gap_floor,
    masks_keeping,
    per_head_floors,
    random_sets,
)
from circuit.kinds.measurements import Subject
from circuit.statistics import Evidence, VerdictSettings

if TYPE_CHECKING:
    from circuit.claims import Claim


def evidence(claim: Claim, subject: Subject, settings: VerdictSettings) -> list[Evidence]:
    """The checks of a sufficiency claim on one subject."""
    heads = claim.primary_heads
    n_layers, n_heads = subject.n_layers, subject.n_heads
    claimed = flat(heads, n_heads)
    pool, pool_text = layer_range_pool(heads, n_layers, n_heads)
    sets = random_sets(pool, len(heads))
    without = [np.delete(claimed, j) for j in range(len(heads))] if len(heads) > 1 else []
    m = MaskSweep(claim, subject, masks_keeping([claimed, *sets, *without], n_layers, n_heads))
    circuit = m.metric[:, 0]
    kept = m.metric[:, 1 : 1 + len(sets)]
    minus = m.metric[:, 1 + len(sets) :]
    null_name = (
        pool_text.replace(" per prompt", "")
        + f" kept in place of the claimed set (one of {len(sets)} measured sets)"
    )
    return [
        gap_floor(subject, settings),
        compared(
            "recovered",
            circuit - m.corrupted,
            kept - m.corrupted[:, None],
            m,
            claim.thresholds["recovered"],
            null_name,
            f"of the gap kept ({m.ablation.describe()} of every other head)",
        ),
        *per_head_floors(
            heads,
            circuit[:, None] - minus,
            m,
            settings.min_head_effect,
            "removal",
            "of the gap lost when this head leaves the kept set",
        ),
    ]


KIND = ClaimKind(
    name="sufficiency",
    schema=ablation_schema("recovered"),
    evidence=evidence,
    check=ablation_options_rule,
)
