"""Attention supervision: where three heads of the organism should look while it trains.

The multi-premise task (the minor premise decides which premise's descriptor is the answer)
is not learned from next-token loss alone at this size (the recipe search in the model
card): the heads it needs form together or not at all. Supervision adds one cross-entropy
term per head on where it attends, at positions the token sequence itself identifies:

* ``key`` head, at every token after "{category} are": the category, two tokens back (so the
  descriptor's residual stream carries the premise's category);
* ``query`` head, at every conclusion's final " are": the mentions of the deciding category
  outside its premise (the minor premise's, or the conclusion's own "all fish are");
* ``mover`` head, at the same positions: the earlier occurrences of the answer token.

Each term is ``-log(attention mass on the target positions)``, averaged over the positions
that have targets. Only where heads look is supervised; what they read and write (their
value and output weights), how the query head's output becomes the mover's query, and every
other head are learned from the next-token loss. Whether the trained weights implement the
circuit is what the claims then measure.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from transformers import PreTrainedTokenizerBase

Head = tuple[int, int]
"""(layer, head)."""


@dataclass(frozen=True)
class Supervision:
    """Which heads are supervised, and the weight of each attention term in the loss."""

    key: Head = (0, 0)
    query: Head = (1, 0)
    mover: Head | None = (3, 0)
    """``None``: no mover term; the movers are left to the next-token loss."""
    weight: float = 1.0


@dataclass(frozen=True)
class Vocabulary:
    """Token ids the targets are found by: the training categories and " are"."""

    is_category: Bool[torch.Tensor, " vocab"]
    are: int

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase, categories: Sequence[str]) -> "Vocabulary":
        """From the training categories (each a single token, checked)."""
        is_category = torch.zeros(len(tokenizer), dtype=torch.bool)
        for category in categories:
            ids = tokenizer(" " + category, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(f"category {category!r} is {len(ids)} tokens; supervision needs 1")
            is_category[ids[0]] = True
        are = tokenizer(" are", add_special_tokens=False)["input_ids"]
        return cls(is_category, int(are[0]))


def fresh_category_embeddings(
    embeddings: Float[torch.Tensor, "n T d"],
    tokens: Int[torch.Tensor, "n T"],
    vocabulary: Vocabulary,
    std: float,
) -> Float[torch.Tensor, "n T d"]:
    """``embeddings`` with every category token's replaced by a fresh random vector
    (``N(0, std^2)`` per entry, drawn from torch's global generator): one vector per category
    per sequence, the same at each of its occurrences in that sequence.

    With frozen embeddings initialised from the same distribution, a held-out category's
    embedding is then just one more draw of what every training category looked like, so the
    look-up cannot rely on which category it is, only on where the same vector recurs."""
    category_ids = vocabulary.is_category.nonzero().flatten()
    index = torch.full_like(vocabulary.is_category, -1, dtype=torch.long)
    index[category_ids] = torch.arange(len(category_ids))
    draws = torch.randn(tokens.shape[0], len(category_ids), embeddings.shape[-1]) * std
    slot = index[tokens]  # [n, T], -1 where not a category
    rows = torch.arange(tokens.shape[0])[:, None].expand_as(tokens)
    fresh = draws[rows, slot.clamp(min=0)]
    return torch.where((slot >= 0)[..., None], fresh, embeddings)


def _shifted(tokens: Int[torch.Tensor, "n T"], by: int) -> Int[torch.Tensor, "n T"]:
    """``tokens`` moved ``by`` places right (positive) or left (negative), padded with -1."""
    out = torch.full_like(tokens, -1)
    if by > 0:
        out[:, by:] = tokens[:, :-by]
    else:
        out[:, :by] = tokens[:, -by:]
    return out


def _mass_loss(
    attention: Float[torch.Tensor, "m T"], targets: Bool[torch.Tensor, "m T"]
) -> torch.Tensor:
    """Mean ``-log`` attention mass on the targets, over rows with at least one target."""
    rows = targets.any(dim=1)
    if not bool(rows.any()):
        return attention.sum() * 0.0
    mass = (attention * targets).sum(dim=1)[rows]
    return -(mass + 1e-6).log().mean()


def attention_losses(
    attentions: Sequence[Float[torch.Tensor, "n heads T T"]],
    tokens: Int[torch.Tensor, "n T"],
    answers: Bool[torch.Tensor, "n T-1"],
    vocabulary: Vocabulary,
    supervision: Supervision,
) -> dict[str, torch.Tensor]:
    """The attention terms (``key``, ``query``, and ``mover`` unless it is ``None``;
    unweighted scalars) for one
    batch: ``attentions`` per layer (the model's ``output_attentions``), ``answers[i, j]``:
    token ``j`` is a conclusion's final " are" (its next token the answer)."""
    length = tokens.shape[1]
    positions = torch.arange(length)[None, :]
    rows, columns = answers.nonzero(as_tuple=True)  # conclusion finals
    answer = tokens[rows, columns + 1]
    before = positions < columns[:, None]  # [m, T]
    mover_targets = (tokens[rows] == answer[:, None]) & before
    is_category = vocabulary.is_category[tokens.clamp(min=0)]
    premise = (
        is_category[rows]
        & (_shifted(tokens, -1)[rows] == vocabulary.are)
        & (_shifted(tokens, -2)[rows] == answer[:, None])
        & before
    )
    deciding = torch.where(premise, tokens[rows], torch.full_like(tokens[rows], -1)).amax(dim=1)
    query_targets = (
        (tokens[rows] == deciding[:, None])
        & ~premise
        & (positions <= columns[:, None])
        & (deciding[:, None] >= 0)
    )
    after_category = (_shifted(tokens, 1) == vocabulary.are) & vocabulary.is_category[
        _shifted(tokens, 2).clamp(min=0)
    ]
    after_category[:, :2] = False
    key_rows, key_columns = after_category.nonzero(as_tuple=True)
    key_layer, key_head = supervision.key
    key_attention = attentions[key_layer][key_rows, key_head, key_columns]
    key_targets = positions == (key_columns - 2)[:, None]
    query_layer, query_head = supervision.query
    terms = {
        "key": _mass_loss(key_attention, key_targets.expand(len(key_rows), length)),
        "query": _mass_loss(attentions[query_layer][rows, query_head, columns], query_targets),
    }
    if supervision.mover is not None:
        mover_layer, mover_head = supervision.mover
        mover_attention = attentions[mover_layer][rows, mover_head, columns]
        terms["mover"] = _mass_loss(mover_attention, mover_targets)
    return terms
