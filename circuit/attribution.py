"""Direct logit attribution and the word-mover profile, read at role positions.

Both follow the study's notebook: a component's contribution at the query position (the final
position by default) is its output, scaled by ``ln_final`` as the full residual stream is
(``ActivationCache.apply_ln_to_stack(stack, layer=-1, pos_slice=...)``: centred, divided by
``ln_final``'s scale of the clean run), projected on an unembedding direction. Weights and
activations come from :mod:`circuit.engine` (the bridge's processed weights; equal to the
bridge's cache, see ``tests/engine/test_forward.py``).

:func:`head_writes` is the project's one per-head direct logit attribution: the claim kinds'
sweep (``circuit.kinds.measurements.clean_run``), the bundled model's training report
(``circuit.training.attribution``) and :func:`logit_attribution` all read it.

Shapes: ``n`` prompts, ``L`` layers, ``H`` heads, ``K`` heads asked for, ``pos`` tokens.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from circuit import guards
from circuit.engine import ForwardWeights, RunCache, answer_logits, run, weights_of


@dataclass(frozen=True)
class LogitAttribution:
    """Direct contributions to the logit difference (right minus wrong answer) per prompt.

    ``heads [n, L, H]``: each head's output; ``attn_bias [n, L]``: each layer's attention output
    bias ``b_O``; ``mlp [n, L]``: each MLP's output; ``embed [n]``: the token embedding;
    ``constant [n]``: ``ln_final``'s bias and ``b_U`` (zero after folding for Pythia);
    ``total [n]``: the model's logit difference. The components sum to ``total``.
    """

    heads: Float[torch.Tensor, "n layer head"]
    attn_bias: Float[torch.Tensor, "n layer"]
    mlp: Float[torch.Tensor, "n layer"]
    embed: Float[torch.Tensor, " n"]
    constant: Float[torch.Tensor, " n"]
    total: Float[torch.Tensor, " n"]

    @property
    def attn(self) -> Float[torch.Tensor, "n layer"]:
        """Per layer attention output (all heads and the bias)."""
        return self.heads.sum(-1) + self.attn_bias

    @property
    def mean_heads(self) -> Float[torch.Tensor, "layer head"]:
        """The study's per-head attribution: the prompt mean."""
        return self.heads.mean(0)

    @property
    def mean_layers(self) -> Float[torch.Tensor, "layer 2"]:
        """Per layer (attention, MLP), prompt mean."""
        return torch.stack([self.attn.mean(0), self.mlp.mean(0)], dim=-1)

    def component_sum(self) -> Float[torch.Tensor, " n"]:
        """Every component added up: equals ``total``."""
        return (
            (self.heads.sum((1, 2)) + self.attn_bias.sum(1) + self.mlp.sum(1))
            + self.embed
            + self.constant
        )


def _directions(
    w: ForwardWeights, answers: Int[torch.Tensor, "n 2"]
) -> Float[torch.Tensor, "n 2 d_model"]:
    """Residual directions of the answer tokens through ``ln_final``'s weight."""
    columns = w.W_U.T[answers.to(w.device)]
    return columns * w.ln_final_w


def _scaled(
    stack: Float[torch.Tensor, "... n d_model"], scale: Float[torch.Tensor, "n 1"]
) -> Float[torch.Tensor, "... n d_model"]:
    """``apply_ln_to_stack``: centre each component, divide by the run's ``ln_final`` scale."""
    return (stack - stack.mean(-1, keepdim=True)) / scale


def _position(position: int, seq: int) -> int:
    if isinstance(position, bool) or not isinstance(position, int):
        raise guards.PatchingError(f"position must be an integer, got {position!r}")
    pos = position + seq if position < 0 else position
    if not 0 <= pos < seq:
        raise guards.PatchingError(f"position {position} out of range for {seq} tokens")
    return pos


def _check_answers(
    model: torch.nn.Module, tokens: torch.Tensor, answers: torch.Tensor, routine: str
) -> None:
    guards.check_model(model, routine)
    d_vocab = int(model.cfg.d_vocab)
    if not isinstance(tokens, torch.Tensor):
        raise guards.PatchingError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.ndim != 2 or tokens.dtype != torch.long or tokens.numel() == 0:
        raise guards.PatchingError(
            f"tokens must be a non-empty 2-D LongTensor [n, seq], got {tokens.dtype} of shape "
            f"{tuple(tokens.shape)}"
        )
    guards.check_token_ids(tokens, d_vocab, "tokens")
    guards.check_answers(answers, tokens.shape[0], d_vocab)


def head_outputs(
    w: ForwardWeights, cache: RunCache, pos: int
) -> Float[torch.Tensor, "layer head n d_model"]:
    """Each head's output ``z @ W_O`` at one position (``stack_head_results``, no bias)."""
    return torch.einsum("lnhe,lhed->lhnd", cache.z[:, :, pos], w.W_O)


def head_projections(
    w: ForwardWeights, cache: RunCache, pos: int, answers: Int[torch.Tensor, "n 2"]
) -> Float[torch.Tensor, "2 n layer head"]:
    """Each head's LN-scaled output at ``pos`` dotted with the right (``[0]``) and the wrong
    (``[1]``) answer's residual direction; their difference is the head's DLA."""
    scaled = _scaled(head_outputs(w, cache, pos), cache.scale_final[:, pos])  # [L, H, n, d]
    return torch.einsum("lhnd,ntd->tnlh", scaled, _directions(w, answers))


@dataclass(frozen=True)
class HeadWrites:
    """Per prompt and head, what each head writes at the query position (the study's DLA).

    ``right`` / ``wrong [n, L, H]``: the head's output, scaled by ``ln_final`` as the residual
    stream is, dotted with the right / wrong answer's residual direction; ``attention
    [n, L, H, pos]``: the head's attention from the query position to every position;
    ``logit_diff [n]``: the model's logit difference (right minus wrong) there.
    """

    right: Float[torch.Tensor, "n layer head"]
    wrong: Float[torch.Tensor, "n layer head"]
    attention: Float[torch.Tensor, "n layer head pos"]
    logit_diff: Float[torch.Tensor, " n"]

    @property
    def dla(self) -> Float[torch.Tensor, "n layer head"]:
        """Each head's direct contribution to the logit difference, ``right - wrong``."""
        return self.right - self.wrong

    @property
    def share(self) -> Float[torch.Tensor, "layer head"]:
        """Each head's mean DLA over the mean logit difference (the study's share)."""
        return self.dla.mean(0) / self.logit_diff.mean()


def head_writes(
    model: torch.nn.Module,
    tokens: Int[torch.Tensor, "n seq"],
    answers: Int[torch.Tensor, "n 2"],
    position: int = -1,
) -> HeadWrites:
    """Direct logit attribution of every head, its right/wrong answer writes and its attention
    from the query position ``position`` (the final one by default); see :class:`HeadWrites`.

    Equals the study's cache-based code (``stack_head_results`` + ``apply_ln_to_stack`` +
    ``tokens_to_residual_directions``, ``cache["pattern", layer][:, :, -1]``) to float
    tolerance (``tests/test_attribution.py``).
    """
    _check_answers(model, tokens, answers, "head_writes")
    with torch.no_grad():
        w = weights_of(model)
        cache = run(w, tokens, keep={"z", "pattern"})
        pos = _position(position, tokens.shape[1])
        right, wrong = head_projections(w, cache, pos, answers)
        attention = cache.pattern[:, :, :, pos].permute(1, 0, 2, 3)  # [n, L, H, key]
        logits = answer_logits(w, cache.resid_final[:, pos], answers.to(w.device))
        return HeadWrites(right, wrong, attention, logits[:, 0] - logits[:, 1])


def logit_attribution(
    model: torch.nn.Module,
    tokens: Int[torch.Tensor, "n seq"],
    answers: Int[torch.Tensor, "n 2"],
    position: int = -1,
) -> LogitAttribution:
    """Direct logit attribution of every head, attention bias, MLP and the embedding.

    ``position`` is the query position (the final one by default, where the metric reads).
    """
    _check_answers(model, tokens, answers, "logit_attribution")
    with torch.inference_mode():
        w = weights_of(model)
        cache = run(w, tokens, keep={"z", "mlp_out"})
        pos = _position(position, tokens.shape[1])
        scale = cache.scale_final[:, pos]
        directions = _directions(w, answers)
        diff = directions[:, 0] - directions[:, 1]

        def project(stack: torch.Tensor) -> torch.Tensor:
            return torch.einsum("...nd,nd->...n", _scaled(stack, scale), diff)

        right, wrong = head_projections(w, cache, pos, answers)
        heads = right - wrong
        attn_bias = project(w.b_O[:, None, :].expand(-1, tokens.shape[0], -1)).T
        mlp = project(cache.mlp_out[:, :, pos]).T
        embed = project(cache.resid_pre[0][:, pos])
        answers_d = answers.to(w.device)
        bias_dir = w.ln_final_b @ (w.W_U[:, answers_d[:, 0]] - w.W_U[:, answers_d[:, 1]])
        constant = bias_dir + w.b_U[answers_d[:, 0]] - w.b_U[answers_d[:, 1]]
        final = cache.resid_final[:, pos]
        total = project(final) + constant
        return LogitAttribution(heads, attn_bias, mlp, embed, constant, total)


@dataclass(frozen=True)
class WordMoverProfile:
    """The study's word-mover scatter for ``heads`` (a list of ``(layer, head)``).

    ``attn_right [n, K]``: attention from the query position to ``right_position`` (e.g. the
    descriptor's first token); ``attn_wrong [n, K]``: to ``wrong_position`` (e.g. the opposite's
    first token), or ``None``; ``proj_right``/``proj_wrong [n, K]``: the head's LN-scaled output
    at the query position dotted with the right/wrong answer's residual direction.
    """

    heads: list[tuple[int, int]]
    right_position: int
    wrong_position: int | None
    query_position: int
    attn_right: Float[torch.Tensor, "n k"]
    attn_wrong: Float[torch.Tensor, "n k"] | None
    proj_right: Float[torch.Tensor, "n k"]
    proj_wrong: Float[torch.Tensor, "n k"]

    def correlation(self) -> Float[torch.Tensor, " k"]:
        """Pearson correlation of ``attn_right`` and ``proj_right`` over prompts, per head."""
        x = self.attn_right - self.attn_right.mean(0)
        y = self.proj_right - self.proj_right.mean(0)
        return (x * y).sum(0) / (x.norm(dim=0) * y.norm(dim=0))


def word_mover_profile(
    model: torch.nn.Module,
    tokens: Int[torch.Tensor, "n seq"],
    answers: Int[torch.Tensor, "n 2"],
    heads: Sequence[tuple[int, int] | object],
    right_position: int,
    wrong_position: int | None = None,
    query_position: int = -1,
) -> WordMoverProfile:
    """Attention to role positions and answer-direction writes of ``heads`` (see the class).

    ``heads``: ``(layer, head)`` pairs, :class:`circuit.claims.Head` objects or ``"L3H6"``.
    Positions are token indices shared by every prompt; pass a dataset's roles, e.g.
    ``dataset.roles["descriptor"]`` and ``dataset.roles["opposite"]``, never literal indices.
    """
    _check_answers(model, tokens, answers, "word_mover_profile")
    seq = tokens.shape[1]
    query = _position(query_position, seq)
    right = _position(right_position, seq)
    wrong = None if wrong_position is None else _position(wrong_position, seq)
    with torch.inference_mode():
        w = weights_of(model)
        heads = guards.as_heads(heads, w.n_layers, w.n_heads)
        cache = run(w, tokens, keep={"z", "pattern"})
        layers = torch.tensor([h[0] for h in heads], device=w.device)
        index = torch.tensor([h[1] for h in heads], device=w.device)
        pattern = cache.pattern[layers, :, index, query]  # [k, n, key]
        z = cache.z[layers, :, query, index]  # [k, n, d_head]
        outputs = torch.einsum("kne,ked->knd", z, w.W_O[layers, index])
        scaled = _scaled(outputs, cache.scale_final[:, query])
        directions = _directions(w, answers)
        proj = torch.einsum("knd,ntd->tnk", scaled, directions)
        return WordMoverProfile(
            heads=list(heads),
            right_position=right,
            wrong_position=wrong,
            query_position=query,
            attn_right=pattern[:, :, right].T,
            attn_wrong=None if wrong is None else pattern[:, :, wrong].T,
            proj_right=proj[0],
            proj_wrong=proj[1],
        )
