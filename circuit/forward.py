"""A lean functional forward pass over a TransformerBridge's processed weights.

Patching sweeps spend their time in forward passes. The bridge's own forward runs every layer at
every position, fires dozens of hooks and unembeds the whole vocabulary; a sweep needs much less.
This module re-implements the forward of the GPT-NeoX family as the bridge computes it in
compatibility mode (folded LayerNorm, rotary on a fraction of each head, parallel or sequential
attention + MLP) from weights extracted once, and lets a caller

* start at any layer from a given residual stream (earlier layers do not change under a patch);
* recompute only positions ``>= start_pos``, reading the keys and values of earlier positions from
  a base run (:class:`RunCache`), since a patch at position ``p`` cannot change earlier positions;
* edit per-head ``q``, ``k``, ``v``, ``pattern`` or ``z`` (and whole ``attn_out`` / ``mlp_out``)
  at any layer for any subset of batch rows (:class:`Edit`);
* freeze attention outputs to given values while MLPs recompute (an ``Edit`` of ``z`` or
  ``attn_out`` with ``mask=None``: the attention of that layer is then not computed at all);
* record activations at chosen ``(layer, site)`` pairs (e.g. receivers' ``q`` in path patching);
* compute only the final position's answer logits (``ln_final`` then the two answer columns of
  ``W_U`` plus ``b_U``) instead of the full unembedding;
* batch many patched variants of the same prompts into one forward (``rows = variants x prompts``,
  variant-major) and size those batches with :func:`plan_chunk_rows` from a memory budget.

Conventions (the same as the bridge's hooks):

* ``resid``: ``[batch, pos, d_model]``; ``q``/``k``/``v``/``z``: ``[batch, pos, head, d_head]``
  with ``q``/``k`` *before* rotary, as ``hook_q``/``hook_k``; ``pattern``: ``[batch, head,
  query_pos, key_pos]`` after softmax, as ``hook_pattern``; ``attn_out``/``mlp_out``:
  ``[batch, pos, d_model]``.
* Batch rows: a forward's batch ``B`` may be a multiple of the base batch ``n`` (``B = V * n``,
  row ``v * n + i`` is variant ``v`` of prompt ``i``). Anything with a leading dim of ``n`` (the
  base run in ``prefix``, edit values and masks, ``answers``) is shared by all variants; a leading
  dim of ``B`` gives each row its own; a leading dim of ``1`` broadcasts.
* Positions: tensors passed in (edit values and masks) are in full-sequence coordinates
  (``pos`` = the whole prompt; a size-1 position dim broadcasts); tensors returned (recorded
  activations, ``resid``) cover only the positions that were computed, ``start_pos ..`` at every
  layer, except the final layer under ``final_only`` (only the last position).

Typical use::

    weights = weights_of(model)                     # cached per model and dtype
    base = run(weights, corrupted_tokens)           # RunCache of every layer's activations
    clean = run(weights, clean_tokens)
    # patch head 3's z at layer 2 from the clean run, batch of one variant:
    mask = head_mask(weights, heads=[3])            # [1, 1, n_heads, 1]
    out = forward(weights, base.resid_pre[2], start_layer=2,
                  edits=[Edit(2, "z", clean.z[2], mask)], answers=answers, final_only=True)
    out.answer_logits                               # [batch, 2]

Path patching (the study's algorithm) in these terms: step 2 is ``forward`` from the sender's
layer on the clean residual with, at every layer, ``Edit(layer, "z", frozen_z, None)`` where
``frozen_z`` is the clean ``z`` except the sender's head from the corrupted run (or, cheaper,
``Edit(layer, "attn_out", frozen_attn_out, None)``), ``record=[(receiver_layer, "q")]`` and
``stop_layer = last receiver layer + 1``; step 3 is ``forward`` on the clean run with an ``Edit``
of the receivers' ``q`` (mask over receiver heads) to the recorded values.
"""

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Bool, Float, Int
from transformers.activations import ACT2FN

Site = Literal["q", "k", "v", "pattern", "z", "attn_out", "mlp_out"]
SITES: tuple[str, ...] = ("q", "k", "v", "pattern", "z", "attn_out", "mlp_out")
HEAD_SITES: tuple[str, ...] = ("q", "k", "v", "z")

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


class ForwardError(ValueError):
    """The functional forward cannot run with the given inputs."""


@dataclass(frozen=True, eq=False)
class ForwardWeights:
    """Every weight the forward needs, extracted once from a bridge (see :func:`weights_of`).

    Shapes: ``W_Q/W_K/W_V [L, H, D, dh]``, ``b_Q/b_K/b_V [L, H, dh]``, ``W_O [L, H, dh, D]``,
    ``b_O [L, D]``, ``W_QKV [L, D, 3 * H * dh]`` and ``b_QKV [L, 3 * H * dh]`` (``W_Q``, ``W_K``,
    ``W_V`` side by side, head-major, for one fused projection), ``W_in [L, D, M]``,
    ``b_in [L, M]``, ``W_out [L, M, D]``, ``b_out [L, D]``,
    ``ln{1,2}_w/b [L, D]``, ``ln_final_w/b [D]``, ``W_E [V, D]``, ``W_U [D, V]``, ``b_U [V]``,
    ``cos/sin [n_ctx, rotary_dim]`` (GPT-NeoX ``rotate_half`` layout).
    """

    W_E: Float[torch.Tensor, "vocab d_model"]
    W_Q: Float[torch.Tensor, "layer head d_model d_head"]
    W_K: Float[torch.Tensor, "layer head d_model d_head"]
    W_V: Float[torch.Tensor, "layer head d_model d_head"]
    b_Q: Float[torch.Tensor, "layer head d_head"]
    b_K: Float[torch.Tensor, "layer head d_head"]
    b_V: Float[torch.Tensor, "layer head d_head"]
    W_O: Float[torch.Tensor, "layer head d_head d_model"]
    b_O: Float[torch.Tensor, "layer d_model"]
    W_QKV: Float[torch.Tensor, "layer d_model qkv_head_d_head"]
    b_QKV: Float[torch.Tensor, "layer qkv_head_d_head"]
    W_in: Float[torch.Tensor, "layer d_model d_mlp"]
    b_in: Float[torch.Tensor, "layer d_mlp"]
    W_out: Float[torch.Tensor, "layer d_mlp d_model"]
    b_out: Float[torch.Tensor, "layer d_model"]
    ln1_w: Float[torch.Tensor, "layer d_model"]
    ln1_b: Float[torch.Tensor, "layer d_model"]
    ln2_w: Float[torch.Tensor, "layer d_model"]
    ln2_b: Float[torch.Tensor, "layer d_model"]
    ln_final_w: Float[torch.Tensor, " d_model"]
    ln_final_b: Float[torch.Tensor, " d_model"]
    W_U: Float[torch.Tensor, "d_model vocab"]
    b_U: Float[torch.Tensor, " vocab"]
    cos: Float[torch.Tensor, "n_ctx rotary_dim"]
    sin: Float[torch.Tensor, "n_ctx rotary_dim"]
    eps: float
    act_name: str
    parallel: bool

    @property
    def n_layers(self) -> int:
        return int(self.W_Q.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.W_Q.shape[1])

    @property
    def d_model(self) -> int:
        return int(self.W_Q.shape[2])

    @property
    def d_head(self) -> int:
        return int(self.W_Q.shape[3])

    @property
    def d_mlp(self) -> int:
        return int(self.W_in.shape[2])

    @property
    def d_vocab(self) -> int:
        return int(self.W_U.shape[1])

    @property
    def n_ctx(self) -> int:
        return int(self.cos.shape[0])

    @property
    def rotary_dim(self) -> int:
        return int(self.cos.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.W_Q.dtype

    @property
    def device(self) -> torch.device:
        return self.W_Q.device

    @property
    def bytes_per_element(self) -> int:
        return self.W_Q.element_size()


_WEIGHTS_CACHE: "WeakKeyDictionary[torch.nn.Module, dict]" = WeakKeyDictionary()


def _norm_params(module: torch.nn.Module, d_model: int, like: torch.Tensor):
    original = getattr(module, "original_component", None)
    weight = getattr(original, "weight", None)
    bias = getattr(original, "bias", None)
    w = torch.ones(d_model) if weight is None else weight.detach()
    b = torch.zeros(d_model) if bias is None else bias.detach()
    return w.to(like), b.to(like)


def _rotary_tables(model: torch.nn.Module, d_head: int, n_ctx: int, dtype: torch.dtype):
    """cos/sin tables computed as HF's GPTNeoXRotaryEmbedding does (float32, then cast)."""
    rotary = getattr(getattr(model, "rotary_emb", None), "original_component", None)
    if rotary is not None and hasattr(rotary, "inv_freq"):
        inv_freq = rotary.inv_freq.detach().float().cpu()
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
    else:
        raise ForwardError("the model has no rotary embedding module with inv_freq")
    positions = torch.arange(n_ctx, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    if emb.shape[-1] > d_head:
        raise ForwardError(f"rotary dim {emb.shape[-1]} exceeds d_head {d_head}")
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


def weights_of(model: torch.nn.Module, dtype: torch.dtype | None = None) -> ForwardWeights:
    """Extract (once per model and dtype) the processed weights of a TransformerBridge.

    The bridge must be in compatibility mode with folded LayerNorm (``circuit.models.load_model``
    does this). ``dtype`` defaults to the bridge's own dtype.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "cfg"):
        raise ForwardError(
            f"model must be a TransformerBridge (circuit.models.load_model), got "
            f"{type(model).__name__}"
        )
    cfg = model.cfg
    if getattr(cfg, "positional_embedding_type", "rotary") != "rotary":
        raise ForwardError(
            f"only rotary models are supported, got {cfg.positional_embedding_type!r}"
        )
    if getattr(cfg, "normalization_type", "LN") not in ("LN", "LNPre"):
        raise ForwardError(f"only LayerNorm models are supported, got {cfg.normalization_type!r}")
    W_Q = model.W_Q.detach()
    dtype = dtype or W_Q.dtype
    per_model = _WEIGHTS_CACHE.setdefault(model, {})
    key = (dtype, str(W_Q.device))
    if key in per_model:
        return per_model[key]

    def grab(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(dtype).contiguous()

    n_layers, d_model = cfg.n_layers, cfg.d_model
    like = torch.empty(0, dtype=dtype, device=W_Q.device)
    ln1 = [_norm_params(model.blocks[i].ln1, d_model, like) for i in range(n_layers)]
    ln2 = [_norm_params(model.blocks[i].ln2, d_model, like) for i in range(n_layers)]
    lnf_w, lnf_b = _norm_params(model.ln_final, d_model, like)
    hf_cfg = getattr(getattr(model, "original_model", None), "config", None)
    act_name = getattr(hf_cfg, "hidden_act", None) or cfg.act_fn
    n_ctx = int(getattr(hf_cfg, "max_position_embeddings", None) or cfg.n_ctx)
    cos, sin = _rotary_tables(model, cfg.d_head, n_ctx, dtype)
    projections = [grab(getattr(model, f"W_{s}")) for s in "QKV"]
    biases = [grab(getattr(model, f"b_{s}")) for s in "QKV"]
    fused = torch.stack(projections, dim=2).permute(0, 3, 2, 1, 4)  # [L, D, 3, H, dh]
    weights = ForwardWeights(
        W_E=grab(model.W_E),
        W_Q=projections[0],
        W_K=projections[1],
        W_V=projections[2],
        b_Q=biases[0],
        b_K=biases[1],
        b_V=biases[2],
        W_O=grab(model.W_O),
        b_O=grab(model.b_O),
        W_QKV=fused.reshape(n_layers, d_model, -1).contiguous(),
        b_QKV=torch.stack(biases, dim=1).reshape(n_layers, -1).contiguous(),
        W_in=grab(model.W_in),
        b_in=grab(model.b_in),
        W_out=grab(model.W_out),
        b_out=grab(model.b_out),
        ln1_w=torch.stack([w for w, _ in ln1]),
        ln1_b=torch.stack([b for _, b in ln1]),
        ln2_w=torch.stack([w for w, _ in ln2]),
        ln2_b=torch.stack([b for _, b in ln2]),
        ln_final_w=lnf_w,
        ln_final_b=lnf_b,
        W_U=grab(model.W_U),
        b_U=grab(model.b_U),
        cos=cos.to(W_Q.device),
        sin=sin.to(W_Q.device),
        eps=float(cfg.eps),
        act_name=str(act_name),
        parallel=bool(cfg.parallel_attn_mlp),
    )
    per_model[key] = weights
    return weights


@dataclass(frozen=True, eq=False)
class Edit:
    """Replace an activation at one layer: ``act = where(mask, value, act)``.

    ``site`` is one of :data:`SITES`. ``value`` and ``mask`` are in the site's layout (see the
    module docstring) over the full sequence, with a leading dim of ``B``, ``n`` (shared by all
    variants) or ``1``; any dim may be 1 to broadcast. ``mask=None`` replaces the whole
    activation; for ``z`` and ``attn_out`` that skips the layer's attention computation (frozen
    heads), unless ``q``/``k``/``v``/``pattern`` of that layer are edited or recorded. Entries at
    positions the forward does not compute (before ``start_pos``; before the last position at
    the last layer under ``final_only``) are ignored: earlier keys and values come from the
    ``prefix`` run unchanged.
    """

    layer: int
    site: str
    value: torch.Tensor
    mask: Bool[torch.Tensor, "..."] | None = None


@dataclass(frozen=True, eq=False)
class RunCache:
    """Every layer's activations of one plain run, stacked over layers.

    ``resid_pre [L, n, S, D]``, ``q/k/v/z [L, n, S, H, dh]``, ``pattern [L, n, H, S, S]``,
    ``attn_out/mlp_out [L, n, S, D]``, ``resid_final [n, S, D]`` (the last ``resid_post``),
    ``scale_final [n, S, 1]`` (``ln_final``'s scale), ``tokens [n, S]``. Sites not kept
    (see :func:`run`'s ``keep``) are ``None``.
    ``resid_post(l)`` is ``resid_pre[l + 1]`` (or ``resid_final``).
    """

    tokens: Int[torch.Tensor, "n pos"]
    resid_pre: Float[torch.Tensor, "layer n pos d_model"]
    q: Float[torch.Tensor, "layer n pos head d_head"] | None
    k: Float[torch.Tensor, "layer n pos head d_head"] | None
    v: Float[torch.Tensor, "layer n pos head d_head"] | None
    pattern: Float[torch.Tensor, "layer n head qpos kpos"] | None
    z: Float[torch.Tensor, "layer n pos head d_head"] | None
    attn_out: Float[torch.Tensor, "layer n pos d_model"] | None
    mlp_out: Float[torch.Tensor, "layer n pos d_model"] | None
    resid_final: Float[torch.Tensor, "n pos d_model"]
    scale_final: Float[torch.Tensor, "n pos 1"]

    def resid_post(self, layer: int) -> Float[torch.Tensor, "n pos d_model"]:
        """The residual stream after ``layer``."""
        if layer == self.resid_pre.shape[0] - 1 or layer == -1:
            return self.resid_final
        return self.resid_pre[layer + 1]

    def activation(self, site: str, layer: int) -> torch.Tensor:
        """One site's activation at one layer (``resid_pre``/``resid_post`` or a :data:`SITES`)."""
        if site == "resid_post":
            return self.resid_post(layer)
        if site == "resid_pre" or site in SITES:
            stored = getattr(self, site)
            if stored is None:
                raise ForwardError(f"the run did not keep {site!r}")
            return stored[layer]
        raise ForwardError(f"unknown site {site!r}")


@dataclass(frozen=True, eq=False)
class ForwardOutput:
    """What :func:`forward` computed.

    ``resid``: the residual stream after the last layer run (``stop_layer - 1``) at the computed
    positions (``[B, S - start_pos, D]``, or ``[B, 1, D]`` under ``final_only``).
    ``answer_logits``: ``[B, 2]`` when ``answers`` was given; ``logits``: ``[B, S', V]`` when
    ``full_logits`` was asked; ``records``: ``{(layer, site): activation}`` at the computed
    positions.
    """

    resid: Float[torch.Tensor, "batch pos d_model"]
    answer_logits: Float[torch.Tensor, "batch 2"] | None = None
    logits: Float[torch.Tensor, "batch pos vocab"] | None = None
    records: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)


def _normalise(
    x: Float[torch.Tensor, "... d"], w: torch.Tensor, b: torch.Tensor, eps: float
) -> Float[torch.Tensor, "... d"]:
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)


def _rotate(x: Float[torch.Tensor, "b p h dh"], cos: torch.Tensor, sin: torch.Tensor):
    """GPT-NeoX rotary on the first ``rotary_dim`` dims; ``cos/sin`` are ``[p, rotary_dim]``."""
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([rot * c + rotated * s, rest], dim=-1)


def _rotate_heads(
    x: Float[torch.Tensor, "b p h dh"], cos: torch.Tensor, sin: torch.Tensor
) -> Float[torch.Tensor, "b h p dh"]:
    """:func:`_rotate` of ``x``, returned head-major (a new contiguous tensor).

    Only the first ``rotary_dim`` dims are rewritten, with the same arithmetic as
    :func:`_rotate` (``a * c + (-b) * s`` is ``a * c - b * s`` exactly).
    """
    out = x.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    _rotate_in_place(out.transpose(1, 2), cos, sin)
    return out


def _join_positions(
    earlier: Float[torch.Tensor, "rows h s dh"], later: Float[torch.Tensor, "b h p dh"]
) -> Float[torch.Tensor, "b h s_plus_p dh"]:
    """Concatenate along positions, ``earlier`` broadcast over the batch (rows 1, n or b)."""
    batch, heads, n_later, d_head = later.shape
    n_earlier = earlier.shape[2]
    out = later.new_empty(batch, heads, n_earlier + n_later, d_head)
    out[:, :, n_earlier:] = later
    rows = earlier.shape[0]
    if rows in (1, batch):
        out[:, :, :n_earlier] = earlier
    elif batch % rows == 0:
        out.view(batch // rows, rows, heads, -1, d_head)[:, :, :, :n_earlier] = earlier
    else:
        raise ForwardError(f"leading dim {rows} does not divide the batch {batch}")
    return out


def _rows(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Broadcast a tensor with leading dim 1, ``n`` (shared by variants) or ``batch``."""
    lead = t.shape[0]
    if lead == batch or lead == 1:
        return t
    if batch % lead != 0:
        raise ForwardError(f"leading dim {lead} does not divide the batch {batch}")
    return t.unsqueeze(0).expand(batch // lead, *t.shape).reshape(batch, *t.shape[1:])


def _slice(t: torch.Tensor, dim: int, start: int, stop: int) -> torch.Tensor:
    if t.shape[dim] == 1:
        return t
    return t.narrow(dim, start, stop - start)


def _apply(
    act: torch.Tensor, edit: Edit | None, pos_dims: Sequence[int], start: int, stop: int
) -> torch.Tensor:
    """Apply an edit to ``act`` whose position dims (``pos_dims``) cover ``start:stop``."""
    if edit is None:
        return act
    value = edit.value.to(act.dtype)
    for dim in pos_dims:
        value = _slice(value, dim, start, stop)
    value = _rows(value, act.shape[0])
    if edit.mask is None:
        return value.expand_as(act)
    mask = edit.mask
    for dim in pos_dims:
        mask = _slice(mask, dim, start, stop)
    mask = _rows(mask.to(act.device), act.shape[0])
    return torch.where(mask, value, act)


def _linear(
    x: Float[torch.Tensor, "batch pos d_in"],
    weight: Float[torch.Tensor, "d_in d_out"],
    bias: Float[torch.Tensor, " d_out"],
) -> Float[torch.Tensor, "batch pos d_out"]:
    """``x @ weight + bias`` as one matrix multiply over all rows and positions."""
    flat = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight)
    return flat.view(*x.shape[:-1], weight.shape[-1])


def _project(
    w: ForwardWeights,
    layer: int,
    xn: Float[torch.Tensor, "batch pos d_model"],
    n_query: int,
    reuse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q`` (last ``n_query`` positions), ``k``, ``v`` ``[batch, pos, head, d_head]``.

    One fused matrix multiply when queries cover every position, else one for ``q`` and one for
    ``k`` and ``v`` together (the last layer under ``final_only``). ``reuse`` writes the fused
    projection to the ``"qkv"`` :func:`scratch` buffer (the caller keeps no view of it).
    """
    heads, d_head = w.n_heads, w.d_head
    width = heads * d_head
    if n_query == xn.shape[1]:
        flat = xn.reshape(-1, w.d_model)
        out = scratch("qkv", (flat.shape[0], 3 * width), flat) if reuse else None
        qkv = torch.addmm(w.b_QKV[layer], flat, w.W_QKV[layer], out=out)
        qkv = qkv.view(*xn.shape[:2], 3, heads, d_head)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = _linear(xn[:, -n_query:], w.W_QKV[layer, :, :width], w.b_QKV[layer, :width])
    kv = _linear(xn, w.W_QKV[layer, :, width:], w.b_QKV[layer, width:])
    kv = kv.view(*xn.shape[:2], 2, heads, d_head)
    return q.view(*q.shape[:2], heads, d_head), kv[:, :, 0], kv[:, :, 1]


def attend(
    w: ForwardWeights,
    layer: int,
    q: Float[torch.Tensor, "batch qpos head d_head"],
    k: Float[torch.Tensor, "batch pos head d_head"],
    v: Float[torch.Tensor, "batch pos head d_head"],
    start_pos: int,
    seq_len: int,
    query_from: int,
    prefix: RunCache | None,
    edits: dict[str, Edit],
    record: set[str],
    records: dict[tuple[int, str], torch.Tensor],
    private: bool = False,
) -> Float[torch.Tensor, "batch qpos head d_head"]:
    """Attention from projected ``q`` (positions ``query_from..``), ``k``, ``v`` (``start_pos..``).

    Applies the layer's ``q``/``k``/``v``/``pattern`` edits and records; earlier positions'
    keys and values come from ``prefix``. Returns ``z`` at the query positions. ``private``:
    the caller keeps no other use of ``q`` and ``k`` (nor records them), so rotary is applied
    in place. Without a pattern edit or record the pattern is never materialised
    (``scaled_dot_product_attention``).
    """
    q = _apply(q, edits.get("q"), (1,), query_from, seq_len)
    k = _apply(k, edits.get("k"), (1,), start_pos, seq_len)
    v = _apply(v, edits.get("v"), (1,), start_pos, seq_len)
    for name, act in (("q", q), ("k", k), ("v", v)):
        if name in record:
            records[(layer, name)] = act
    if private:
        q_rot = _rotate_in_place(q, w.cos[query_from:seq_len], w.sin[query_from:seq_len])
        k_rot = _rotate_in_place(k, w.cos[start_pos:seq_len], w.sin[start_pos:seq_len])
        q_rot, k_rot = q_rot.transpose(1, 2), k_rot.transpose(1, 2)
    else:
        q_rot = _rotate_heads(q, w.cos[query_from:seq_len], w.sin[query_from:seq_len])
        k_rot = _rotate_heads(k, w.cos[start_pos:seq_len], w.sin[start_pos:seq_len])
    v_heads = v.transpose(1, 2)
    if start_pos > 0:
        if prefix is None:
            raise ForwardError("start_pos > 0 needs a prefix RunCache for earlier keys")
        k_pre = prefix.k[layer][:, :start_pos].to(k.dtype)
        v_pre = prefix.v[layer][:, :start_pos].to(v.dtype)
        k_pre = _rotate_heads(k_pre, w.cos[:start_pos], w.sin[:start_pos])
        k_rot = _join_positions(k_pre, k_rot)
        v_heads = _join_positions(v_pre.transpose(1, 2), v_heads)
    causal = torch.ones(seq_len - query_from, seq_len, dtype=torch.bool, device=q.device)
    causal = causal.tril(diagonal=query_from)
    if "pattern" not in edits and "pattern" not in record:
        z = torch.nn.functional.scaled_dot_product_attention(
            q_rot, k_rot, v_heads, attn_mask=causal
        )
        return z.transpose(1, 2)
    scores = torch.matmul(q_rot, k_rot.transpose(-1, -2)) * (w.d_head**-0.5)
    pattern = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    pattern = _apply(pattern, edits.get("pattern"), (2,), query_from, seq_len)
    if "pattern" in record:
        records[(layer, "pattern")] = pattern
    return torch.matmul(pattern, v_heads).transpose(1, 2)


def _rotate_in_place(
    x: Float[torch.Tensor, "b p h dh"], cos: torch.Tensor, sin: torch.Tensor
) -> Float[torch.Tensor, "b p h dh"]:
    """:func:`_rotate` written into ``x`` itself (only its first ``rotary_dim`` dims change)."""
    rd = cos.shape[-1]
    half = rd // 2
    rot = x[..., :rd].clone()
    c, s = cos[:, None], sin[:, None]
    x[..., :half] = rot[..., :half] * c[..., :half] - rot[..., half:] * s[..., :half]
    x[..., half:rd] = rot[..., half:] * c[..., half:] + rot[..., :half] * s[..., half:]
    return x


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


def _untracked(t: torch.Tensor) -> bool:
    """Whether autograd ignores ``t`` (so scratch buffers and in-place ops are safe)."""
    return not (torch.is_grad_enabled() and t.requires_grad)


def _mlp_hidden(
    w: ForwardWeights, layer: int, x: Float[torch.Tensor, "batch pos d_model"]
) -> Float[torch.Tensor, "rows d_mlp"]:
    """``act(x @ W_in + b_in)`` with rows ``batch x pos``.

    Without autograd it is written to a reused buffer and GELU runs in place: valid until the
    next call on this thread.
    """
    return hidden_units(x.reshape(-1, x.shape[-1]), w.W_in[layer], w.b_in[layer], w.act_name)


def hidden_units(
    x: Float[torch.Tensor, "rows d_model"],
    W_in: Float[torch.Tensor, "d_model d_mlp"],
    b_in: Float[torch.Tensor, " d_mlp"],
    act_name: str,
) -> Float[torch.Tensor, "rows d_mlp"]:
    """``act(x @ W_in + b_in)``. Without autograd it is written to the ``"mlp"``
    :func:`scratch` buffer (valid until the next call on this thread), GELU in place."""
    if not _untracked(x):
        return ACT2FN[act_name](torch.addmm(b_in, x, W_in))
    hidden = scratch("mlp", (x.shape[0], W_in.shape[-1]), x)
    return activate_(act_name, torch.addmm(b_in, x, W_in, out=hidden))


def activate_(act_name: str, pre: Float[torch.Tensor, "rows d_mlp"]) -> torch.Tensor:
    """The MLP's activation function of ``pre``: in place for (exact) GELU, else a new tensor."""
    if act_name == "gelu":
        return torch.ops.aten.gelu_(pre)
    return ACT2FN[act_name](pre)


def _mlp(
    w: ForwardWeights, layer: int, x: Float[torch.Tensor, "batch pos d_model"]
) -> Float[torch.Tensor, "batch pos d_model"]:
    """``act(x @ W_in + b_in) @ W_out + b_out``."""
    hidden = _mlp_hidden(w, layer, x)
    return torch.addmm(w.b_out[layer], hidden, w.W_out[layer]).view(*x.shape[:-1], -1)


def parallel_block_sum(
    w: ForwardWeights,
    layer: int,
    x: Float[torch.Tensor, "batch pos d_model"],
    z: Float[torch.Tensor, "batch pos head d_head"],
    hidden: Float[torch.Tensor, "rows d_mlp"] | None = None,
) -> Float[torch.Tensor, "batch pos d_model"]:
    """``x + attn_out + mlp_out`` of a parallel block, the two outputs accumulated in place.

    ``(x + b_O + b_out) + z @ W_O + act(LN2(x) @ W_in + b_in) @ W_out``: two matrix multiplies
    that add into the residual instead of four separate sums. ``hidden``, when given, is the
    MLP's activation (rows ``batch x pos``), computed by the caller.
    """
    if hidden is None:
        hidden = _mlp_hidden(w, layer, _normalise(x, w.ln2_w[layer], w.ln2_b[layer], w.eps))
    out = (x + (w.b_O[layer] + w.b_out[layer])).reshape(-1, x.shape[-1])
    out.addmm_(z.flatten(2).reshape(out.shape[0], -1), w.W_O[layer].flatten(0, 1))
    return out.addmm_(hidden, w.W_out[layer]).view(x.shape)


def _final_query_attention(
    w: ForwardWeights,
    layer: int,
    x: Float[torch.Tensor, "batch pos d_model"],
    start_pos: int,
    seq_len: int,
    prefix: RunCache | None,
) -> Float[torch.Tensor, "batch 1 head d_head"]:
    """:func:`attend` for the last position's query alone, without most of ``k`` and ``v``.

    With one query, ``z = (sum_p a_p LN(x_p)) @ W_V + b_V`` (the pattern sums to one), and the
    non-rotary part of each score is ``LN(x_p) . (W_K q) + b_K . q``: only the rotary dims of the
    keys need projecting at every position (a quarter of ``d_head`` in Pythia). Earlier
    positions' keys and values come from ``prefix`` as in :func:`attend`.
    """
    xn = _normalise(x, w.ln1_w[layer], w.ln1_b[layer], w.eps)
    rd = w.rotary_dim
    last = seq_len - 1
    q = _linear(xn[:, -1:], w.W_Q[layer].transpose(0, 1).flatten(1), w.b_Q[layer].flatten())
    q = _rotate(q.view(-1, 1, w.n_heads, w.d_head), w.cos[last:seq_len], w.sin[last:seq_len])
    q = q[:, 0]  # [batch, head, d_head]
    k_rot = torch.einsum("bpd,hde->bphe", xn, w.W_K[layer, :, :, :rd]) + w.b_K[layer, :, :rd]
    k_rot = _rotate(k_rot, w.cos[start_pos:seq_len], w.sin[start_pos:seq_len])
    pass_weights = torch.einsum("hde,bhe->bhd", w.W_K[layer, :, :, rd:], q[..., rd:])
    scores = torch.einsum("bpd,bhd->bhp", xn, pass_weights)
    scores = scores + torch.einsum("he,bhe->bh", w.b_K[layer, :, rd:], q[..., rd:])[..., None]
    scores = scores + torch.einsum("bphe,bhe->bhp", k_rot, q[..., :rd])
    if start_pos > 0:
        if prefix is None:
            raise ForwardError("start_pos > 0 needs a prefix RunCache for earlier keys")
        k_pre = prefix.k[layer][:, :start_pos].to(q.dtype)
        k_pre = _rotate(k_pre, w.cos[:start_pos], w.sin[:start_pos])
        scores_pre = torch.einsum(
            "nphe,vnhe->vnhp", k_pre, q.view(-1, k_pre.shape[0], *q.shape[1:])
        )
        scores = torch.cat([scores_pre.flatten(0, 1), scores], dim=-1)
    pattern = torch.softmax(scores * (w.d_head**-0.5), dim=-1)
    mixed = torch.einsum("bhp,bpd->bhd", pattern[..., start_pos:], xn)
    z = torch.einsum("bhd,hde->bhe", mixed, w.W_V[layer]) + w.b_V[layer] * pattern[
        ..., start_pos:
    ].sum(dim=-1, keepdim=True)
    if start_pos > 0:
        v_pre = prefix.v[layer][:, :start_pos].to(z.dtype)
        weights = pattern[..., :start_pos].view(-1, v_pre.shape[0], *pattern.shape[1:2], start_pos)
        z = z + torch.einsum("vnhp,nphe->vnhe", weights, v_pre).flatten(0, 1)
    return z[:, None]


def _layer(
    w: ForwardWeights,
    layer: int,
    x: Float[torch.Tensor, "batch pos d_model"],
    start_pos: int,
    seq_len: int,
    query_from: int,
    prefix: RunCache | None,
    edits: dict[str, Edit],
    record: set[str],
    records: dict[tuple[int, str], torch.Tensor],
) -> Float[torch.Tensor, "batch qpos d_model"]:
    """One transformer block on positions ``start_pos:seq_len``; outputs ``query_from:``."""
    batch = x.shape[0]
    x_query = x[:, query_from - start_pos :]
    attn_edits = {"q", "k", "v", "pattern"} & (edits.keys() | record)
    n_query = seq_len - query_from
    z_edit, out_edit = edits.get("z"), edits.get("attn_out")
    attn_frozen = (
        out_edit is not None and out_edit.mask is None and not attn_edits and "z" not in record
    )
    z_frozen = z_edit is not None and z_edit.mask is None and not attn_edits
    if attn_frozen:
        attn_out = _apply(
            x_query.new_zeros(()).expand(x_query.shape),
            out_edit,
            (1,),
            query_from,
            seq_len,
        )
    else:
        if z_frozen:
            placeholder = x.new_zeros(()).expand(batch, n_query, w.n_heads, w.d_head)
            z = _apply(placeholder, z_edit, (1,), query_from, seq_len)
        elif query_from == seq_len - 1 and not attn_edits and layer == w.n_layers - 1:
            z = _final_query_attention(w, layer, x, start_pos, seq_len, prefix)
            z = _apply(z, z_edit, (1,), query_from, seq_len)
        else:
            xn = _normalise(x, w.ln1_w[layer], w.ln1_b[layer], w.eps)
            reuse = _untracked(xn) and not {"q", "k", "v"} & record
            q, k, v = _project(w, layer, xn, seq_len - query_from, reuse)
            args = (start_pos, seq_len, query_from, prefix, edits, record, records, reuse)
            z = _apply(attend(w, layer, q, k, v, *args), z_edit, (1,), query_from, seq_len)
        if "z" in record:
            records[(layer, "z")] = z
        if w.parallel and not {"attn_out", "mlp_out"} & (edits.keys() | record):
            return parallel_block_sum(w, layer, x_query, z)
        attn_out = _linear(z.flatten(2), w.W_O[layer].flatten(0, 1), w.b_O[layer])
        attn_out = _apply(attn_out, out_edit, (1,), query_from, seq_len)
    if "attn_out" in record:
        records[(layer, "attn_out")] = attn_out
    mlp_in = x_query if w.parallel else x_query + attn_out
    mlp_x = _normalise(mlp_in, w.ln2_w[layer], w.ln2_b[layer], w.eps)
    mlp_out = _mlp(w, layer, mlp_x)
    mlp_out = _apply(mlp_out, edits.get("mlp_out"), (1,), query_from, seq_len)
    if "mlp_out" in record:
        records[(layer, "mlp_out")] = mlp_out
    out = x_query + attn_out
    out += mlp_out
    return out


def final_scale(
    w: ForwardWeights, resid: Float[torch.Tensor, "... d_model"]
) -> Float[torch.Tensor, "... 1"]:
    """``ln_final``'s scale (``hook_scale``) of a residual stream."""
    centred = resid - resid.mean(dim=-1, keepdim=True)
    return (centred.pow(2).mean(dim=-1, keepdim=True) + w.eps).sqrt()


def answer_logits(
    w: ForwardWeights,
    resid_final: Float[torch.Tensor, "batch d_model"],
    answers: Int[torch.Tensor, "n 2"],
) -> Float[torch.Tensor, "batch 2"]:
    """Logits of the two answer tokens from the final position's residual stream."""
    xn = _normalise(resid_final, w.ln_final_w, w.ln_final_b, w.eps)
    answers = _rows(answers.to(w.device), resid_final.shape[0])
    columns = w.W_U.T[answers]
    return torch.einsum("bd,btd->bt", xn, columns) + w.b_U[answers]


def forward(
    w: ForwardWeights,
    resid: Float[torch.Tensor, "batch pos d_model"],
    *,
    start_layer: int = 0,
    stop_layer: int | None = None,
    start_pos: int = 0,
    prefix: RunCache | None = None,
    edits: Sequence[Edit] = (),
    record: Collection[tuple[int, str]] = (),
    answers: Int[torch.Tensor, "n 2"] | None = None,
    full_logits: bool = False,
    final_only: bool = False,
) -> ForwardOutput:
    """Run layers ``start_layer .. stop_layer - 1`` from ``resid`` (that layer's ``resid_pre``).

    The batch ``B`` is the largest leading dim of ``resid`` and the edits' values and masks;
    ``resid`` with a leading dim of ``n`` is shared by all variants.
    ``resid`` covers positions ``start_pos ..`` (``[B, S - start_pos, D]``) or the whole sequence
    (``[B, S, D]``, ``seq_len`` then taken from ``prefix`` if given, else from ``resid``); earlier
    positions' keys and values come from ``prefix`` (a base run whose rows broadcast over ``B``).
    ``final_only`` computes only the last position at the last layer (enough for final-position
    answer logits). ``answers`` ``[n or B, 2]`` gives ``answer_logits``; ``full_logits`` gives the
    whole unembedding at the computed positions (only after the last layer).
    """
    n_layers = w.n_layers
    stop_layer = n_layers if stop_layer is None else stop_layer
    if not 0 <= start_layer < stop_layer <= n_layers:
        raise ForwardError(
            f"need 0 <= start_layer < stop_layer <= {n_layers}, got {start_layer}, {stop_layer}"
        )
    seq_len = int(prefix.tokens.shape[1]) if prefix is not None else resid.shape[1] + start_pos
    if resid.shape[1] == seq_len and start_pos > 0:
        resid = resid[:, start_pos:]
    if resid.shape[1] != seq_len - start_pos:
        raise ForwardError(
            f"resid covers {resid.shape[1]} positions, expected {seq_len - start_pos}"
        )
    if seq_len > w.n_ctx:
        raise ForwardError(f"sequence length {seq_len} exceeds the context {w.n_ctx}")
    by_layer: dict[int, dict[str, Edit]] = {}
    for edit in edits:
        if edit.site not in SITES:
            raise ForwardError(f"unknown edit site {edit.site!r}; expected one of {SITES}")
        if not start_layer <= edit.layer < stop_layer:
            raise ForwardError(
                f"edit at layer {edit.layer} is outside the layers run "
                f"({start_layer}..{stop_layer - 1})"
            )
        if edit.site in by_layer.setdefault(edit.layer, {}):
            raise ForwardError(f"two edits of {edit.site!r} at layer {edit.layer}")
        by_layer[edit.layer][edit.site] = edit
    to_record: dict[int, set[str]] = {}
    for layer, site in record:
        if site not in SITES:
            raise ForwardError(f"unknown record site {site!r}; expected one of {SITES}")
        to_record.setdefault(layer, set()).add(site)
    records: dict[tuple[int, str], torch.Tensor] = {}
    batch = max(
        [resid.shape[0]]
        + [e.value.shape[0] for e in edits]
        + [e.mask.shape[0] for e in edits if e.mask is not None]
    )
    x = _rows(resid.to(w.dtype), batch).expand(batch, *resid.shape[1:])
    pos = start_pos
    for layer in range(start_layer, stop_layer):
        last = layer == n_layers - 1
        query_from = seq_len - 1 if (final_only and last) else pos
        x = _layer(
            w,
            layer,
            x,
            pos,
            seq_len,
            query_from,
            prefix,
            by_layer.get(layer, {}),
            to_record.get(layer, set()),
            records,
        )
        pos = query_from
    logits = None
    ans = None
    if stop_layer == n_layers:
        if answers is not None:
            ans = answer_logits(w, x[:, -1], answers)
        if full_logits:
            xn = _normalise(x, w.ln_final_w, w.ln_final_b, w.eps)
            logits = xn @ w.W_U + w.b_U
    elif answers is not None or full_logits:
        raise ForwardError("logits need the forward to run to the last layer")
    return ForwardOutput(resid=x, answer_logits=ans, logits=logits, records=records)


def run(
    w: ForwardWeights, tokens: Int[torch.Tensor, "n pos"], keep: Collection[str] | None = None
) -> RunCache:
    """A plain forward that keeps every layer's activations (the base of a sweep).

    ``keep`` limits the stored sites (of :data:`SITES`; ``resid_pre``, ``resid_final`` and
    ``scale_final`` are always kept, the others are ``None``) to save memory.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype != torch.long:
        what = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else ""
        raise ForwardError(f"tokens must be a 2-D LongTensor [n, pos], got {what or tokens!r}")
    tokens = tokens.to(w.device)
    seq_len = tokens.shape[1]
    if seq_len > w.n_ctx:
        raise ForwardError(f"sequence length {seq_len} exceeds the context {w.n_ctx}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= w.d_vocab):
        bad = int(tokens[(tokens < 0) | (tokens >= w.d_vocab)][0])
        raise ForwardError(f"tokens hold id {bad}: ids must lie in [0, {w.d_vocab})")
    kept = set(SITES) if keep is None else set(keep) - {"resid_pre"}
    if not kept <= set(SITES):
        raise ForwardError(f"unknown sites to keep: {sorted(kept - set(SITES))}")
    x = w.W_E[tokens]
    stacks: dict[str, torch.Tensor] = {}

    def store(site: str, layer: int, act: torch.Tensor) -> None:
        if site not in stacks:
            stacks[site] = act.new_empty(w.n_layers, *act.shape)
        stacks[site][layer] = act

    for layer in range(w.n_layers):
        store("resid_pre", layer, x)
        records: dict[tuple[int, str], torch.Tensor] = {}
        x = _layer(w, layer, x, 0, seq_len, 0, None, {}, kept, records)
        for site in kept:
            store(site, layer, records[(layer, site)])
    return RunCache(
        tokens=tokens,
        resid_final=x,
        scale_final=final_scale(w, x),
        **{name: stacks.get(name) for name in ("resid_pre", *SITES)},
    )


def run_pair(
    w: ForwardWeights,
    clean_tokens: Int[torch.Tensor, "n pos"],
    corrupted_tokens: Int[torch.Tensor, "n pos"],
    keep_clean: Collection[str],
    keep_corrupted: Collection[str],
) -> tuple[RunCache, RunCache]:
    """:func:`run` of the clean and the corrupted prompts as one batch of their distinct rows.

    Corrupted prompts are often other prompts' clean ones (a swapped pair), so each distinct
    sequence is run once; the two caches are then gathered from that run.
    """
    tokens = torch.cat([clean_tokens, corrupted_tokens]).to(w.device)
    distinct, where = torch.unique(tokens, dim=0, return_inverse=True)
    both = run(w, distinct, set(keep_clean) | set(keep_corrupted))
    n = clean_tokens.shape[0]
    return (
        _gather(both, where[:n], keep_clean, tokens[:n]),
        _gather(both, where[n:], keep_corrupted, tokens[n:]),
    )


def _gather(cache: RunCache, rows: torch.Tensor, keep: Collection[str], tokens) -> RunCache:
    """The rows ``rows`` of ``cache`` (a new cache holding only the ``keep`` sites)."""

    def pick(site: str) -> torch.Tensor | None:
        stacked = getattr(cache, site)
        return None if stacked is None or site not in keep else stacked[:, rows]

    return RunCache(
        tokens=tokens,
        resid_pre=cache.resid_pre[:, rows],
        resid_final=cache.resid_final[rows],
        scale_final=cache.scale_final[rows],
        **{site: pick(site) for site in SITES},
    )


def logits_of(w: ForwardWeights, cache: RunCache) -> Float[torch.Tensor, "n pos vocab"]:
    """Full logits of a plain run."""
    xn = _normalise(cache.resid_final, w.ln_final_w, w.ln_final_b, w.eps)
    return xn @ w.W_U + w.b_U


def head_mask(
    w: ForwardWeights, heads: Sequence[int] | torch.Tensor, n_rows: int = 1
) -> Bool[torch.Tensor, "rows 1 head 1"]:
    """A ``q/k/v/z`` edit mask selecting ``heads`` (all positions) for every row."""
    mask = torch.zeros(n_rows, 1, w.n_heads, 1, dtype=torch.bool, device=w.device)
    mask[:, :, torch.as_tensor(heads, dtype=torch.long), :] = True
    return mask


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
) -> SweepPlan:
    """Plan a sweep of ``n_variants`` patched variants of ``n`` prompts (see :class:`SweepPlan`).

    Prompts are split first (so that two run caches and one variant fit), then variants are
    batched into what is left. ``max_tensor_bytes`` further caps the variants per forward so
    that its widest activation (``rows x seq_len x max(d_mlp, 3 * n_heads * d_head)``) stays
    under it (see :data:`CPU_TENSOR_BYTES`); a single variant always runs.
    """
    _check_budget(memory_budget)
    row = activation_bytes_per_row(d_model, n_heads, d_head, d_mlp, seq_len, bytes_per_element)
    cache = 2 * run_cache_bytes(n_layers, d_model, n_heads, d_head, 1, seq_len, bytes_per_element)
    prompts = int(min(n, max(1, memory_budget // (cache + row))))
    left = memory_budget - prompts * cache
    variants = int(min(n_variants, max(1, left // (row * prompts))))
    if max_tensor_bytes is not None:
        widest = prompts * seq_len * max(d_mlp, 3 * n_heads * d_head) * bytes_per_element
        variants = min(variants, max(1, max_tensor_bytes // max(widest, 1)))
    return SweepPlan(prompts, variants, prompts * cache + variants * prompts * row)


def plan_for(
    w: ForwardWeights, n: int, seq_len: int, n_variants: int, memory_budget: int
) -> SweepPlan:
    """:func:`plan_sweep` for these weights."""
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
    )


def cpu_chunk_cap(device: torch.device, widest_per_unit: int, default: int) -> int:
    """How many units (variants, senders) one chunk may batch so that its widest activation
    (``widest_per_unit`` bytes each) stays under :data:`CPU_TENSOR_BYTES` on CPU (at least
    one); ``default`` elsewhere."""
    if device.type != "cpu":
        return default
    return max(1, CPU_TENSOR_BYTES // max(widest_per_unit, 1))
