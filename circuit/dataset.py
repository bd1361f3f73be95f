"""The dataset object every analysis consumes: aligned clean/corrupted syllogism prompts."""

from dataclasses import dataclass, field

import torch
from jaxtyping import Int

ROLE_NAMES: tuple[str, ...] = (
    "bos",
    "category",
    "descriptor",
    "opposite",
    "noun",
    "category2",
    "noun2",
    "final",
    "other_category",
    "distractor",
    "other_opposite",
)
"""Roles a syllogism prompt may carry; each maps to one token position. Every family's
prompts carry the first eight (the study's); the ``two-premise`` family adds the distractor
premise's category, descriptor (its first token: the corrupted prompts' answer) and
opposite."""


@dataclass(frozen=True)
class FilterReport:
    """How many items one filter kept out of how many it saw."""

    name: str
    kept: int
    total: int


@dataclass(frozen=True)
class SyllogismDataset:
    """Clean/corrupted prompt pairs with aligned roles.

    ``clean_tokens[i]`` and ``corrupted_tokens[i]`` differ only by swapping the descriptor
    and its opposite (``two-premise`` family: only by the minor premise's category, which
    names the distractor premise's category in the corrupted prompt); ``answers[i] = (right,
    wrong)`` are the first tokens of the clean prompt's descriptor and opposite (two-premise:
    distractor), so the corrupted prompt's right answer is ``answers[i, 1]``.
    ``roles[name]`` is the position (same for every prompt) of the role's first token:
    ``descriptor`` is the descriptor's first token, ``final`` the last position.
    ``factors[name][i]`` is prompt ``i``'s level of each generating factor (``pair``: the
    unordered descriptor pair, ``category``, ``noun``); a prompt and its twin share every
    level. The verdict rule resamples and permutes whole levels, never single prompts.
    """

    variant: str
    seed: int
    prompts: list[str]
    corrupted_prompts: list[str]
    clean_tokens: Int[torch.Tensor, "n seq"]
    corrupted_tokens: Int[torch.Tensor, "n seq"]
    answers: Int[torch.Tensor, "n 2"]
    roles: dict[str, int]
    filters: list[FilterReport] = field(default_factory=list)
    factors: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def seq_len(self) -> int:
        """Token count of every prompt, BOS included."""
        return int(self.clean_tokens.shape[1])
