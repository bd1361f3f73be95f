"""Path patching from every sender head into a set of receiver heads' q, k or v.

Two variants, both returning ``[n_layers, n_heads]`` indexed by *sender* (``[n, n_layers,
n_heads]`` per prompt), NaN in every row at or after the last receiver layer:

``mode="freeze"`` (the study's algorithm)
    Run the clean prompts with every head's output frozen to its clean value except the sender's,
    which comes from the corrupted run; MLPs recompute; record the receivers' q, k or v; run the
    clean prompts again with only those receiver inputs patched; evaluate the metric. The path
    therefore includes sender -> MLPs -> receiver, not only the direct edge.

``mode="direct"`` (``transformer_lens.patching.get_act_patch_direct_path``)
    Run the *corrupted* prompts and add the sender's clean-minus-corrupted write
    ``(z_clean - z_corrupted) @ W_O`` to each receiver head's own pre-``ln1`` copy of the residual
    (the pre-Q/K/V fork); every other reader sees the corrupted run. The edge alone, restoring
    rather than corrupting, so values start near the corrupted score rather than the clean one.

A sender in the same layer as (or after) some receiver cannot reach that receiver: its value is
the effect through the later receivers only (those receivers keep their unpatched input), exactly
as the study's loop behaves. A receiver in layer 0 is allowed next to later receivers and never
receives anything.

Speed: everything runs on the shared engine (:mod:`circuit.engine`). The clean and corrupted
prompts run once each (:func:`~circuit.engine.forward.run_pair`). Senders are batched by layer
(``rows = senders x prompts``, chunked by memory) and every run starts at the first position
where clean and corrupted prompts differ (:func:`~circuit.engine.forward.first_difference`;
earlier positions cannot change). Freeze mode: step 2 resumes after the sender's layer from the
clean residual plus the senders' output change
(:func:`~circuit.engine.forward.forward_after_write`) with every later layer's attention output
frozen to its clean value (``Edit`` of ``attn_out``, so only MLPs run) and records the receivers'
inputs (the last receiver layer's for the receiver heads only; before last-layer ``q`` receivers
under a final-position metric, at the final position only); step 3 computes only the receiver
heads at the first receiver layer (:func:`~circuit.engine.forward.head_write`), then resumes
with ``Edit`` s of the later receivers' inputs. Direct mode: one forward of the corrupted
prompts from the first receiver layer with an additive ``Edit`` of the receivers'
``{q,k,v}_input``. With a metric that reads
the final position only (:func:`circuit.metrics.metric_access`: a ``LogitDiffMetric``, or a
callable that passes the probe and is then given ``[n, 1, vocab]``) the last layer computes only
the final position, and only the two answer logits (``LogitDiffMetric``) or the final position's
logits are unembedded; a callable runs once per chunk of senders (``vmap``). Parallel and
sequential (``use_parallel_residual=False``) blocks are both supported. No per-sender
``.item()``.

Every call proves its patch (:class:`PathPatchEvidence`): an unpatched row run through the same
functional code reproduces the bridge's own metric (per prompt on the first ``VERIFY_PROMPTS``
prompts with a ``LogitDiffMetric``; for a callable that reads the final position only, those
prompts' final logits and the metric once on every prompt, :class:`_FinalCallableProof`; on all
of them with a metric that reads every position); the patched inputs
differ from the computed ones only at the receiver heads; some receiver input changed; and
(``verify=True``, the default) the sender that moved the receivers most is re-run through the
bridge's own hooks, which must fire at every intended site, touch only the receiver heads, and
give the same metric. Any failure
raises :class:`PatchNotAppliedError` (a :class:`circuit.guards.PatchNotApplied`).

The transformer_lens-style orientation difference, and where freeze and direct disagree, are
shown side by side by :func:`compare_path_modes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float, Int

from circuit.engine.forward import (
    Edit,
    ForwardOutput,
    RunCache,
    answer_logits,
    final_logits,
    final_logits_of_runs,
    first_difference,
    forward,
    forward_after_write,
    head_mask,
    head_write,
    logits_of,
    run_pair,
)
from circuit.engine.kernels import input_projection
from circuit.engine.lowrank import NextMlp, mlp_after_head_write, prepare_next_mlp
from circuit.engine.memory import cpu_chunk_cap
from circuit.engine.weights import ForwardWeights, weights_of
from circuit.guards import (
    VERIFY_PROMPTS,
    PatchingError,
    PatchNotApplied,
    check_answers,
    check_finite,
    check_flag,
    check_heads,
    check_metric_output,
    check_model,
    check_positive_int,
    check_tokens,
    hooked_final_logits,
)
from circuit.heads import Head
from circuit.metrics import (
    FINAL_ONLY_CONTRACT,
    READS_FINAL,
    Metric,
    MetricAccess,
    MetricError,
    VariantCalls,
    metric_access,
    reads_answer_logits_only,
    wrong_guess,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

ReceiverInput = Literal["q", "k", "v"]
PathMode = Literal["freeze", "direct"]


RECEIVER_INPUTS: tuple[str, ...] = ("q", "k", "v")
PATH_MODES: tuple[str, ...] = ("freeze", "direct")
DEFAULT_CHUNK_BYTES = 2**30
"""Working memory one chunk of senders may use (elementwise activations, roughly)."""
REPRODUCTION_ATOL, REPRODUCTION_RTOL = 1e-5, 1e-4
"""How far the functional run may drift from the bridge's own (hooked) output."""


class PathPatchError(PatchingError):
    """Path patching was asked for something it cannot do (bad shapes, heads or options)."""


class PatchNotAppliedError(PatchNotApplied):
    """A path patch would silently have done nothing, or did not reproduce the model."""


@dataclass(frozen=True)
class PathPatchEvidence:
    """What a path-patching call did, so tests and users can check the patch took effect.

    ``receiver_change[l, h]`` is the largest absolute change sender ``(l, h)`` made to any
    receiver input (NaN where there is no sender); ``outside_change`` the largest change at any
    non-receiver head of a receiver layer before recomputation (always exactly 0);
    ``reproduction_error`` how far the unpatched functional run lies from the bridge's output;
    ``base_value`` the metric on the unpatched base run (clean for freeze, corrupted for direct);
    ``model_forwards`` bridge forwards run; ``sender_chunks`` batched functional passes;
    ``verified_sender`` the sender re-run through the bridge's own hooks (the one that moved
    the receivers most) and ``verification_error`` how far that hooked run's metric lies from
    the fast value (None when ``verify=False``).
    """

    receiver_change: Float[torch.Tensor, "n_layers n_heads"]
    outside_change: float
    reproduction_error: float
    base_value: torch.Tensor
    model_forwards: int
    sender_chunks: int
    patched_layers: tuple[int, ...] = field(default=())
    verified_sender: Head | None = None
    verification_error: float | None = None


@dataclass(frozen=True)
class PathPatchResult:
    """Values of :func:`path_patch` and the evidence that the patch happened."""

    values: Float[torch.Tensor, "n_layers n_heads"] | Float[torch.Tensor, "n n_layers n_heads"]
    evidence: PathPatchEvidence


@dataclass(frozen=True)
class PathModeComparison:
    """Freeze and direct path patching side by side, in comparable units.

    ``freeze`` and ``direct`` are the raw metric values. Effects are positive when the path
    carries the clean behaviour: ``freeze_effect = metric(clean) - freeze`` (how much corrupting
    the path costs the clean run) and ``direct_effect = direct - metric(corrupted)`` (how much
    restoring the edge gives the corrupted run). ``difference = freeze_effect - direct_effect``:
    large where MLP-mediated paths or non-linearity (noising vs denoising) matter.
    """

    freeze: torch.Tensor
    direct: torch.Tensor
    freeze_effect: torch.Tensor
    direct_effect: torch.Tensor
    difference: torch.Tensor


@dataclass(frozen=True)
class _Plan:
    receivers_by_layer: dict[int, list[int]]
    receiver_input: str
    senders: list[Head]

    @property
    def first_layer(self) -> int:
        return min(self.receivers_by_layer)

    @property
    def last_layer(self) -> int:
        return max(self.receivers_by_layer)


@dataclass(frozen=True, eq=False)
class _Runs:
    """The clean and corrupted runs, the base the patched runs start from, and ``start``: the
    first position where the prompts differ (nothing before it can change)."""

    clean: RunCache
    corrupted: RunCache
    mode: str
    start: int
    next_mlps: dict[int, NextMlp] = field(default_factory=dict)
    """Per sender layer, the clean run's next MLP for its rank-``d_head`` input (freeze mode)."""

    @property
    def base(self) -> RunCache:
        return self.clean if self.mode == "freeze" else self.corrupted

    def next_mlp(self, w: ForwardWeights, layer: int) -> NextMlp:
        if layer not in self.next_mlps:
            self.next_mlps[layer] = prepare_next_mlp(w, self.clean, layer)
        return self.next_mlps[layer]


def _runs(
    w: ForwardWeights, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, mode: str
) -> _Runs:
    """Both runs through :func:`circuit.engine.forward.run_pair` (each distinct prompt once),
    keeping what the patched runs read: the base run's ``q``/``k``/``v`` and ``z`` (earlier keys,
    receivers' unpatched inputs), the clean ``attn_out`` (frozen in freeze mode) and both ``z``."""
    heads = {"q", "k", "v", "z"}
    keep_clean, keep_corrupted = (
        (heads | {"attn_out"}, {"z"}) if mode == "freeze" else ({"z"}, heads)
    )
    clean, corrupted = run_pair(w, clean_tokens, corrupted_tokens, keep_clean, keep_corrupted)
    start = first_difference(clean_tokens, corrupted_tokens, 1)
    return _Runs(clean, corrupted, mode, start if start < clean_tokens.shape[1] else 0)


def _z_by_hook(cache: RunCache) -> dict[str, torch.Tensor]:
    """``hook_z`` of every layer, keyed by the bridge's hook names."""
    return {f"blocks.{layer}.attn.hook_z": z for layer, z in enumerate(cache.z)}


def _chunks(plan: _Plan, n_heads: int, size: int) -> list[tuple[int, list[int], bool]]:
    """``(sender layer, sender heads, with the null variant)`` per batch of senders, in the
    order of ``plan.senders``; the null variant (no sender) rides on the last batch."""
    chunks = []
    for layer in range(plan.last_layer):
        for first in range(0, n_heads, size):
            chunks.append((layer, list(range(first, min(first + size, n_heads))), False))
    layer, heads, _ = chunks[-1]
    chunks[-1] = (layer, heads, True)
    return chunks


@dataclass(frozen=True, eq=False)
class _Writes:
    """A batch of senders at one layer: each one's output change at positions ``start..``,
    ``delta [variants, n, pos, d_model] = z_diff[:, :, v] @ W_O[layer, heads[v]]``, and its
    factors ``z_diff [n, pos, variants, d_head]`` and ``heads [variants]`` (the null variant:
    zeros, head 0)."""

    delta: Float[torch.Tensor, "variants n pos d_model"]
    z_diff: Float[torch.Tensor, "n pos variants d_head"]
    heads: Int[torch.Tensor, " variants"]


def _sender_writes(
    w: ForwardWeights, runs: _Runs, layer: int, heads: list[int], with_null: bool
) -> _Writes:
    """Each sender's output change, ``(z_to - z_from) @ W_O``: clean to corrupted in freeze
    mode, corrupted to clean in direct mode; zero for the null variant."""
    to, source = (
        (runs.corrupted, runs.clean) if runs.mode == "freeze" else (runs.clean, runs.corrupted)
    )
    index = torch.tensor(heads, dtype=torch.long, device=w.device)
    dz = to.z[layer][:, runs.start :, index] - source.z[layer][:, runs.start :, index]
    if with_null:
        dz = torch.cat([dz, torch.zeros_like(dz[:, :, :1])], dim=2)
        index = torch.cat([index, index.new_zeros(1)])
    return _Writes(torch.einsum("nphe,hed->hnpd", dz, w.W_O[layer, index]), dz, index)


def _freeze_chunk(
    w: ForwardWeights, runs: _Runs, plan: _Plan, layer: int, writes: _Writes, outputs: dict
) -> tuple[ForwardOutput, torch.Tensor]:
    """Freeze mode for senders at ``layer`` (their writes ``[V, n, pos, d]``): step 2 records
    the receivers' inputs with every later head frozen to clean (MLPs recompute), step 3 runs
    the clean prompts with only those inputs patched. Returns step 3's output and each
    variant's largest change to a receiver input ``[V]``.

    With every head frozen, step 2 treats each position alone. When the last receivers sit in
    the model's last layer and read ``q`` under a final-position metric, step 3 computes only
    their final query, so step 2 runs the layer before them at the final position only. In a
    parallel-attention model the first MLP after the senders reads a rank-``d_head`` change, so
    its input projection runs at that rank (:func:`~circuit.engine.lowrank.mlp_after_head_write`).
    """
    kind, start, clean = plan.receiver_input, runs.start, runs.clean
    targets = [r for r in plan.receivers_by_layer if r > layer]
    last = targets[-1]
    final_query = (
        kind == "q"
        and bool(outputs.get("final_only"))
        and last == w.n_layers - 1
        and last - 1 > layer
    )
    stop = last - 1 if final_query else last
    heads_at = plan.receivers_by_layer
    recorded: dict[int, torch.Tensor] = {}  # receiver heads' inputs: [rows, pos, heads, d_head]
    after = layer
    if w.parallel and layer + 1 < stop:
        after = layer + 1
        next_mlp = runs.next_mlp(w, layer)
        x_after, resid = mlp_after_head_write(
            w, clean, next_mlp, writes.heads, writes.z_diff, writes.delta, start
        )
        if after in targets:
            recorded[after] = input_projection(w, after, x_after, kind, heads_at[after])
    frozen = [Edit(at, "attn_out", clean.attn_out[at], None) for at in range(after + 1, stop)]
    records = [(r, kind) for r in targets[:-1] if after < r < stop]
    if after == layer:
        step2 = forward_after_write(
            w, clean, layer, writes.delta, start, stop_layer=stop, edits=frozen, record=records
        )
    elif after + 1 < stop:
        step2 = forward(
            w,
            resid,
            start_layer=after + 1,
            stop_layer=stop,
            start_pos=start,
            prefix=clean,
            edits=frozen,
            record=records,
        )
    else:
        step2 = ForwardOutput(resid=resid)
    recorded.update({r: step2.records[(r, kind)][:, :, heads_at[r]] for r, _ in records})
    last_from = start
    if final_query:
        if stop in targets:
            recorded[stop] = input_projection(w, stop, step2.resid, kind, heads_at[stop])
        last_from = clean.tokens.shape[1] - 1
        tail = forward(
            w,
            step2.resid[:, -1:],
            start_layer=stop,
            stop_layer=last,
            start_pos=last_from,
            prefix=clean,
            edits=[Edit(stop, "attn_out", clean.attn_out[stop], None)],
        )
        recorded[last] = input_projection(w, last, tail.resid, kind, heads_at[last])
    else:
        recorded[last] = input_projection(w, last, step2.resid, kind, heads_at[last])
    variants = writes.delta.shape[0]
    change = writes.delta.new_zeros(variants)
    for r in targets:
        heads, positions = heads_at[r], recorded[r].shape[1]
        patched = recorded[r].view(variants, -1, positions, len(heads), w.d_head)
        moved = patched - clean.activation(kind, r)[:, -positions:, heads]
        change = torch.maximum(change, moved.abs().flatten(1).amax(dim=1))
    first, heads = targets[0], heads_at[targets[0]]
    first_from = last_from if first == last else start
    first_write = head_write(w, clean, first, heads, {kind: recorded[first]}, first_from)
    later = [
        Edit(
            r,
            kind,
            _every_head(recorded[r], heads_at[r], w.n_heads),
            head_mask(w, heads_at[r]),
            start=last_from if r == last else start,
        )
        for r in targets[1:]
    ]
    out = forward_after_write(
        w, clean, first, first_write, first_from, edits=later, prove=True, **outputs
    )
    return out, change


def _every_head(
    acts: Float[torch.Tensor, "rows pos heads d_head"], heads: Sequence[int], n_heads: int
) -> Float[torch.Tensor, "rows pos n_heads d_head"]:
    """``acts`` of ``heads`` placed in a head dim of ``n_heads`` (zeros elsewhere: an edit
    masked to ``heads`` reads nothing else)."""
    full = acts.new_zeros(*acts.shape[:2], n_heads, acts.shape[-1])
    full[:, :, list(heads)] = acts
    return full


def _direct_chunk(
    w: ForwardWeights, runs: _Runs, plan: _Plan, layer: int, writes: _Writes, outputs: dict
) -> tuple[ForwardOutput, torch.Tensor]:
    """Direct mode for senders at ``layer``: the corrupted prompts with each sender's write
    added to the receivers' own copy of the residual (an additive ``{q,k,v}_input`` edit)."""
    site, start = f"{plan.receiver_input}_input", runs.start
    targets = [r for r in plan.receivers_by_layer if r > layer]
    value = writes.delta.flatten(0, 1)[:, :, None, :]
    edits = [
        Edit(r, site, value, head_mask(w, plan.receivers_by_layer[r]), add=True, start=start)
        for r in targets
    ]
    base = runs.corrupted
    out = forward(
        w,
        base.resid_pre[targets[0]][:, start:],
        start_layer=targets[0],
        start_pos=start,
        prefix=base,
        edits=edits,
        prove=True,
        **outputs,
    )
    moved = torch.stack([out.changes[(r, site)] for r in targets]).amax(dim=0)
    return out, moved.view(writes.delta.shape[0], -1).amax(dim=1)


def _values(
    out: ForwardOutput,
    metric: Metric,
    n: int,
    calls: VariantCalls | None,
    base_logits: torch.Tensor | None,
    w: ForwardWeights,
    columns: torch.Tensor | None,
) -> torch.Tensor:
    """Metric values of a chunk's variants: ``[V, n]`` from the answer logits (``calls`` is
    None: the LogitDiffMetric), else ``[V]`` or ``[V, n]`` from the callable on the final
    position's logits ``[n, 1, vocab]`` (``base_logits`` None) or on full logits, the positions
    before the computed ones taken from ``base_logits`` (the base run's)."""
    if calls is None:
        return metric.with_per_prompt(True).from_answer_logits(out.answer_logits.view(-1, n, 2))
    if base_logits is None:
        logits = final_logits(w, out.resid[:, -1], columns)
        return calls(logits.view(-1, n, 1, w.d_vocab))
    logits = out.logits.view(-1, n, *out.logits.shape[1:])
    earlier = base_logits[:, : base_logits.shape[1] - logits.shape[2]].to(logits.dtype)
    if earlier.shape[1]:
        logits = torch.cat([earlier.expand(logits.shape[0], *earlier.shape), logits], dim=2)
    return calls(logits)


def _plan(model: TransformerBridge, receivers: Sequence[Head], receiver_input: str) -> _Plan:
    if receiver_input not in RECEIVER_INPUTS:
        raise PathPatchError(
            f"receiver_input must be one of {RECEIVER_INPUTS}, got {receiver_input!r}"
        )
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    receivers = check_heads(receivers, n_layers, n_heads, "receivers")
    by_layer: dict[int, list[int]] = {}
    for layer, head in receivers:
        by_layer.setdefault(layer, []).append(head)
    last = max(by_layer)
    if last == 0:
        raise PathPatchError("every receiver is in layer 0: no sender head comes before it")
    by_layer = {layer: sorted(heads) for layer, heads in sorted(by_layer.items())}
    senders = [(layer, head) for layer in range(last) for head in range(n_heads)]
    return _Plan(by_layer, receiver_input, senders)


def _metric_value(metric: Metric, logits: torch.Tensor, n: int, per_prompt: bool) -> torch.Tensor:
    return _checked(metric(logits), n, per_prompt)


def _checked(value: object, n: int, per_prompt: bool) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise PathPatchError(f"the metric returned {type(value).__name__}, not a tensor")
    return check_metric_output(value, per_prompt, n)


def _chunk_size(n: int, seq: int, w: ForwardWeights, vocab: int, chunk_bytes: int) -> int:
    """Senders per chunk so that one chunk's activations stay within ``chunk_bytes`` (and, on
    CPU, its widest activation within :data:`circuit.engine.memory.CPU_TENSOR_BYTES`)."""
    itemsize = w.bytes_per_element
    d_model, d_mlp, n_heads = w.d_model, w.d_mlp, w.n_heads
    per_sender = n * seq * (8 * d_model + 2 * d_mlp + 2 * n_heads * seq + vocab) * itemsize
    size = max(1, chunk_bytes // max(per_sender, 1))
    widest = n * seq * max(d_mlp, 3 * n_heads * w.d_head, vocab) * itemsize
    return min(size, cpu_chunk_cap(w.device, widest, size))


def _check_supported(model: TransformerBridge) -> None:
    """Refuse what the engine does not compute as the bridge does."""
    cfg = model.cfg
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        raise PathPatchError("grouped-query attention is not supported by the fast path")
    if getattr(cfg, "gated_mlp", False):
        raise PathPatchError("gated MLPs are not supported by the fast path")
    if getattr(cfg, "rotary_adjacent_pairs", False):
        raise PathPatchError("interleaved (adjacent-pair) rotary is not supported")


def _base_value(
    w: ForwardWeights,
    cache: RunCache,
    metric: Metric,
    n: int,
    per_prompt: bool,
    access: MetricAccess,
) -> torch.Tensor:
    """The metric of an unpatched run (answer logits alone for the fast metric, the final
    position's logits for a final-position callable)."""
    if reads_answer_logits_only(metric):
        logits = answer_logits(w, cache.resid_final[:, -1], metric.answers)
        return metric.from_answer_logits(logits)
    if access.final_only:
        logits = final_logits(w, cache.resid_final[:, -1], access.columns)
        return _metric_value(metric, logits, n, per_prompt)
    return _metric_value(metric, logits_of(w, cache), n, per_prompt)


@torch.no_grad()
def path_patch_detailed(
    model: TransformerBridge,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    metric: Metric,
    receivers: Sequence[Head],
    receiver_input: ReceiverInput,
    mode: PathMode = "freeze",
    per_prompt: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    verify: bool = True,
) -> PathPatchResult:
    """:func:`path_patch` with the evidence that every patch took effect.

    With ``verify`` the sender that moved the receivers most is re-run through the bridge's own
    hooks (two forwards for freeze, one for direct): the hooks must fire at every intended site,
    change the receiver heads' inputs and nothing else, and reproduce the fast value.
    """
    check_model(model, "path_patch")
    if mode not in PATH_MODES:
        raise PathPatchError(f"mode must be one of {PATH_MODES}, got {mode!r}")
    check_tokens(clean_tokens, corrupted_tokens, model.cfg.n_ctx, model.cfg.d_vocab)
    if reads_answer_logits_only(metric):
        check_answers(metric.answers, metric.answers.shape[0], model.cfg.d_vocab, "metric answers")
    elif not callable(metric):
        raise PathPatchError(
            f"path_patch: metric must be a LogitDiffMetric or a callable on logits, got "
            f"{type(metric).__name__}"
        )
    check_flag(per_prompt, "per_prompt")
    check_flag(verify, "verify")
    check_positive_int(chunk_bytes, "chunk_bytes")
    plan = _plan(model, receivers, receiver_input)
    _check_supported(model)
    w = weights_of(model)
    n, seq = clean_tokens.shape
    fast_metric = reads_answer_logits_only(metric)
    if fast_metric:
        if metric.answers.shape[0] != n:
            raise PathPatchError(
                f"metric has answers for {metric.answers.shape[0]} prompts, tokens hold {n}"
            )
        metric = metric.with_per_prompt(per_prompt)

    device = w.device
    runs = _runs(w, clean_tokens.to(device), corrupted_tokens.to(device), mode)
    z_clean, z_corrupted = _z_by_hook(runs.clean), _z_by_hook(runs.corrupted)
    base_run = runs.base
    calls = None
    if fast_metric:
        access = metric_access(metric)
        outputs = {"answers": metric.answers.to(device), "final_only": True}
        base_logits = None
        vocab = 0
    else:
        finals = final_logits_of_runs(w, runs.clean, runs.corrupted)
        access = metric_access(metric, finals, seq)
        del finals
        calls = VariantCalls(metric, lambda value: _checked(value, n, per_prompt))
        if access.final_only:
            outputs = {"final_only": True}  # the readout is final_logits of the output's resid
            base_logits = None
            vocab = -(-w.d_vocab // max(1, seq - runs.start))
        else:
            outputs = {"full_logits": True}
            base_logits = logits_of(w, base_run)
            vocab = w.d_vocab
    base_value = _base_value(w, base_run, metric, n, per_prompt, access)
    size = _chunk_size(n, seq - runs.start, w, vocab, chunk_bytes)
    run_chunk = _freeze_chunk if mode == "freeze" else _direct_chunk
    values: list[torch.Tensor] = []
    changes: list[torch.Tensor] = []
    outside = 0.0
    chunks = 0
    final_callable = not fast_metric and access.final_only
    null_final = None
    for layer, heads, with_null in _chunks(plan, w.n_heads, size):
        writes = _sender_writes(w, runs, layer, heads, with_null)
        out, change = run_chunk(w, runs, plan, layer, writes, outputs)
        if with_null and final_callable:
            null_final = out.resid[-n:, -1].clone()
        changes.append(change)
        if out.leaks:
            outside = max(outside, float(torch.stack(list(out.leaks.values())).max()))
        values.append(_values(out, metric, n, calls, base_logits, w, access.columns))
        chunks += 1

    all_values = torch.cat(values).float().cpu()

    def describe(index: tuple[int, ...]) -> str:
        if index[0] >= len(plan.senders):
            return "the unpatched base run"
        layer, head = plan.senders[index[0]]
        receivers_text = ",".join(
            f"L{r}H{h}" for r, heads in plan.receivers_by_layer.items() for h in heads
        )
        return f"the path from sender L{layer}H{head} into {receivers_text} ({receiver_input})"

    try:
        check_finite(all_values, describe, fast_metric or per_prompt, 0, n)
    except MetricError as error:
        if access.reads != READS_FINAL:
            raise
        raise MetricError(f"{error}. {wrong_guess(access)}") from error
    per_prompt_values = all_values if fast_metric else None
    if fast_metric and not per_prompt:
        all_values = all_values.mean(dim=-1)
    all_changes = torch.cat(changes).float().cpu()
    null_value, sender_values = all_values[-1], all_values[:-1]
    null_rows = per_prompt_values[-1] if per_prompt_values is not None else null_value
    if final_callable:
        keep = min(n, VERIFY_PROMPTS)
        bridge_final = hooked_final_logits(model, base_run.tokens[:keep])
        proved = _FinalCallableProof(w, metric, access, n, per_prompt, seq)
        reproduction_error, tolerance = proved.error(bridge_final, null_final, null_value)
    else:
        bridge_value = _bridge_value(model, base_run.tokens, metric, n, per_prompt)
        null_rows = null_rows[: bridge_value.shape[0]] if bridge_value.ndim else null_rows
        reproduction_error = float((null_rows - bridge_value.float().cpu()).abs().max())
        tolerance = _tolerance(bridge_value)
    if reproduction_error > tolerance:
        raise PatchNotAppliedError(
            f"the functional forward does not reproduce the model (metric off by "
            f"{reproduction_error:.3g}): unsupported architecture for the fast path"
            + (
                f", or a metric that reads earlier positions ({FINAL_ONLY_CONTRACT})"
                if access.reads == READS_FINAL
                else ""
            )
        )
    if outside != 0.0:
        raise PatchNotAppliedError(f"a patch leaked outside the receiver heads ({outside:.3g})")
    if not bool((all_changes[:-1] > 0).any()):
        raise PatchNotAppliedError(
            f"no sender changed any receiver's {receiver_input} input: the clean and corrupted "
            "runs agree on every path (identical prompts?)"
        )

    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    grid = torch.full((n_layers, n_heads), float("nan"))
    grid[: plan.last_layer] = all_changes[:-1].reshape(plan.last_layer, n_heads)
    shape = (n, n_layers, n_heads) if per_prompt else (n_layers, n_heads)
    result = torch.full(shape, float("nan"))
    block = sender_values.reshape(plan.last_layer, n_heads, *sender_values.shape[1:])
    if per_prompt:
        result[:, : plan.last_layer] = block.permute(2, 0, 1)
    else:
        result[: plan.last_layer] = block
    verified_sender, verification_error, forwards = None, None, 1
    if verify:
        flat = int(grid[: plan.last_layer].flatten().argmax())
        verified_sender = divmod(flat, n_heads)
        tokens = (clean_tokens.to(device), corrupted_tokens.to(device))
        caches = (z_clean, z_corrupted)
        check_metric, fast_value = metric, block[verified_sender]
        if per_prompt_values is not None or final_callable:
            # Prompts are independent: a few of them, per prompt, prove the patch as well.
            keep = min(n, VERIFY_PROMPTS)
            tokens = (tokens[0][:keep], tokens[1][:keep])
            caches = tuple({name: z[:keep] for name, z in cache.items()} for cache in caches)
        if per_prompt_values is not None:
            check_metric = metric.for_prompts(keep)
            fast_value = per_prompt_values[flat, :keep]
        final_only = per_prompt_values is not None or final_callable
        logits = _hooked_logits(model, tokens, caches, plan, verified_sender, mode, w, final_only)
        if final_callable:
            layer, head = verified_sender
            writes = _sender_writes(w, runs, layer, [head], False)
            sender_final = run_chunk(w, runs, plan, layer, writes, outputs)[0].resid[:, -1]
            verification_error, tolerance = proved.error(logits, sender_final, fast_value)
        else:
            hooked = check_metric(logits)
            verification_error = float((hooked.float().cpu() - fast_value).abs().max())
            tolerance = _tolerance(fast_value)
        forwards += 2 if mode == "freeze" else 1
        if verification_error > tolerance:
            guess = f". {wrong_guess(access)}" if access.reads == READS_FINAL else ""
            raise PatchNotAppliedError(
                f"sender {verified_sender}: the bridge's hooked run gives a metric "
                f"{verification_error:.3g} away from the fast value{guess}"
            )
    evidence = PathPatchEvidence(
        receiver_change=grid,
        outside_change=outside,
        reproduction_error=reproduction_error,
        base_value=base_value.detach().float().cpu(),
        model_forwards=forwards,
        sender_chunks=chunks,
        patched_layers=tuple(plan.receivers_by_layer),
        verified_sender=verified_sender,
        verification_error=verification_error,
    )
    return PathPatchResult(result, evidence)


def _bridge_value(
    model: TransformerBridge,
    tokens: torch.Tensor,
    metric: Metric,
    n: int,
    per_prompt: bool,
) -> torch.Tensor:
    """The bridge's own (unhooked) metric of the base prompts: per prompt on the first
    ``VERIFY_PROMPTS`` with the fast metric (prompts are independent), else on all of them."""
    if reads_answer_logits_only(metric):
        keep = min(n, VERIFY_PROMPTS)
        return metric.for_prompts(keep)(hooked_final_logits(model, tokens[:keep]))
    return _metric_value(metric, model(tokens), n, per_prompt)


def _tolerance(value: torch.Tensor) -> float:
    return REPRODUCTION_ATOL + REPRODUCTION_RTOL * float(value.abs().max())


def _layer_of(hook_name: str) -> int:
    return int(hook_name.split(".")[1])


def _hooked_logits(
    model: TransformerBridge,
    tokens: tuple[torch.Tensor, torch.Tensor],
    z_caches: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
    plan: _Plan,
    sender: Head,
    mode: str,
    weights: ForwardWeights,
    final_only: bool,
) -> Float[torch.Tensor, "n seq vocab"] | Float[torch.Tensor, "n 1 vocab"]:
    """One sender through the bridge's hooks, with proofs that each hook did its job; the
    hooked run's logits, at the final position only with ``final_only``
    (:func:`~circuit.guards.hooked_final_logits`).

    ``z_caches`` holds every layer's ``hook_z`` on the clean and on the corrupted prompts.
    """

    def run(tokens: torch.Tensor, hooks: list) -> torch.Tensor:
        if final_only:
            return hooked_final_logits(model, tokens, hooks)
        return model.run_with_hooks(tokens, fwd_hooks=hooks)

    clean_tokens, corrupted_tokens = tokens
    frozen_cache, corrupted_z = z_caches
    kind = plan.receiver_input
    n_layers = model.cfg.n_layers
    sender_layer, sender_head = sender
    z_name = f"blocks.{sender_layer}.attn.hook_z"
    z_clean = frozen_cache[z_name][:, :, sender_head]
    z_corrupted = corrupted_z[z_name][:, :, sender_head]
    targets = {
        layer: heads for layer, heads in plan.receivers_by_layer.items() if layer > sender_layer
    }
    moved: list[float] = []

    def check_only_receivers(before: torch.Tensor, after: torch.Tensor, heads: list[int]) -> None:
        others = [head for head in range(before.shape[2]) if head not in heads]
        if others and bool((after[:, :, others] != before[:, :, others]).any()):
            raise PatchNotAppliedError(f"hooked patch changed non-receiver heads {others}")
        moved.append(float((after[:, :, heads] - before[:, :, heads]).abs().max()))

    if mode == "direct":
        write = (z_clean - z_corrupted) @ weights.W_O[sender_layer, sender_head]
        fired: list[int] = []

        def add_edge(fork: torch.Tensor, hook) -> torch.Tensor:
            heads = targets[_layer_of(hook.name)]
            patched = fork.clone()
            patched[:, :, heads] += write[:, :, None]
            check_only_receivers(fork, patched, heads)
            fired.append(_layer_of(hook.name))
            return patched

        names = [f"blocks.{layer}.attn.hook_{kind}_input" for layer in targets]
        saved = bool(getattr(model.cfg, "use_split_qkv_input", False))
        model.set_use_split_qkv_input(True)
        try:
            logits = run(corrupted_tokens, [(name, add_edge) for name in names])
        finally:
            model.set_use_split_qkv_input(saved)
        if sorted(fired) != sorted(targets):
            raise PatchNotAppliedError(f"edge hooks fired at layers {fired}, not {list(targets)}")
    else:
        frozen_layers: list[int] = []
        recorded: dict[int, torch.Tensor] = {}
        z_names = {f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)}

        def freeze(z: torch.Tensor, hook) -> torch.Tensor:
            layer = _layer_of(hook.name)
            frozen = frozen_cache[f"blocks.{layer}.attn.hook_z"].clone()
            if layer == sender_layer:
                frozen[:, :, sender_head] = z_corrupted
            frozen_layers.append(layer)
            return frozen

        def record(activation: torch.Tensor, hook) -> None:
            recorded[_layer_of(hook.name)] = activation.clone()

        receiver_names = [f"blocks.{layer}.attn.hook_{kind}" for layer in plan.receivers_by_layer]
        hooked_final_logits(  # only the recorded receiver inputs are used
            model,
            clean_tokens,
            [(lambda name: name in z_names, freeze), *[(name, record) for name in receiver_names]],
        )
        if sorted(frozen_layers) != list(range(n_layers)) or set(recorded) != set(
            plan.receivers_by_layer
        ):
            raise PatchNotAppliedError(
                f"step 2 hooks froze layers {sorted(frozen_layers)} and recorded {sorted(recorded)}"
            )

        def patch_input(activation: torch.Tensor, hook) -> torch.Tensor:
            heads = plan.receivers_by_layer[_layer_of(hook.name)]
            patched = activation.clone()
            patched[:, :, heads] = recorded[_layer_of(hook.name)][:, :, heads]
            check_only_receivers(activation, patched, heads)
            return patched

        logits = run(clean_tokens, [(name, patch_input) for name in receiver_names])
        if len(moved) != len(receiver_names):
            raise PatchNotAppliedError(f"step 3 hooks fired {len(moved)}/{len(receiver_names)}")
    if max(moved, default=0.0) == 0.0:
        raise PatchNotAppliedError(f"sender {sender}: the hooked patch left every receiver as is")
    return logits


@dataclass(frozen=True)
class _FinalCallableProof:
    """How a callable that reads the final position only is proved against the bridge: on the
    first ``VERIFY_PROMPTS`` prompts the bridge's final-position logits at the columns the
    metric reads must equal the engine's, and the metric, called once on ``[n, seq, vocab]``
    logits (at the final position the bridge's for those prompts and the engine's for every
    other prompt; every earlier position NaN), must give the engine's value. A metric that
    reads an earlier position on this input sees NaN and fails loudly."""

    w: ForwardWeights
    metric: Metric
    access: MetricAccess
    n: int
    per_prompt: bool
    seq: int

    def error(
        self,
        bridge_final: Float[torch.Tensor, "keep 1 vocab"],
        engine_final: Float[torch.Tensor, "n d_model"],
        value: torch.Tensor,
    ) -> tuple[float, float]:
        """The largest difference, scaled to the value's tolerance, and that tolerance."""
        finals = final_logits(self.w, engine_final, self.access.columns)  # [n, 1, vocab]
        keep = bridge_final.shape[0]
        read = slice(None) if self.access.columns is None else self.access.columns
        bridge_read = bridge_final[:, -1, read].float()
        logit_error = float((bridge_read - finals[:keep, 0, read].float()).abs().max())
        if logit_error != logit_error:  # NaN: a read column the engine did not compute
            logit_error = float("inf")
        logits = finals.new_full((self.n, self.seq, self.w.d_vocab), float("nan"))
        logits[:, -1] = finals[:, 0]
        logits[:keep, -1] = bridge_final[:, -1].to(logits)
        try:
            got = _metric_value(self.metric, logits, self.n, self.per_prompt)
        except (MetricError, PathPatchError) as error:
            raise PatchNotAppliedError(f"{error}. {wrong_guess(self.access)}") from error
        if not bool(torch.isfinite(got).all()):
            raise PatchNotAppliedError(
                f"the metric is not finite on the bridge's logits with earlier positions NaN "
                f"elsewhere. {wrong_guess(self.access)}"
            )
        value_error = float((got.float().cpu() - value.float().cpu()).abs().max())
        tolerance = _tolerance(value.float())
        scale = tolerance / _tolerance(bridge_read)
        return max(value_error, logit_error * scale), tolerance


def path_patch(
    model: TransformerBridge,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    metric: Metric,
    receivers: Sequence[Head],
    receiver_input: ReceiverInput,
    mode: PathMode = "freeze",
    per_prompt: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    verify: bool = True,
) -> Float[torch.Tensor, "n_layers n_heads"] | Float[torch.Tensor, "n n_layers n_heads"]:
    """Path patching from every sender head into ``receivers``' ``receiver_input``.

    ``receivers`` is a list of heads, each ``(layer, head)``, a :class:`circuit.claims.Head` or
    ``"L3H6"`` (:func:`circuit.guards.as_heads`); senders are all heads in layers before the last
    receiver's layer. Returns the metric per sender, ``[n_layers, n_heads]`` (``[n, n_layers,
    n_heads]`` with ``per_prompt``), NaN at and after the last receiver layer. ``metric`` is a
    :class:`~circuit.metrics.LogitDiffMetric` (fast: only the answer logits are computed) or any
    callable from logits ``[n, seq, vocab]`` to a scalar (``[n]`` with ``per_prompt``). See the
    module docstring for ``mode``. ``chunk_bytes`` bounds the working memory of one batch of
    senders. ``verify`` re-runs one sender through the bridge's hooks as a proof (see
    :func:`path_patch_detailed`).
    """
    return path_patch_detailed(
        model,
        clean_tokens,
        corrupted_tokens,
        metric,
        receivers,
        receiver_input,
        mode,
        per_prompt,
        chunk_bytes,
        verify,
    ).values


def compare_path_modes(
    model: TransformerBridge,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    metric: Metric,
    receivers: Sequence[Head],
    receiver_input: ReceiverInput,
    per_prompt: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    verify: bool = True,
) -> PathModeComparison:
    """Freeze (the study's) and direct (transformer_lens's) path patching side by side."""
    arguments = (model, clean_tokens, corrupted_tokens, metric, receivers, receiver_input)
    freeze = path_patch_detailed(*arguments, "freeze", per_prompt, chunk_bytes, verify)
    direct = path_patch_detailed(*arguments, "direct", per_prompt, chunk_bytes, verify)
    clean_value = freeze.evidence.base_value
    corrupted_value = direct.evidence.base_value
    if per_prompt:
        clean_value = clean_value[:, None, None]
        corrupted_value = corrupted_value[:, None, None]
    freeze_effect = clean_value - freeze.values
    direct_effect = direct.values - corrupted_value
    return PathModeComparison(
        freeze=freeze.values,
        direct=direct.values,
        freeze_effect=freeze_effect,
        direct_effect=direct_effect,
        difference=freeze_effect - direct_effect,
    )
