"""Memory planning for the engine: bytes per batch row, run caches, sweep plans, scratch buffers.

A sweep holds two :class:`~circuit.engine.forward.RunCache` (clean and corrupted) of a chunk of
prompts and runs batches of patched variants through one forward; :func:`plan_sweep` splits the
prompts and the variants so that both fit a memory budget (and, on CPU, so that no single
activation crosses the allocator's fresh-page threshold, :data:`CPU_TENSOR_BYTES`).
:func:`scratch` hands out per-thread buffers reused by every layer for activations that never
leave one block.
"""

import threading
from dataclasses import dataclass

import torch

from circuit.engine.weights import ForwardError, ForwardWeights

DEFAULT_MEMORY_BUDGET = 2 * 2**30
"""Default bytes one chunked forward may use for its activations (weights not counted)."""

CPU_TENSOR_BYTES = 24 * 2**20
"""On CPU, the largest single activation of one chunked forward (``rows x pos x width``).

glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh pages, and the
page faults of a 40 MB buffer cost as much as the elementwise work on it; below the threshold
freed buffers are reused. Measured on this project's 2-core machine: the MLP of 4608 rows x
2048 takes 37 ms per matrix multiply and 11.6 ms per GELU, against 2 x 13.9 ms and 2 x 1.0 ms in
two halves of 2304 rows.
"""


def activation_bytes_per_row(
    d_model: int, n_heads: int, d_head: int, d_mlp: int, seq_len: int, bytes_per_element: int
) -> int:
    """An upper estimate of the activation bytes one batch row costs in :func:`forward`.

    Counts, per position, the tensors alive at once inside one layer (residual, normalised input,
    q/k/v rotated and not, z, attention scores and pattern over ``seq_len`` keys, MLP hidden
    before and after the activation, outputs, edit values and masks) with a factor of 2 for
    temporaries: a bound on the bytes *allocated* per layer (measured in the tests), hence
    on the peak.
    """
    per_pos = (
        6 * d_model  # resid, normalised, attn_out, mlp_out, sum, edit value
        + 8 * n_heads * d_head  # q, k, v, rotated q/k, z, edit value, mask
        + 3 * n_heads * seq_len  # scores, pattern, pattern edit
        + 3 * d_mlp  # mlp pre, post, temporary
    )
    return 2 * per_pos * seq_len * bytes_per_element


def bytes_per_row(w: ForwardWeights, seq_len: int) -> int:
    """:func:`activation_bytes_per_row` for these weights."""
    return activation_bytes_per_row(
        w.d_model, w.n_heads, w.d_head, w.d_mlp, seq_len, w.bytes_per_element
    )


def run_cache_bytes(
    n_layers: int, d_model: int, n_heads: int, d_head: int, n: int, seq_len: int, element: int
) -> int:
    """Bytes of one :class:`RunCache` of ``n`` prompts (a sweep holds two: clean, corrupted)."""
    per_layer = n * seq_len * (3 * d_model + 4 * n_heads * d_head + n_heads * seq_len)
    return (n_layers * per_layer + 2 * n * seq_len * d_model) * element


def plan_chunk_rows(
    w: ForwardWeights,
    seq_len: int,
    rows_per_variant: int,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    max_variants: int | None = None,
) -> int:
    """How many variants (each ``rows_per_variant`` batch rows) fit one forward's budget.

    Always at least 1; a single variant over budget still runs (the budget is then exceeded).
    """
    _check_budget(memory_budget)
    per_variant = bytes_per_row(w, seq_len) * rows_per_variant
    fit = max(1, memory_budget // max(per_variant, 1))
    return int(fit if max_variants is None else min(fit, max_variants))


def _check_budget(memory_budget: object) -> None:
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise ForwardError(
            f"memory_budget must be a positive integer (bytes), got {memory_budget!r}"
        )


@dataclass(frozen=True)
class SweepPlan:
    """How a sweep splits its prompts and variants to stay within a memory budget.

    ``prompts``: prompts per chunk (each chunk runs its own clean and corrupted caches);
    ``variants``: patched variants per forward; ``peak_bytes``: the estimated activation peak
    (two run caches of one prompt chunk plus one forward), weights not counted.
    """

    prompts: int
    variants: int
    peak_bytes: int


def plan_sweep(
    n_layers: int,
    d_model: int,
    n_heads: int,
    d_head: int,
    d_mlp: int,
    n: int,
    seq_len: int,
    n_variants: int,
    bytes_per_element: int,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    max_tensor_bytes: int | None = None,
    logit_width: int = 0,
    logits_reused: bool = False,
) -> SweepPlan:
    """Plan a sweep of ``n_variants`` patched variants of ``n`` prompts (see :class:`SweepPlan`).

    Prompts are split first (so that two run caches and one variant fit), then variants are
    batched into what is left. ``max_tensor_bytes`` further caps the variants per forward so
    that its widest activation (``rows x seq_len x max(d_mlp, 3 * n_heads * d_head)``) stays
    under it (see :data:`CPU_TENSOR_BYTES`); a single variant always runs. ``logit_width``: the
    logits one batch row ends with (``vocab`` for a final-position callable metric, ``seq_len x
    vocab`` for one that reads every position, 0 for the answer logits); ``logits_reused``: they
    are written into a reused buffer (:func:`scratch`), so they count against the budget but not
    against ``max_tensor_bytes`` (a kept buffer costs no fresh pages).
    """
    _check_budget(memory_budget)
    row = activation_bytes_per_row(d_model, n_heads, d_head, d_mlp, seq_len, bytes_per_element)
    row += 2 * logit_width * bytes_per_element
    cache = 2 * run_cache_bytes(n_layers, d_model, n_heads, d_head, 1, seq_len, bytes_per_element)
    prompts = int(min(n, max(1, memory_budget // (cache + row))))
    left = memory_budget - prompts * cache
    variants = int(min(n_variants, max(1, left // (row * prompts))))
    if max_tensor_bytes is not None:
        width = seq_len * max(d_mlp, 3 * n_heads * d_head)
        if not logits_reused:
            width = max(width, logit_width)
        widest = prompts * width * bytes_per_element
        variants = min(variants, max(1, max_tensor_bytes // max(widest, 1)))
    return SweepPlan(prompts, variants, prompts * cache + variants * prompts * row)


def plan_for(
    w: ForwardWeights,
    n: int,
    seq_len: int,
    n_variants: int,
    memory_budget: int,
    logit_width: int = 0,
    logits_reused: bool = False,
) -> SweepPlan:
    """:func:`plan_sweep` for these weights (``logit_width``, ``logits_reused``: see there)."""
    return plan_sweep(
        w.n_layers,
        w.d_model,
        w.n_heads,
        w.d_head,
        w.d_mlp,
        n,
        seq_len,
        n_variants,
        w.bytes_per_element,
        memory_budget,
        CPU_TENSOR_BYTES if w.device.type == "cpu" else None,
        logit_width,
        logits_reused,
    )


def cpu_chunk_cap(device: torch.device, widest_per_unit: int, default: int) -> int:
    """How many units (variants, senders) one chunk may batch so that its widest activation
    (``widest_per_unit`` bytes each) stays under :data:`CPU_TENSOR_BYTES` on CPU (at least
    one); ``default`` elsewhere."""
    if device.type != "cpu":
        return default
    return max(1, CPU_TENSOR_BYTES // max(widest_per_unit, 1))


_SCRATCH = threading.local()


def scratch(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A reusable (per thread and ``name``) buffer of ``shape`` (``like``'s dtype and device).

    For activations that never leave one block (the MLP's hidden units, the fused ``q/k/v``
    projection when it is not recorded): one buffer serves every layer and forward of the same
    shape, sparing a fresh allocation (and its page faults on CPU) each time. Valid until the
    next call with the same ``name`` on this thread.
    """
    key = (shape, like.dtype, like.device, torch.is_inference_mode_enabled())
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    if name not in buffers or buffers[name][0] != key:
        buffers[name] = (key, like.new_empty(shape))
    return buffers[name][1]
