"""The transformer engine: one lean forward of the GPT-NeoX family, with edits and proofs.

* :mod:`circuit.engine.weights`: the bridge's processed weights, extracted once;
* :mod:`circuit.engine.kernels`: LayerNorm, rotary, projections, attention, MLP (one each);
* :mod:`circuit.engine.forward`: the forward driver (edits, records, proofs, base runs);
* :mod:`circuit.engine.memory`: batch sizes from a memory budget, scratch buffers;
* :mod:`circuit.engine.lowrank`: the block after a head write at rank ``d_head``.

Activation patching, path patching, ablation and attribution all run through it. The
function ``forward`` is not re-exported here: ``circuit.engine.forward`` is its module.
"""

from circuit.engine.forward import (
    Edit,
    ForwardOutput,
    RunCache,
    answer_logits,
    first_difference,
    forward_after_write,
    logits_of,
    run,
    run_pair,
)
from circuit.engine.memory import DEFAULT_MEMORY_BUDGET, SweepPlan, plan_for, plan_sweep
from circuit.engine.weights import ForwardError, ForwardWeights, weights_of

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "Edit",
    "ForwardError",
    "ForwardOutput",
    "ForwardWeights",
    "RunCache",
    "SweepPlan",
    "answer_logits",
    "first_difference",
    "forward_after_write",
    "logits_of",
    "plan_for",
    "plan_sweep",
    "run",
    "run_pair",
    "weights_of",
]
