"""Encode evaluation prompts and score a causal LM on them at the final position."""

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from circuit.training.corpus import Syllogism

BOS_ID = 0


def first_token(tokenizer: PreTrainedTokenizerBase, word: str) -> int:
    """Id of the first token of ``" " + word``."""
    return int(tokenizer(" " + word, add_special_tokens=False)["input_ids"][0])


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], append_eos: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[n, T]`` (BOS id 0 first, right-padded with 0) and lengths ``[n]``."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = [[BOS_ID, *row, *([BOS_ID] if append_eos else [])] for row in ids]
    lengths = torch.tensor([len(row) for row in rows])
    tokens = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens, lengths


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, syllogisms: Sequence[Syllogism]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens ``[n, T]``, final positions ``[n]``, answers ``[n, 2]`` = (right, wrong) ids)."""
    tokens, lengths = encode_texts(tokenizer, [s.prompt for s in syllogisms], append_eos=False)
    answers = torch.tensor(
        [
            [first_token(tokenizer, s.descriptor), first_token(tokenizer, s.opposite)]
            for s in syllogisms
        ]
    )
    return tokens, lengths - 1, answers


@torch.no_grad()
def final_logit_diffs(
    model: PreTrainedModel, tokens: torch.Tensor, final: torch.Tensor, answers: torch.Tensor
) -> torch.Tensor:
    """Per-prompt logit(right) - logit(wrong) at each prompt's final position, ``[n]``."""
    logits = model(input_ids=tokens).logits
    last = logits[torch.arange(tokens.shape[0]), final]
    return last.gather(1, answers[:, :1]).squeeze(1) - last.gather(1, answers[:, 1:]).squeeze(1)


def score(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, syllogisms: Sequence[Syllogism]
) -> tuple[float, float]:
    """(accuracy = share of prompts with positive logit diff, mean logit diff)."""
    tokens, final, answers = encode_prompts(tokenizer, syllogisms)
    diffs = final_logit_diffs(model, tokens, final, answers)
    return float((diffs > 0).float().mean()), float(diffs.mean())
