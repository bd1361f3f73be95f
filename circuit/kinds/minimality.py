"""Minimality: every claimed head matters inside the circuit.

From :func:`~circuit.kinds.measurements.head_ablation` (the clean prompts, the claim's
ablation; :mod:`circuit.kinds.faithfulness`): ``x_C`` is the normalised metric when every head
outside the claimed set ``C`` is ablated (the sufficiency run), ``x_{C-h}`` the same with head
``h`` ablated too. Checks:

* ``gap``: the clean-corrupted gap is real (the shared floor);
* ``loss[head]``, one per claimed head: ``(mean x_C - mean x_{C-h}) / (mean clean - mean
  corrupted)``, the fraction of the gap lost when the head leaves the circuit, is at least
  ``loss`` (and so is a per-head floor: one check per head).

Null of ``loss[head]`` (Shi et al. 2024, "Hypothesis testing the circuit hypothesis in LLMs";
one sentence a reviewer can check): a random head from the claimed heads' layer range outside
the circuit is added to the circuit and then removed, ``(mean x_{C+r} - mean x_C) / gap``;
every such head is measured once per subject, and each level of the coarsest dataset factor
draws one of them (the claimed head among the candidates).
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
)
from circuit.kinds.measurements import Subject
from circuit.statistics import Evidence, VerdictSettings

if TYPE_CHECKING:
    from circuit.claims import Claim


def evidence(claim: Claim, subject: Subject, settings: VerdictSettings) -> list[Evidence]:
    """The checks of a minimality claim on one subject."""
    heads = claim.primary_heads
    n_layers, n_heads = subject.n_layers, subject.n_heads
    claimed = flat(heads, n_heads)
    outside = np.ones(n_layers * n_heads, dtype=bool)
    outside[claimed] = False
    pool, _ = layer_range_pool(heads, n_layers, n_heads, outside)
    low, high = pool.min() // n_heads, pool.max() // n_heads
    without = [np.delete(claimed, j) for j in range(len(heads))]
    added = [np.append(claimed, r) for r in pool]
    m = MaskSweep(claim, subject, masks_keeping([claimed, *without, *added], n_layers, n_heads))
    circuit = m.metric[:, 0]
    minus = m.metric[:, 1 : 1 + len(heads)]
    plus = m.metric[:, 1 + len(heads) :]
    null_name = (
        f"a random head of L{low}-L{high} outside the circuit ({pool.size} heads) added to it "
        "and removed"
    )
    checks = [gap_floor(subject, settings)]
    for j, head in enumerate(heads):
        checks.append(
            compared(
                f"loss[{head}]",
                circuit - minus[:, j],
                plus - circuit[:, None],
                m,
                claim.thresholds["loss"],
                null_name,
                f"of the gap lost when this head leaves the circuit ({m.ablation.describe()})",
            )
        )
    return checks


KIND = ClaimKind(
    name="minimality",
    schema=ablation_schema("loss"),
    evidence=evidence,
    check=ablation_options_rule,
)
