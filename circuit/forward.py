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


class ForwardError(ValueError):
    """The functional forward cannot run with the given inputs."""


@dataclass(frozen=True, eq=False)
class ForwardWeights:
    """Every weight the forward needs, extracted once from a bridge (see :func:`weights_of`).

    Shapes: ``W_Q/W_K/W_V [L, H, D, dh]``, ``b_Q/b_K/b_V [L, H, dh]``, ``W_O [L, H, dh, D]``,
    ``b_O [L, D]``, ``W_in [L, D, M]``, ``b_in [L, M]``, ``W_out [L, M, D]``, ``b_out [L, D]``,
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
    weights = ForwardWeights(
        W_E=grab(model.W_E),
        W_Q=grab(W_Q),
        W_K=grab(model.W_K),
        W_V=grab(model.W_V),
        b_Q=grab(model.b_Q),
        b_K=grab(model.b_K),
        b_V=grab(model.b_V),
        W_O=grab(model.W_O),
        b_O=grab(model.b_O),
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
    centred = x - x.mean(dim=-1, keepdim=True)
    scale = (centred.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
    return centred / scale * w + b


def _rotate(x: Float[torch.Tensor, "b p h dh"], cos: torch.Tensor, sin: torch.Tensor):
    """GPT-NeoX rotary on the first ``rotary_dim`` dims; ``cos/sin`` are ``[p, rotary_dim]``."""
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([rot * c + rotated * s, rest], dim=-1)


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


def _attention(
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
) -> Float[torch.Tensor, "batch qpos head d_head"]:
    """One layer's attention heads: ``z`` at the query positions ``query_from:seq_len``."""
    batch = x.shape[0]
    xn = _normalise(x, w.ln1_w[layer], w.ln1_b[layer], w.eps)
    xq = xn[:, query_from - start_pos :]
    q = torch.einsum("bpd,hde->bphe", xq, w.W_Q[layer]) + w.b_Q[layer]
    k = torch.einsum("bpd,hde->bphe", xn, w.W_K[layer]) + w.b_K[layer]
    v = torch.einsum("bpd,hde->bphe", xn, w.W_V[layer]) + w.b_V[layer]
    q = _apply(q, edits.get("q"), (1,), query_from, seq_len)
    k = _apply(k, edits.get("k"), (1,), start_pos, seq_len)
    v = _apply(v, edits.get("v"), (1,), start_pos, seq_len)
    for name, act in (("q", q), ("k", k), ("v", v)):
        if name in record:
            records[(layer, name)] = act
    q_rot = _rotate(q, w.cos[query_from:seq_len], w.sin[query_from:seq_len])
    k_rot = _rotate(k, w.cos[start_pos:seq_len], w.sin[start_pos:seq_len])
    if start_pos > 0:
        if prefix is None:
            raise ForwardError("start_pos > 0 needs a prefix RunCache for earlier keys")
        k_pre = _rows(prefix.k[layer][:, :start_pos].to(k.dtype), batch)
        v_pre = _rows(prefix.v[layer][:, :start_pos].to(v.dtype), batch)
        k_pre = _rotate(k_pre, w.cos[:start_pos], w.sin[:start_pos])
        k_rot = torch.cat([k_pre.expand(batch, *k_pre.shape[1:]), k_rot], dim=1)
        v = torch.cat([v_pre.expand(batch, *v_pre.shape[1:]), v], dim=1)
    scores = torch.einsum("bqhe,bkhe->bhqk", q_rot, k_rot) * (w.d_head**-0.5)
    causal = torch.ones(seq_len - query_from, seq_len, dtype=torch.bool, device=x.device)
    scores = scores.masked_fill(~causal.tril(diagonal=query_from), float("-inf"))
    pattern = torch.softmax(scores, dim=-1)
    pattern = _apply(pattern, edits.get("pattern"), (2,), query_from, seq_len)
    if "pattern" in record:
        records[(layer, "pattern")] = pattern
    return torch.einsum("bhqk,bkhe->bqhe", pattern, v)


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
        else:
            z = _attention(
                w,
                layer,
                x,
                start_pos,
                seq_len,
                query_from,
                prefix,
                edits,
                record,
                records,
            )
            z = _apply(z, z_edit, (1,), query_from, seq_len)
        if "z" in record:
            records[(layer, "z")] = z
        attn_out = torch.einsum("bqhe,hed->bqd", z, w.W_O[layer]) + w.b_O[layer]
        attn_out = _apply(attn_out, out_edit, (1,), query_from, seq_len)
    if "attn_out" in record:
        records[(layer, "attn_out")] = attn_out
    mlp_in = x_query if w.parallel else x_query + attn_out
    mlp_x = _normalise(mlp_in, w.ln2_w[layer], w.ln2_b[layer], w.eps)
    hidden = ACT2FN[w.act_name](mlp_x @ w.W_in[layer] + w.b_in[layer])
    mlp_out = hidden @ w.W_out[layer] + w.b_out[layer]
    mlp_out = _apply(mlp_out, edits.get("mlp_out"), (1,), query_from, seq_len)
    if "mlp_out" in record:
        records[(layer, "mlp_out")] = mlp_out
    return x_query + attn_out + mlp_out


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
    tokens = tokens.to(w.device)
    seq_len = tokens.shape[1]
    if seq_len > w.n_ctx:
        raise ForwardError(f"sequence length {seq_len} exceeds the context {w.n_ctx}")
    kept = set(SITES) if keep is None else set(keep) - {"resid_pre"}
    if not kept <= set(SITES):
        raise ForwardError(f"unknown sites to keep: {sorted(kept - set(SITES))}")
    x = w.W_E[tokens]
    stacks: dict[str, list[torch.Tensor]] = {s: [] for s in ("resid_pre", *kept)}
    for layer in range(w.n_layers):
        stacks["resid_pre"].append(x)
        records: dict[tuple[int, str], torch.Tensor] = {}
        x = _layer(w, layer, x, 0, seq_len, 0, None, {}, kept, records)
        for site in kept:
            stacks[site].append(records[(layer, site)])
    stacked = {
        name: torch.stack(stacks[name]) if name in stacks else None
        for name in ("resid_pre", *SITES)
    }
    return RunCache(
        tokens=tokens,
        resid_final=x,
        scale_final=final_scale(w, x),
        **stacked,
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
    before and after the activation, outputs, edit values and masks) with a factor of 4 for
    temporaries: a bound on the bytes *allocated* per layer (measured in the tests), hence
    on the peak.
    """
    per_pos = (
        6 * d_model  # resid, normalised, attn_out, mlp_out, sum, edit value
        + 8 * n_heads * d_head  # q, k, v, rotated q/k, z, edit value, mask
        + 3 * n_heads * seq_len  # scores, pattern, pattern edit
        + 3 * d_mlp  # mlp pre, post, temporary
    )
    return 4 * per_pos * seq_len * bytes_per_element


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
    per_variant = bytes_per_row(w, seq_len) * rows_per_variant
    fit = max(1, memory_budget // max(per_variant, 1))
    return int(fit if max_variants is None else min(fit, max_variants))


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
) -> SweepPlan:
    """Plan a sweep of ``n_variants`` patched variants of ``n`` prompts (see :class:`SweepPlan`).

    Prompts are split first (so that two run caches and one variant fit), then variants are
    batched into what is left.
    """
    row = activation_bytes_per_row(d_model, n_heads, d_head, d_mlp, seq_len, bytes_per_element)
    cache = 2 * run_cache_bytes(n_layers, d_model, n_heads, d_head, 1, seq_len, bytes_per_element)
    prompts = int(min(n, max(1, memory_budget // (cache + row))))
    left = memory_budget - prompts * cache
    variants = int(min(n_variants, max(1, left // (row * prompts))))
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
    )
