"""The engine's numerical kernels: LayerNorm, rotary, projections, attention, MLP.

Each kernel is the one implementation of its job in the project; the forward driver
(:mod:`circuit.engine.forward`) and the sweeps' shortcuts call these. Layouts: ``x``
``[batch, pos, d_model]``; ``q``/``k``/``v``/``z`` ``[batch, pos, head, d_head]`` with ``q``/``k``
before rotary; rotary tables ``cos``/``sin`` ``[positions, rotary_dim]`` (GPT-NeoX
``rotate_half`` layout, on the first ``rotary_dim`` dims of each head).
"""

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float

from circuit.engine.memory import scratch
from circuit.engine.weights import ForwardError, ForwardWeights


def normalise(
    x: Float[torch.Tensor, "... d"], w: torch.Tensor, b: torch.Tensor, eps: float
) -> Float[torch.Tensor, "... d"]:
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)


def rotate(x: Float[torch.Tensor, "b p h dh"], cos: torch.Tensor, sin: torch.Tensor):
    """GPT-NeoX rotary on the first ``rotary_dim`` dims; ``cos/sin`` are ``[p, rotary_dim]``."""
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([rot * c + rotated * s, rest], dim=-1)


def rotate_heads(
    x: Float[torch.Tensor, "b p h dh"], cos: torch.Tensor, sin: torch.Tensor
) -> Float[torch.Tensor, "b h p dh"]:
    """:func:`rotate` of ``x``, returned head-major (a new contiguous tensor).

    Only the first ``rotary_dim`` dims are rewritten, with the same arithmetic as
    :func:`rotate` (``a * c + (-b) * s`` is ``a * c - b * s`` exactly).
    """
    out = x.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    rotate_in_place(out.transpose(1, 2), cos, sin)
    return out


def join_positions(
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


def rows(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Broadcast a tensor with leading dim 1, ``n`` (shared by variants) or ``batch``."""
    lead = t.shape[0]
    if lead == batch or lead == 1:
        return t
    if batch % lead != 0:
        raise ForwardError(f"leading dim {lead} does not divide the batch {batch}")
    return t.unsqueeze(0).expand(batch // lead, *t.shape).reshape(batch, *t.shape[1:])


def linear(
    x: Float[torch.Tensor, "batch pos d_in"],
    weight: Float[torch.Tensor, "d_in d_out"],
    bias: Float[torch.Tensor, " d_out"],
) -> Float[torch.Tensor, "batch pos d_out"]:
    """``x @ weight + bias`` as one matrix multiply over all rows and positions."""
    flat = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight)
    return flat.view(*x.shape[:-1], weight.shape[-1])


def project(
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
    q = linear(xn[:, -n_query:], w.W_QKV[layer, :, :width], w.b_QKV[layer, :width])
    kv = linear(xn, w.W_QKV[layer, :, width:], w.b_QKV[layer, width:])
    kv = kv.view(*xn.shape[:2], 2, heads, d_head)
    return q.view(*q.shape[:2], heads, d_head), kv[:, :, 0], kv[:, :, 1]


def rotate_in_place(
    x: Float[torch.Tensor, "b p h dh"], cos: torch.Tensor, sin: torch.Tensor
) -> Float[torch.Tensor, "b p h dh"]:
    """:func:`rotate` written into ``x`` itself (only its first ``rotary_dim`` dims change)."""
    rd = cos.shape[-1]
    half = rd // 2
    rot = x[..., :rd].clone()
    c, s = cos[:, None], sin[:, None]
    x[..., :half] = rot[..., :half] * c[..., :half] - rot[..., half:] * s[..., :half]
    x[..., half:rd] = rot[..., half:] * c[..., half:] + rot[..., :half] * s[..., half:]
    return x


def untracked(t: torch.Tensor) -> bool:
    """Whether autograd ignores ``t`` (so scratch buffers and in-place ops are safe)."""
    return not (torch.is_grad_enabled() and t.requires_grad)


def mlp_hidden(
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
    if not untracked(x):
        return activation(act_name)(torch.addmm(b_in, x, W_in))
    hidden = scratch("mlp", (x.shape[0], W_in.shape[-1]), x)
    return activate_(act_name, torch.addmm(b_in, x, W_in, out=hidden))


def activate_(act_name: str, pre: Float[torch.Tensor, "rows d_mlp"]) -> torch.Tensor:
    """The MLP's activation function of ``pre``: in place for (exact) GELU, else a new tensor."""
    if act_name == "gelu":
        return torch.ops.aten.gelu_(pre)
    return activation(act_name)(pre)


def activation(act_name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The Hugging Face activation function ``act_name`` (``transformers`` imported on first
    use: a process that only judges claims never loads it)."""
    from transformers.activations import ACT2FN

    return ACT2FN[act_name]


def mlp(
    w: ForwardWeights, layer: int, x: Float[torch.Tensor, "batch pos d_model"]
) -> Float[torch.Tensor, "batch pos d_model"]:
    """``act(x @ W_in + b_in) @ W_out + b_out``."""
    hidden = mlp_hidden(w, layer, x)
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
        hidden = mlp_hidden(w, layer, normalise(x, w.ln2_w[layer], w.ln2_b[layer], w.eps))
    out = (x + (w.b_O[layer] + w.b_out[layer])).reshape(-1, x.shape[-1])
    out.addmm_(z.flatten(2).reshape(out.shape[0], -1), w.W_O[layer].flatten(0, 1))
    return out.addmm_(hidden, w.W_out[layer]).view(x.shape)


def final_query_attention(
    w: ForwardWeights,
    layer: int,
    x: Float[torch.Tensor, "batch pos d_model"],
    start_pos: int,
    seq_len: int,
    earlier: tuple[torch.Tensor, torch.Tensor] | None,
) -> Float[torch.Tensor, "batch 1 head d_head"]:
    """:func:`attend` for the last position's query alone, without most of ``k`` and ``v``.

    With one query, ``z = (sum_p a_p LN(x_p)) @ W_V + b_V`` (the pattern sums to one), and the
    non-rotary part of each score is ``LN(x_p) . (W_K q) + b_K . q``: only the rotary dims of the
    keys need projecting at every position (a quarter of ``d_head`` in Pythia). ``x`` covers
    positions ``start_pos..``; ``earlier`` holds the keys and values (before rotary,
    ``[rows, start_pos, head, d_head]``, rows dividing the batch) of the positions before it.
    """
    xn = normalise(x, w.ln1_w[layer], w.ln1_b[layer], w.eps)
    rd = w.rotary_dim
    last = seq_len - 1
    q = linear(xn[:, -1:], w.W_Q[layer].transpose(0, 1).flatten(1), w.b_Q[layer].flatten())
    q = rotate(q.view(-1, 1, w.n_heads, w.d_head), w.cos[last:seq_len], w.sin[last:seq_len])
    q = q[:, 0]  # [batch, head, d_head]
    k_rot = torch.einsum("bpd,hde->bphe", xn, w.W_K[layer, :, :, :rd]) + w.b_K[layer, :, :rd]
    k_rot = rotate(k_rot, w.cos[start_pos:seq_len], w.sin[start_pos:seq_len])
    pass_weights = torch.einsum("hde,bhe->bhd", w.W_K[layer, :, :, rd:], q[..., rd:])
    scores = torch.einsum("bpd,bhd->bhp", xn, pass_weights)
    scores = scores + torch.einsum("he,bhe->bh", w.b_K[layer, :, rd:], q[..., rd:])[..., None]
    scores = scores + torch.einsum("bphe,bhe->bhp", k_rot, q[..., :rd])
    if start_pos > 0:
        if earlier is None:
            raise ForwardError("start_pos > 0 needs the earlier positions' keys and values")
        k_pre = earlier[0].to(q.dtype)
        k_pre = rotate(k_pre, w.cos[:start_pos], w.sin[:start_pos])
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
        v_pre = earlier[1].to(z.dtype)
        weights = pattern[..., :start_pos].view(-1, v_pre.shape[0], *pattern.shape[1:2], start_pos)
        z = z + torch.einsum("vnhp,nphe->vnhe", weights, v_pre).flatten(0, 1)
    return z[:, None]


def attend(
    w: ForwardWeights,
    q: Float[torch.Tensor, "batch qpos head d_head"],
    k: Float[torch.Tensor, "batch kpos head d_head"],
    v: Float[torch.Tensor, "batch kpos head d_head"],
    query_from: int,
    key_from: int = 0,
    earlier: tuple[torch.Tensor, torch.Tensor] | None = None,
    private: bool = False,
    on_pattern: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Float[torch.Tensor, "batch qpos head d_head"]:
    """Causal attention: the project's one implementation of ``softmax(q k^T / sqrt(dh)) v``.

    ``q`` covers positions ``query_from ..`` and ``k``/``v`` positions ``key_from ..`` (both
    before rotary); ``earlier`` holds the keys and values of positions ``0 .. key_from - 1``
    (``[rows, key_from, head, d_head]``, before rotary, rows broadcast over the batch). Heads
    may be any subset (the caller slices ``q``/``k``/``v``). ``private``: the caller keeps no
    other use of ``q`` and ``k``, so rotary is applied in place. ``on_pattern`` (given a
    pattern ``[batch, head, qpos, kpos]`` after softmax, returns the pattern to use) makes the
    pattern explicit; without it the pattern is never materialised
    (``scaled_dot_product_attention``). Returns ``z`` at the query positions.
    """
    query_to, key_to = query_from + q.shape[1], key_from + k.shape[1]
    if private:
        q_rot = rotate_in_place(q, w.cos[query_from:query_to], w.sin[query_from:query_to])
        k_rot = rotate_in_place(k, w.cos[key_from:key_to], w.sin[key_from:key_to])
        q_rot, k_rot = q_rot.transpose(1, 2), k_rot.transpose(1, 2)
    else:
        q_rot = rotate_heads(q, w.cos[query_from:query_to], w.sin[query_from:query_to])
        k_rot = rotate_heads(k, w.cos[key_from:key_to], w.sin[key_from:key_to])
    v_heads = v.transpose(1, 2)
    if key_from > 0:
        if earlier is None:
            raise ForwardError("keys from a later position need the earlier keys and values")
        k_pre = rotate_heads(earlier[0].to(k.dtype), w.cos[:key_from], w.sin[:key_from])
        k_rot = join_positions(k_pre, k_rot)
        v_heads = join_positions(earlier[1].to(v.dtype).transpose(1, 2), v_heads)
    causal = torch.ones(query_to - query_from, key_to, dtype=torch.bool, device=q.device)
    causal = causal.tril(diagonal=query_from)
    if on_pattern is None:
        z = torch.nn.functional.scaled_dot_product_attention(
            q_rot, k_rot, v_heads, attn_mask=causal
        )
        return z.transpose(1, 2)
    scores = torch.matmul(q_rot, k_rot.transpose(-1, -2)) * (w.d_head**-0.5)
    pattern = on_pattern(torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1))
    return torch.matmul(pattern, v_heads).transpose(1, 2)


def input_projection(
    w: ForwardWeights,
    layer: int,
    x: Float[torch.Tensor, "batch pos d_model"],
    site: str,
    heads: Sequence[int] | None = None,
) -> Float[torch.Tensor, "batch pos head d_head"]:
    """``q``, ``k`` or ``v`` (``site``) at ``layer`` from the residual ``x``:
    ``LN1(x) @ W + b`` with the site's slice of the fused ``W_QKV``; of every head, or of
    ``heads`` only (head dim ``len(heads)``, in that order)."""
    index = "qkv".index(site)
    width = w.n_heads * w.d_head
    weight = w.W_QKV[layer, :, index * width : (index + 1) * width]
    bias = w.b_QKV[layer, index * width : (index + 1) * width]
    n_heads = w.n_heads
    if heads is not None:
        chosen = torch.as_tensor(list(heads), dtype=torch.long, device=weight.device)
        weight = weight.view(-1, w.n_heads, w.d_head)[:, chosen].flatten(1)
        bias = bias.view(w.n_heads, w.d_head)[chosen].flatten()
        n_heads = len(chosen)
    xn = normalise(x, w.ln1_w[layer], w.ln1_b[layer], w.eps)
    return linear(xn, weight, bias).view(*x.shape[:-1], n_heads, w.d_head)
