"""Path patching from every sender head into a set of receiver heads' q, k or v.

Two variants, both returning ``[n_layers, n_heads]`` indexed by *sender* (``[n, n_layers,
n_heads]`` per prompt), NaN in every row at or after the last receiver layer:

``mode="freeze"`` (the study's algorithm, IOI paper appendix B)
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

Speed: the clean and corrupted runs through :mod:`circuit.forward`
(each distinct prompt once), then a functional forward over the bridge's (folded) weights,
batched over senders and chunked by memory. Step 2 starts from the
cached residual at each sender's layer and recomputes only MLPs (frozen heads do not change);
step 3 starts at the first receiver layer (where only the receiver heads are recomputed); the last
layer computes only the final position when the metric is a ``LogitDiffMetric``, whose answer
logits are unembedded alone. No per-sender ``.item()``.

Every call proves its patch (:class:`PathPatchEvidence`): an unpatched row run through the same
functional code reproduces the bridge's own metric (per prompt on the first ``VERIFY_PROMPTS``
prompts with a ``LogitDiffMetric``, on all of them with a generic metric); the patched inputs
differ from the computed ones only at the receiver heads; some receiver input changed; and
(``verify=True``, the default) the sender that moved the receivers most is re-run through the
bridge's own hooks, which must fire at every intended site, touch only the receiver heads, and
give the same metric. Any failure
raises :class:`PatchNotAppliedError` (a :class:`circuit.guards.PatchNotApplied`).

The transformer_lens-style orientation difference, and where freeze and direct disagree, are
shown side by side by :func:`compare_path_modes`.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float, Int
from transformer_lens.model_bridge import TransformerBridge

from circuit.forward import (
    RunCache,
    answer_logits,
    cpu_chunk_cap,
    hidden_units,
    logits_of,
    run_pair,
    weights_of,
)
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
)
from circuit.metrics import LogitDiffMetric

ReceiverInput = Literal["q", "k", "v"]
PathMode = Literal["freeze", "direct"]
Head = tuple[int, int]
"""A head as ``(layer, head)``; every routine also takes :class:`circuit.claims.Head` and
``"L3H6"`` (see :func:`circuit.guards.as_heads`)."""
Metric = Callable[[torch.Tensor], torch.Tensor]

RECEIVER_INPUTS: tuple[str, ...] = ("q", "k", "v")
PATH_MODES: tuple[str, ...] = ("freeze", "direct")
DEFAULT_CHUNK_BYTES = 2**30
"""Working memory one chunk of senders may use (elementwise activations, roughly)."""
REPRODUCTION_ATOL, REPRODUCTION_RTOL = 1e-5, 1e-4
"""How far the functional run may drift from the bridge's own (hooked) output."""
_ACTIVATIONS = frozenset({"gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu"})
"""MLP activations the fast path supports (applied as the Hugging Face model does)."""


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
class _Weights:
    """The bridge's processed weights, stacked by layer (shapes as in transformer_lens)."""

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    b_Q: torch.Tensor
    b_K: torch.Tensor
    b_V: torch.Tensor
    W_O: torch.Tensor
    b_O: torch.Tensor
    W_in: torch.Tensor
    b_in: torch.Tensor
    W_out: torch.Tensor
    b_out: torch.Tensor
    W_U: torch.Tensor
    b_U: torch.Tensor
    eps: float
    act_name: str

    def w(self, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        return {"q": (self.W_Q, self.b_Q), "k": (self.W_K, self.b_K), "v": (self.W_V, self.b_V)}[
            kind
        ]


def _weights(model: TransformerBridge) -> _Weights:
    cfg = model.cfg
    if not getattr(cfg, "parallel_attn_mlp", False):
        raise PathPatchError(
            "the fast path supports parallel attention+MLP blocks (GPT-NeoX/Pythia) only"
        )
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        raise PathPatchError("grouped-query attention is not supported by the fast path")
    if cfg.act_fn not in _ACTIVATIONS or getattr(cfg, "gated_mlp", False):
        raise PathPatchError(f"unsupported MLP activation {cfg.act_fn!r} for the fast path")
    if getattr(cfg, "rotary_adjacent_pairs", False):
        raise PathPatchError("interleaved (adjacent-pair) rotary is not supported")
    if cfg.normalization_type not in ("LN", "LNPre"):
        raise PathPatchError(f"unsupported normalization {cfg.normalization_type!r}")
    names = ["W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O"]
    names += ["W_in", "b_in", "W_out", "b_out", "W_U", "b_U"]
    tensors = {name: getattr(model, name).detach() for name in names}
    return _Weights(**tensors, eps=float(cfg.eps), act_name=cfg.act_fn)


def _ln(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm with weights folded into the next matrices (centre and scale only)."""
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def _project(
    x_normed: Float[torch.Tensor, "... pos d_model"],
    weights: _Weights,
    kind: str,
    layer: int,
    heads: Sequence[int] | slice,
) -> Float[torch.Tensor, "... pos h d_head"]:
    w, b = weights.w(kind)
    w, b = w[layer, heads], b[layer, heads]
    out = x_normed @ w.permute(1, 0, 2).reshape(w.shape[1], -1)
    return out.unflatten(-1, (w.shape[0], w.shape[2])) + b


def _rotate(
    x: Float[torch.Tensor, "... pos h d_head"],
    rotary: tuple[torch.Tensor, torch.Tensor] | None,
    start: int,
) -> torch.Tensor:
    """GPT-NeoX rotary (rotate-half on the first ``rotary_dim`` dims) for positions from ``start``.

    ``rotary`` holds cos and sin, each ``[seq, rotary_dim]``; None means no rotary.
    """
    if rotary is None:
        return x
    stop = start + x.shape[-3]
    cos, sin = (table[start:stop, None, :] for table in rotary)
    dim = cos.shape[-1]
    rot, rest = x[..., :dim], x[..., dim:]
    first, second = rot[..., : dim // 2], rot[..., dim // 2 :]
    rotated = rot * cos + torch.cat([-second, first], dim=-1) * sin
    return torch.cat([rotated, rest], dim=-1)


def _attend(
    q: Float[torch.Tensor, "... q_pos h d_head"],
    k: Float[torch.Tensor, "... pos h d_head"],
    v: Float[torch.Tensor, "... pos h d_head"],
    rotary: tuple[torch.Tensor, torch.Tensor] | None,
) -> Float[torch.Tensor, "... q_pos h d_head"]:
    """Causal attention for the last ``q_pos`` query positions (q and k before rotary)."""
    n_q, n_k = q.shape[-3], k.shape[-3]
    q = _rotate(q, rotary, n_k - n_q)
    k = _rotate(k, rotary, 0)
    scores = torch.einsum("...qhe,...khe->...hqk", q, k) / q.shape[-1] ** 0.5
    query_pos = torch.arange(n_k - n_q, n_k, device=q.device)
    mask = torch.arange(n_k, device=q.device)[None, :] > query_pos[:, None]
    pattern = scores.masked_fill(mask, float("-inf")).softmax(dim=-1)
    return torch.einsum("...hqk,...khe->...qhe", pattern, v)


def _mlp(x: torch.Tensor, weights: _Weights, layer: int) -> torch.Tensor:
    """The MLP's output for ``x`` ``[..., d_model]`` (see :func:`circuit.forward.hidden_units`)."""
    flat = _ln(x, weights.eps).reshape(-1, x.shape[-1])
    hidden = hidden_units(flat, weights.W_in[layer], weights.b_in[layer], weights.act_name)
    out = torch.addmm(weights.b_out[layer], hidden, weights.W_out[layer])
    return out.view(*x.shape[:-1], -1)


@dataclass
class _Base:
    """The unpatched run the patched runs start from (clean for freeze, corrupted for direct)."""

    stream: list[torch.Tensor]
    """Residual before each layer, and after the last: ``n_layers + 1`` tensors ``[n, pos, d]``."""
    rotary: tuple[torch.Tensor, torch.Tensor] | None


def _run_bases(
    model: TransformerBridge, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor
) -> tuple[tuple[_Base, RunCache], tuple[_Base, RunCache]]:
    """The clean and corrupted runs through :func:`circuit.forward.run_pair` (every distinct
    prompt once, ``z`` kept): each as a :class:`_Base` and its :class:`RunCache`."""
    w = weights_of(model)
    runs = run_pair(w, clean_tokens, corrupted_tokens, {"z"}, {"z"})
    rotary = (w.cos, w.sin)
    return tuple(
        (_Base([*cache.resid_pre.unbind(0), cache.resid_final], rotary), cache) for cache in runs
    )


def _z_by_hook(cache: RunCache) -> dict[str, torch.Tensor]:
    """``hook_z`` of every layer, keyed by the bridge's hook names."""
    return {f"blocks.{layer}.attn.hook_z": z for layer, z in enumerate(cache.z)}


def _base_value(
    model: TransformerBridge,
    cache: RunCache,
    metric: Metric | LogitDiffMetric,
    n: int,
    per_prompt: bool,
) -> torch.Tensor:
    """The metric of an unpatched functional run (answer logits alone for the fast metric)."""
    w = weights_of(model)
    if isinstance(metric, LogitDiffMetric):
        logits = answer_logits(w, cache.resid_final[:, -1], metric.answers)
        return metric.from_answer_logits(logits)
    return _metric_value(metric, logits_of(w, cache), n, per_prompt)


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


def _splice(
    computed: torch.Tensor, patched: torch.Tensor, heads: list[int]
) -> tuple[torch.Tensor, float]:
    """``computed`` with the receiver heads' slice replaced; proves nothing else moved."""
    used = computed.expand(*patched.shape[:-2], *computed.shape[-2:]).clone()
    used[..., heads, :] = patched
    others = [head for head in range(computed.shape[-2]) if head not in heads]
    outside = (used[..., others, :] - computed[..., others, :]).abs().amax() if others else None
    return used, 0.0 if outside is None else float(outside)


def _step3(
    base: _Base,
    weights: _Weights,
    plan: _Plan,
    source: "_FrozenInputs | _EdgeInputs",
    final_only: bool,
) -> tuple[torch.Tensor, float]:
    """Re-run from the first receiver layer with the receivers' inputs patched.

    ``source.inputs(layer, resid)`` gives ``[S, n, pos, h, d_head]`` for that layer's receiver
    heads, from the live residual ``resid`` (``[n, pos, d]`` at the first layer, then
    ``[S, n, pos, d]``). Returns the final residual (``[S, n, 1, d]`` when ``final_only``, else
    ``[S, n, pos, d]``) and the largest change seen outside the receiver heads (must be 0).
    """
    kind = plan.receiver_input
    n_layers = len(base.stream) - 1
    first = plan.first_layer
    outside = 0.0
    heads = plan.receivers_by_layer[first]
    x_normed = _ln(base.stream[first], weights.eps)
    qkv = {name: _project(x_normed, weights, name, first, heads) for name in RECEIVER_INPUTS}
    unpatched_z = _attend(qkv["q"], qkv["k"], qkv["v"], base.rotary)
    receiver_patch = source.inputs(first, base.stream[first])
    qkv[kind], change = _splice(qkv[kind], receiver_patch, list(range(len(heads))))
    outside = max(outside, change)
    z = _attend(*(qkv[name] for name in RECEIVER_INPUTS), base.rotary)
    write = torch.einsum("...phe,hed->...pd", z - unpatched_z, weights.W_O[first, heads])
    resid = base.stream[first + 1] + write
    for layer in range(first + 1, n_layers):
        x_normed = _ln(resid, weights.eps)
        last = final_only and layer == n_layers - 1
        qkv = {name: _project(x_normed, weights, name, layer, slice(None)) for name in "kv"}
        q_source = x_normed[..., -1:, :] if last else x_normed
        qkv["q"] = _project(q_source, weights, "q", layer, slice(None))
        if layer in plan.receivers_by_layer:
            receiver_patch = source.inputs(layer, resid)
            if last and kind == "q":
                receiver_patch = receiver_patch[..., -1:, :, :]
            qkv[kind], change = _splice(qkv[kind], receiver_patch, plan.receivers_by_layer[layer])
            outside = max(outside, change)
        z = _attend(qkv["q"], qkv["k"], qkv["v"], base.rotary)
        attn_out = torch.einsum("...phe,hed->...pd", z, weights.W_O[layer]) + weights.b_O[layer]
        if last:
            resid = resid[..., -1:, :]
        resid = resid + attn_out + _mlp(resid, weights, layer)
    return resid, outside


def _freeze_inputs(
    base: _Base,
    weights: _Weights,
    plan: _Plan,
    senders: list[Head],
    z_clean: dict[str, torch.Tensor],
    z_corrupted: dict[str, torch.Tensor],
    start: int,
) -> "_FrozenInputs":
    """Step 2 for a chunk of senders sorted by layer: the receivers' recorded inputs.

    Positions before ``start`` (where clean and corrupted prompts first differ) cannot change
    (causal attention), so the senders' residual deltas are carried from ``start`` on only.
    """
    kind = plan.receiver_input
    n_senders = len(senders)
    layers = torch.tensor([layer for layer, _ in senders])
    stream = [resid[:, start:] for resid in base.stream]
    delta = torch.zeros((n_senders, *stream[0].shape), dtype=stream[0].dtype)
    delta = delta.to(stream[0].device)
    patched: dict[int, torch.Tensor] = {}
    for layer in range(plan.last_layer + 1):
        active = int((layers < layer).sum())
        if layer in plan.receivers_by_layer:
            heads = plan.receivers_by_layer[layer]
            unpatched = _project(_ln(base.stream[layer], weights.eps), weights, kind, layer, heads)
            inputs = unpatched.expand(n_senders, *unpatched.shape).clone()
            if active:
                shifted = _ln(stream[layer] + delta[:active], weights.eps)
                inputs[:active, :, start:] = _project(shifted, weights, kind, layer, heads)
            patched[layer] = inputs
        if layer == plan.last_layer:
            break
        if active:
            delta[:active] += _mlp(stream[layer] + delta[:active], weights, layer) - _mlp(
                stream[layer], weights, layer
            )
        here = (layers == layer).nonzero().flatten().tolist()
        if here:
            heads = [senders[index][1] for index in here]
            name = f"blocks.{layer}.attn.hook_z"
            dz = z_corrupted[name][:, start:, heads] - z_clean[name][:, start:, heads]
            writes = torch.einsum("nphe,hed->hnpd", dz, weights.W_O[layer, heads])
            delta[here[0] : here[-1] + 1] += writes
    return _FrozenInputs(patched, base, weights, plan)


class _FrozenInputs:
    """Freeze mode: the receivers' inputs recorded in step 2, replayed whatever the residual."""

    def __init__(
        self, patched: dict[int, torch.Tensor], base: _Base, weights: _Weights, plan: _Plan
    ) -> None:
        self.patched = patched
        per_layer = []
        for layer, heads in plan.receivers_by_layer.items():
            unpatched = _project(
                _ln(base.stream[layer], weights.eps), weights, plan.receiver_input, layer, heads
            )
            per_layer.append((patched[layer] - unpatched).abs().flatten(1).amax(dim=1))
        self.change = torch.stack(per_layer).amax(dim=0)

    def inputs(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        return self.patched[layer]


class _EdgeInputs:
    """Direct mode: each receiver reads the live residual plus its sender's edge write."""

    def __init__(
        self, writes: torch.Tensor, layers: torch.Tensor, weights: _Weights, plan: _Plan
    ) -> None:
        self.writes = writes
        self.layers = layers
        self.weights = weights
        self.plan = plan
        self.change = torch.zeros(writes.shape[0], device=writes.device, dtype=writes.dtype)

    def inputs(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        heads = self.plan.receivers_by_layer[layer]
        kind, eps = self.plan.receiver_input, self.weights.eps
        n_senders = self.writes.shape[0]
        live = _project(_ln(resid, eps), self.weights, kind, layer, heads)
        inputs = live.expand(n_senders, *live.shape[-4:]).clone()
        active = int((self.layers < layer).sum())
        if active:
            shifted = resid[:active] if resid.ndim == 4 else resid
            inputs[:active] = _project(
                _ln(shifted + self.writes[:active], eps), self.weights, kind, layer, heads
            )
        change = (inputs - live).abs().flatten(1).amax(dim=1)
        self.change = torch.maximum(self.change, change)
        return inputs


def _direct_inputs(
    base: _Base,
    weights: _Weights,
    plan: _Plan,
    senders: list[Head],
    z_clean: dict[str, torch.Tensor],
    z_corrupted: dict[str, torch.Tensor],
) -> _EdgeInputs:
    """Each sender's clean-minus-corrupted write ``[S, n, pos, d]``, for the direct edge."""
    n_senders = len(senders)
    writes = torch.zeros((n_senders, *base.stream[0].shape), dtype=base.stream[0].dtype)
    writes = writes.to(base.stream[0].device)
    for index, (layer, head) in enumerate(senders):
        if layer < plan.last_layer:
            name = f"blocks.{layer}.attn.hook_z"
            dz = z_clean[name][:, :, head] - z_corrupted[name][:, :, head]
            writes[index] = dz @ weights.W_O[layer, head]
    layers = torch.tensor([layer for layer, _ in senders])
    return _EdgeInputs(writes, layers, weights, plan)


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


def _metric_value(
    metric: Metric | LogitDiffMetric, logits: torch.Tensor, n: int, per_prompt: bool
) -> torch.Tensor:
    value = metric(logits)
    if not isinstance(value, torch.Tensor):
        raise PathPatchError(f"the metric returned {type(value).__name__}, not a tensor")
    return check_metric_output(value, per_prompt, n)


def _chunk_size(
    n: int, seq: int, weights: _Weights, vocab: int, chunk_bytes: int, itemsize: int
) -> int:
    """Senders per chunk so that one chunk's activations stay within ``chunk_bytes`` (and, on
    CPU, its widest activation within :data:`circuit.forward.CPU_TENSOR_BYTES`)."""
    d_model, d_mlp = weights.W_in.shape[-2:]
    n_heads = weights.W_Q.shape[1]
    per_sender = n * seq * (8 * d_model + 2 * d_mlp + 2 * n_heads * seq + vocab) * itemsize
    size = max(1, chunk_bytes // max(per_sender, 1))
    widest = n * seq * max(d_mlp, 3 * n_heads * weights.W_Q.shape[-1], vocab) * itemsize
    return min(size, cpu_chunk_cap(weights.W_in.device, widest, size))


@torch.no_grad()
def path_patch_detailed(
    model: TransformerBridge,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    metric: Metric | LogitDiffMetric,
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
    if isinstance(metric, LogitDiffMetric):
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
    weights = _weights(model)
    n, seq = clean_tokens.shape
    fast_metric = isinstance(metric, LogitDiffMetric)
    if fast_metric:
        if metric.answers.shape[0] != n:
            raise PathPatchError(
                f"metric has answers for {metric.answers.shape[0]} prompts, tokens hold {n}"
            )
        metric = metric.with_per_prompt(per_prompt)

    device = weights.W_U.device
    (clean_base, clean_run), (corrupted_base, corrupted_run) = _run_bases(
        model, clean_tokens.to(device), corrupted_tokens.to(device)
    )
    z_clean, z_corrupted = _z_by_hook(clean_run), _z_by_hook(corrupted_run)
    base = clean_base if mode == "freeze" else corrupted_base
    base_run = clean_run if mode == "freeze" else corrupted_run
    base_value = _base_value(model, base_run, metric, n, per_prompt)
    differs = (clean_tokens != corrupted_tokens).any(dim=0).nonzero().flatten()
    first_change = int(differs[0]) if len(differs) else 0

    senders = [*plan.senders, (plan.last_layer, -1)]
    vocab = 0 if fast_metric else weights.W_U.shape[1]
    size = _chunk_size(n, seq, weights, vocab, chunk_bytes, base.stream[0].element_size())
    values: list[torch.Tensor] = []
    changes: list[torch.Tensor] = []
    outside = 0.0
    chunks = 0
    for start in range(0, len(senders), size):
        chunk = senders[start : start + size]
        if mode == "freeze":
            source = _freeze_inputs(base, weights, plan, chunk, z_clean, z_corrupted, first_change)
        else:
            source = _direct_inputs(base, weights, plan, chunk, z_clean, z_corrupted)
        resid, chunk_outside = _step3(base, weights, plan, source, final_only=fast_metric)
        changes.append(source.change)
        outside = max(outside, chunk_outside)
        if fast_metric:
            final = _ln(resid[..., -1, :], weights.eps)
            answers = metric.answers.to(device)
            answer_logits = torch.einsum("snd,dna->sna", final, weights.W_U[:, answers])
            answer_logits = answer_logits + weights.b_U[answers]
            values.append(metric.with_per_prompt(True).from_answer_logits(answer_logits))
        else:
            logits = _ln(resid, weights.eps) @ weights.W_U + weights.b_U
            values.append(
                torch.stack([_metric_value(metric, row, n, per_prompt) for row in logits])
            )
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

    check_finite(all_values, describe, fast_metric or per_prompt, 0, n)
    per_prompt_values = all_values if fast_metric else None
    if fast_metric and not per_prompt:
        all_values = all_values.mean(dim=-1)
    all_changes = torch.cat(changes).float().cpu()
    null_value, sender_values = all_values[-1], all_values[:-1]
    null_rows = per_prompt_values[-1] if per_prompt_values is not None else null_value
    bridge_value = _bridge_value(model, base_run.tokens, metric, n, per_prompt)
    null_rows = null_rows[: bridge_value.shape[0]] if bridge_value.ndim else null_rows
    reproduction_error = float((null_rows - bridge_value.float().cpu()).abs().max())
    if reproduction_error > _tolerance(bridge_value):
        raise PatchNotAppliedError(
            f"the functional forward does not reproduce the model (metric off by "
            f"{reproduction_error:.3g}): unsupported architecture for the fast path"
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
        if per_prompt_values is not None:
            # Prompts are independent: a few of them, per prompt, prove the patch as well.
            keep = min(n, VERIFY_PROMPTS)
            tokens = (tokens[0][:keep], tokens[1][:keep])
            caches = tuple({name: z[:keep] for name, z in cache.items()} for cache in caches)
            check_metric = metric.for_prompts(keep)
            fast_value = per_prompt_values[flat, :keep]
        hooked = _hooked_value(
            model, tokens, caches, check_metric, plan, verified_sender, mode, weights
        )
        verification_error = float((hooked.float().cpu() - fast_value).abs().max())
        forwards += 2 if mode == "freeze" else 1
        if verification_error > _tolerance(fast_value):
            raise PatchNotAppliedError(
                f"sender {verified_sender}: the bridge's hooked run gives a metric "
                f"{verification_error:.3g} away from the fast value"
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
    metric: Metric | LogitDiffMetric,
    n: int,
    per_prompt: bool,
) -> torch.Tensor:
    """The bridge's own (unhooked) metric of the base prompts: per prompt on the first
    ``VERIFY_PROMPTS`` with the fast metric (prompts are independent), else on all of them."""
    if isinstance(metric, LogitDiffMetric):
        keep = min(n, VERIFY_PROMPTS)
        return metric.for_prompts(keep)(model(tokens[:keep]))
    return _metric_value(metric, model(tokens), n, per_prompt)


def _tolerance(value: torch.Tensor) -> float:
    return REPRODUCTION_ATOL + REPRODUCTION_RTOL * float(value.abs().max())


def _layer_of(hook_name: str) -> int:
    return int(hook_name.split(".")[1])


def _hooked_value(
    model: TransformerBridge,
    tokens: tuple[torch.Tensor, torch.Tensor],
    z_caches: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
    metric: Metric | LogitDiffMetric,
    plan: _Plan,
    sender: Head,
    mode: str,
    weights: _Weights,
) -> torch.Tensor:
    """One sender through the bridge's hooks, with proofs that each hook did its job.

    ``z_caches`` holds every layer's ``hook_z`` on the clean and on the corrupted prompts.
    """
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
            logits = model.run_with_hooks(
                corrupted_tokens, fwd_hooks=[(name, add_edge) for name in names]
            )
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
        model.run_with_hooks(
            clean_tokens,
            fwd_hooks=[
                (lambda name: name in z_names, freeze),
                *[(name, record) for name in receiver_names],
            ],
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

        logits = model.run_with_hooks(
            clean_tokens, fwd_hooks=[(name, patch_input) for name in receiver_names]
        )
        if len(moved) != len(receiver_names):
            raise PatchNotAppliedError(f"step 3 hooks fired {len(moved)}/{len(receiver_names)}")
    if max(moved, default=0.0) == 0.0:
        raise PatchNotAppliedError(f"sender {sender}: the hooked patch left every receiver as is")
    return metric(logits)


def path_patch(
    model: TransformerBridge,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    metric: Metric | LogitDiffMetric,
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
    metric: Metric | LogitDiffMetric,
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
