"""The block after a head's output changed, with its input projections at rank ``d_head``.

A head patch at layer ``l`` of a parallel-attention model changes ``resid_post(l)`` by
``delta = z_diff @ W_O[l, h]`` (one head: rank ``d_head``). The next block reads that stream
through LayerNorm, which is not linear, but is affine once its two statistics are known::

    LN(x + delta) = ((x - mean(x)) + (delta - mean(delta))) / s' * gamma + beta
    s' = sqrt(var(x + delta) + eps)

so every projection ``P(y) = LN(y) @ W + b`` of the patched stream follows from the base run's
projection of ``x`` (``P(x)``, with scale ``s``) and a rank-``d_head`` term::

    P(x + delta) = (s * (P(x) - c) + z_diff @ (centre(W_O[l, h]) @ (gamma * W))) / s' + c
    c = beta @ W + b

This is an identity, not an approximation; only the summation order differs from a direct
forward. It turns the next block's ``q``/``k``/``v`` and MLP-input projections, two thirds of
its multiply-adds, into products with inner dimension ``d_head`` instead of ``d_model``.
:func:`block_after_head_write` computes that block this way from a :class:`NextBlock`
(:func:`prepare_next_block`, once per layer); :func:`mlp_after_head_write` computes its MLP
alone, the block's attention frozen to the base run's (path patching's step 2), from a
:class:`NextMlp`. The tests hold both equal to the plain forward, and the block to
``transformer_lens.patching``.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from circuit.engine.forward import RunCache, final_scale
from circuit.engine.kernels import activate_, attend, parallel_block_sum
from circuit.engine.memory import scratch
from circuit.engine.weights import ForwardWeights


@dataclass(frozen=True, eq=False)
class NextBlock:
    """What :func:`block_after_head_write` needs of the block after ``layer``, prepared once.

    From the base run, every position: ``scaled_qkv = s * (P_qkv(x) - offset_qkv)``
    ``[n, pos, 3 * head * d_head]`` (``q``, ``k``, ``v`` as in ``W_QKV``) and
    ``scaled_pre = s * (P_in(x) - offset_pre)`` ``[n, pos, d_mlp]`` (the MLP's input
    projection), with ``s`` ``[n, pos, 1]`` the LayerNorm scale of ``x``; from the weights,
    per head of ``layer``: ``through_qkv [head, d_head, 3 * head * d_head]`` and
    ``through_pre [head, d_head, d_mlp]``, the maps from a head's ``z`` difference to the
    next block's projections.
    """

    layer: int
    scaled_qkv: Float[torch.Tensor, "n pos qkv"]
    offset_qkv: Float[torch.Tensor, " qkv"]
    scaled_pre: Float[torch.Tensor, "n pos d_mlp"]
    offset_pre: Float[torch.Tensor, " d_mlp"]
    through_qkv: Float[torch.Tensor, "head d_head qkv"]
    through_pre: Float[torch.Tensor, "head d_head d_mlp"]


@dataclass(frozen=True, eq=False)
class NextMlp:
    """The MLP half of :class:`NextBlock`, for :func:`mlp_after_head_write` (the block's
    attention frozen to the base run's): ``scaled_pre``, ``offset_pre`` and ``through_pre`` as
    there."""

    layer: int
    scaled_pre: Float[torch.Tensor, "n pos d_mlp"]
    offset_pre: Float[torch.Tensor, " d_mlp"]
    through_pre: Float[torch.Tensor, "head d_head d_mlp"]


def prepare_next_mlp(w: ForwardWeights, base: RunCache, layer: int) -> NextMlp:
    """:class:`NextMlp` for head writes at ``layer``: a parallel model whose block
    ``layer + 1`` exists."""
    block = layer + 1
    if not w.parallel or block >= w.n_layers:
        raise ValueError(f"a rank-d_head next MLP needs a parallel model and a block after {layer}")
    x = base.resid_pre[block]
    write = w.W_O[layer]
    centred = write - write.mean(dim=-1, keepdim=True)
    pre_weights = w.ln2_w[block][:, None] * w.W_in[block]
    offset_pre = w.ln2_b[block] @ w.W_in[block] + w.b_in[block]
    normed = torch.nn.functional.layer_norm(x, (w.d_model,), w.ln2_w[block], w.ln2_b[block], w.eps)
    base_pre = (normed @ w.W_in[block]).add_(w.b_in[block])
    return NextMlp(
        layer=layer,
        scaled_pre=(base_pre - offset_pre).mul_(final_scale(w, x)),
        offset_pre=offset_pre,
        through_pre=centred @ pre_weights,
    )


def prepare_next_block(w: ForwardWeights, base: RunCache, layer: int) -> NextBlock:
    """:class:`NextBlock` for head writes at ``layer`` (``base`` keeps ``q``, ``k``, ``v``).

    Needs a parallel-attention model whose block ``layer + 1`` exists and is not the last.
    """
    block = layer + 1
    if not w.parallel or block >= w.n_layers - 1:
        raise ValueError(
            f"a rank-d_head next block needs a parallel model and a block after {layer} that "
            "is not the last"
        )
    scale = final_scale(w, base.resid_pre[block])
    write = w.W_O[layer]
    centred = write - write.mean(dim=-1, keepdim=True)

    weights = w.ln1_w[block][:, None] * w.W_QKV[block]
    offset_qkv = w.ln1_b[block] @ w.W_QKV[block] + w.b_QKV[block]
    base_qkv = torch.stack([base.q[block], base.k[block], base.v[block]], dim=2).flatten(2)
    mlp = prepare_next_mlp(w, base, layer)
    return NextBlock(
        layer=layer,
        scaled_qkv=(base_qkv - offset_qkv).mul_(scale),
        offset_qkv=offset_qkv,
        scaled_pre=mlp.scaled_pre,
        offset_pre=mlp.offset_pre,
        through_qkv=centred @ weights,
        through_pre=mlp.through_pre,
    )


def block_after_head_write(
    w: ForwardWeights,
    base: RunCache,
    prepared: NextBlock,
    heads: Int[torch.Tensor, " variants"],
    z_diff: Float[torch.Tensor, "n pos variants d_head"],
    start_pos: int,
) -> Float[torch.Tensor, "rows pos d_model"]:
    """``resid_post(layer + 1)`` of patched variants, at positions ``start_pos..``.

    Variant ``v`` is the base run with ``resid_post(layer)`` raised by
    ``z_diff[:, :, v] @ W_O[layer, heads[v]]`` (``z_diff`` covers positions ``start_pos..``;
    ``layer`` is ``prepared.layer``). Rows are variant-major (``rows = variants x n``), as in
    :func:`circuit.engine.forward.forward`.
    """
    layer = prepared.layer
    block = layer + 1
    n, n_pos, n_variants, d_head = z_diff.shape
    delta = torch.einsum("npve,ved->vnpd", z_diff, w.W_O[layer][heads])
    x_new = delta.add_(base.resid_pre[block][:, start_pos:])
    project = _Projector(x_new, z_diff, heads, start_pos, w)
    qkv = scratch("qkv", (n_variants * n * n_pos, prepared.offset_qkv.shape[0]), z_diff)
    qkv = project(prepared.scaled_qkv, prepared.offset_qkv, prepared.through_qkv, qkv)
    qkv = qkv.view(n_variants * n, n_pos, 3, w.n_heads, d_head)
    earlier = None
    if start_pos > 0:
        earlier = (base.k[block][:, :start_pos], base.v[block][:, :start_pos])
    q, k, v = qkv.unbind(2)
    z = attend(w, q, k, v, start_pos, start_pos, earlier, private=True)
    hidden = scratch("mlp", (n_variants * n * n_pos, w.d_mlp), z_diff)
    pre = project(prepared.scaled_pre, prepared.offset_pre, prepared.through_pre, hidden)
    hidden = activate_(w.act_name, pre.view(-1, w.d_mlp))
    return parallel_block_sum(w, block, x_new.flatten(0, 1), z, hidden)


def mlp_after_head_write(
    w: ForwardWeights,
    base: RunCache,
    prepared: NextMlp,
    heads: Int[torch.Tensor, " variants"],
    z_diff: Float[torch.Tensor, "n pos variants d_head"],
    delta: Float[torch.Tensor, "variants n pos d_model"],
    start_pos: int,
) -> tuple[Float[torch.Tensor, "rows pos d_model"], Float[torch.Tensor, "rows pos d_model"]]:
    """``(resid_pre, resid_post)`` of block ``layer + 1`` for patched variants whose
    ``resid_post(layer)`` gained ``delta = z_diff[:, :, v] @ W_O[layer, heads[v]]``, with that
    block's attention output frozen to the base run's and its MLP recomputed, its input
    projection at rank ``d_head``. Positions ``start_pos..``; rows variant-major, as in
    :func:`block_after_head_write`.

    The MLP's change is added to the base run's ``resid_post``: the same products for the
    base stream (``z_diff`` zero) are subtracted, so a variant that writes nothing (the null
    variant, or clean equal to corrupted) reproduces the base run exactly, not to rounding.
    """
    block = prepared.layer + 1
    n, n_pos, n_variants, _ = z_diff.shape
    x_base = base.resid_pre[block][:, start_pos:]
    x_new = delta + x_base
    project = _Projector(x_new, z_diff, heads, start_pos, w)
    hidden = scratch("mlp", (n_variants * n * n_pos, w.d_mlp), z_diff)
    pre = project(prepared.scaled_pre, prepared.offset_pre, prepared.through_pre, hidden)
    hidden = activate_(w.act_name, pre.view(-1, w.d_mlp)).view(n_variants, n * n_pos, -1)
    scaled = prepared.scaled_pre[:, start_pos:].reshape(1, n * n_pos, -1)
    unpatched = torch.addcdiv(prepared.offset_pre, scaled, final_scale(w, x_base).view(1, -1, 1))
    hidden.sub_(activate_(w.act_name, unpatched))
    resid_post = delta + base.resid_post(block)[:, start_pos:]
    resid_post.view(-1, w.d_model).addmm_(hidden.view(-1, w.d_mlp), w.W_out[block])
    return x_new.flatten(0, 1), resid_post.flatten(0, 1)


class _Projector:
    """``P(x + delta) = (scaled + z_diff @ through) / s' + offset`` for variants whose stream
    ``x_new`` (``[variants, n, pos, d_model]``) has LayerNorm scale ``s'``: ``[variants,
    n * pos, width]`` written into ``out``."""

    def __init__(
        self,
        x_new: torch.Tensor,
        z_diff: torch.Tensor,
        heads: torch.Tensor,
        start_pos: int,
        w: ForwardWeights,
    ) -> None:
        n, n_pos, n_variants, d_head = z_diff.shape
        self.shape = (n_variants, n * n_pos)
        self.new_scale = final_scale(w, x_new).view(n_variants, n * n_pos, 1)
        self.z_rows = (
            z_diff.permute(2, 0, 1, 3).reshape(n_variants, n * n_pos, d_head) / self.new_scale
        )
        self.heads, self.start_pos = heads, start_pos

    def __call__(
        self, scaled: torch.Tensor, offset: torch.Tensor, through: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        scaled = scaled[:, self.start_pos :].reshape(1, self.shape[1], -1)
        projected = torch.addcdiv(offset, scaled, self.new_scale, out=out.view(*self.shape, -1))
        return projected.baddbmm_(self.z_rows, through[self.heads])
