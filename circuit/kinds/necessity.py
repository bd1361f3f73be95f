"""Necessity: ablating the claimed heads removes the behaviour.

From :func:`~circuit.kinds.measurements.head_ablation` (the clean prompts, the claim's
ablation; :mod:`circuit.kinds.faithfulness`), with ``x`` the normalised metric when the claimed
heads are ablated. Checks:

* ``gap``: the clean-corrupted gap is real (the shared floor);
* ``drop``: ``(mean clean - mean x) / (mean clean - mean corrupted)``, the fraction of the
  clean-corrupted gap the ablation removes, is at least ``drop``;
* ``alone[head]``, one per named head (claims of two or more heads): ablating that head alone
  removes at least ``min_head_effect`` of the gap (a floor: a dead head named beside live ones
  would otherwise ride on their drop).

Null of ``drop`` (one sentence a reviewer can check): a random head set of the same size from
the claimed heads' layer range is ablated instead, one of
:data:`~circuit.kinds.faithfulness.NULL_SETS` sets measured once per subject, drawn per level
of the coarsest dataset factor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from circuit.kinds.base import ClaimKind
from circuit.kinds.common import flat, layer_range_pool
from circuit.kinds.faithfulness import (
    MaskSweep,
    ablation_options_rule,
    ablation_schema,
    compared,
    gap_floor,
    masks_ablating,
    per_head_floors,
    random_sets,
)
from circuit.kinds.measurements import Subject
from circuit.statistics import Evidence, VerdictSettings

if TYPE_CHECKING:
    from circuit.claims import Claim


def evidence(claim: Claim, subject: Subject, settings: VerdictSettings) -> list[Evidence]:
    """The checks of a necessity claim on one subject."""
    heads = claim.primary_heads
    n_layers, n_heads = subject.n_layers, subject.n_heads
    claimed = flat(heads, n_heads)
    pool, pool_text = layer_range_pool(heads, n_layers, n_heads)
    sets = random_sets(pool, len(heads))
    alone = [claimed[j : j + 1] for j in range(len(heads))] if len(heads) > 1 else []
    m = MaskSweep(claim, subject, masks_ablating([claimed, *sets, *alone], n_layers, n_heads))
    ablated = m.metric[:, 0]
    others = m.metric[:, 1 : 1 + len(sets)]
    single = m.metric[:, 1 + len(sets) :]
    null_name = (
        pool_text.replace(" per prompt", "")
        + f" ablated instead (one of {len(sets)} measured sets)"
    )
    return [
        gap_floor(subject, settings),
        compared(
            "drop",
            m.clean - ablated,
            m.clean[:, None] - others,
            m,
            claim.thresholds["drop"],
            null_name,
            f"of the gap removed ({m.ablation.describe()} of the claimed heads)",
        ),
        *per_head_floors(
            heads,
            m.clean[:, None] - single,
            m,
            settings.min_head_effect,
            "alone",
            "of the gap removed by ablating this head alone",
        ),
    ]


KIND = ClaimKind(
    name="necessity",
    schema=ablation_schema("drop"),
    evidence=evidence,
    check=ablation_options_rule,
)
