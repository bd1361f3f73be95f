"""Deterministic CPU training of the bundled GPT-NeoX on the generated syllogism corpus."""

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

import torch
from transformers import GPTNeoXForCausalLM, PreTrainedTokenizerBase

from circuit.training.corpus import evaluation_prompts, training_texts
from circuit.training.metrics import encode_texts, score
from circuit.training.model_config import TrainConfig
from circuit.training.supervision import (
    Supervision,
    Vocabulary,
    attention_losses,
    fresh_category_embeddings,
)
from circuit.training.words import TRAIN_CATEGORY_POOL

RevisionHook = Callable[[int, GPTNeoXForCausalLM], None]
"""Called as ``hook(step, model)`` after ``step`` optimiser steps, for each revision step."""


@dataclass
class TrainResult:
    """What a run measured: per-step loss, periodic held-out accuracy, wall time."""

    model: GPTNeoXForCausalLM
    losses: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    attention_losses: list[dict[str, float]] = field(default_factory=list)
    """Per step, each supervised head's attention term (with supervision only)."""
    wall_seconds: float = 0.0


def make_deterministic(seed: int, threads: int) -> None:
    """Seed torch and Python, force deterministic kernels, fix the thread count."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup then cosine decay to ``min_lr_ratio`` (multiplier of ``config.lr``)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def shrink_query_key_(model: GPTNeoXForCausalLM, layer: int, factor: float) -> None:
    """Multiply ``layer``'s query and key projections (weights and biases, every head) by
    ``1 - factor`` in place; values untouched. GPT-NeoX fuses them per head as
    ``[n_heads, (q, k, v), d_head]`` rows of ``query_key_value``."""
    n_heads = model.config.num_attention_heads
    projection = model.gpt_neox.layers[layer].attention.query_key_value
    with torch.no_grad():
        for tensor in (projection.weight, projection.bias):
            rows = tensor.view(n_heads, 3, -1, *tensor.shape[1:])
            rows[:, :2].mul_(1.0 - factor)


def supervision_at(supervision: Supervision, step: int, mover_steps: int | None) -> Supervision:
    """The attention supervision that applies at ``step`` (0-based): ``supervision``, without
    its mover term from step ``mover_steps`` on (``None``: with it at every step)."""
    if mover_steps is None or step < mover_steps:
        return supervision
    return replace(supervision, mover=None)


CONCLUSION_OPENERS: Final[tuple[str, ...]] = ("Therefore", "So", "Hence", "Thus")
"""Words that open a conclusion; the token after the conclusion's next " are" is its answer."""


def conclusion_answers(tokenizer: PreTrainedTokenizerBase, tokens: torch.Tensor) -> torch.Tensor:
    """``[n, T-1]`` bool: target ``j`` (token ``j+1``) answers a conclusion, i.e. token ``j`` is
    the first " are" after a conclusion opener (with or without a leading space)."""
    openers = {
        tokenizer(form, add_special_tokens=False)["input_ids"][0]
        for word in CONCLUSION_OPENERS
        for form in (word, " " + word)
    }
    are = tokenizer(" are", add_special_tokens=False)["input_ids"][0]
    marks = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
    for i, row in enumerate(tokens[:, :-1].tolist()):
        armed = False
        for j, token in enumerate(row):
            if token in openers:
                armed = True
            elif armed and token == are:
                marks[i, j] = True
                armed = False
    return marks


def lm_loss(
    model: GPTNeoXForCausalLM,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    weights: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy over real (non-padding) targets of ``tokens [n, T]``: the
    mean, or with ``weights [n, T-1]`` the weighted mean; ``logits [n, T, vocab]``: the
    model's, when already computed."""
    if logits is None:
        logits = model(input_ids=tokens).logits
    logits = logits[:, :-1]
    targets = tokens[:, 1:].clone()
    positions = torch.arange(1, tokens.shape[1]).unsqueeze(0)
    targets[positions >= lengths.unsqueeze(1)] = -100
    if weights is None:
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
        )
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view_as(weights)
    real = (targets != -100).float() * weights
    return (losses * real).sum() / real.sum()


def heldout_probe(
    model: GPTNeoXForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    n: int,
    multi_premise: bool = False,
) -> dict[str, float]:
    """Accuracy and mean logit diff on the study template, train and held-out words, and
    (``multi_premise``) on the two-premise template, held-out words (``two_premise_*`` keys).

    The two-premise probe runs only for the ``v4`` corpus: with it, a ``v3`` run no longer
    reproduced the shipped weights (its losses parted from the shipped log after step 100,
    by 4e-4 at step 150), though the probe runs under no_grad and changes no parameter."""
    model.eval()
    result: dict[str, float] = {}
    for split in ("train", "heldout"):
        accuracy, diff = score(model, tokenizer, evaluation_prompts("study", split, n, seed=1))
        result[f"{split}_accuracy"] = accuracy
        result[f"{split}_logit_diff"] = diff
    if multi_premise:
        for template in ("two_premise", "two_premise_late"):
            prompts = evaluation_prompts(template, "heldout", n, seed=1)
            result[f"{template}_accuracy"], result[f"{template}_logit_diff"] = score(
                model, tokenizer, prompts
            )
    model.train()
    return result


def train(
    config: TrainConfig,
    tokenizer: PreTrainedTokenizerBase,
    on_revision: RevisionHook | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train from scratch; returns the final model and the measured curves.

    Gradients are enabled inside, whatever the caller's grad mode.
    """
    with torch.enable_grad():
        return _train(config, tokenizer, on_revision, log)


def _train(
    config: TrainConfig,
    tokenizer: PreTrainedTokenizerBase,
    on_revision: RevisionHook | None,
    log: Callable[[str], None],
) -> TrainResult:
    make_deterministic(config.seed, config.threads)
    hf_config = config.shape.hf_config(len(tokenizer))
    vocabulary = None
    if config.supervision is not None:  # attention weights are returned by eager attention
        hf_config._attn_implementation = "eager"
    if config.supervision is not None or config.fresh_categories:
        vocabulary = Vocabulary.of(tokenizer, TRAIN_CATEGORY_POOL)
    model = GPTNeoXForCausalLM(hf_config)
    model.train()
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.ndim >= 2]
    no_decay = [p for n, p in trained if p.ndim < 2]
    optimiser = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    data_rng = random.Random(config.seed)
    result = TrainResult(model=model)
    start = time.perf_counter()
    for step in range(config.steps):
        for group in optimiser.param_groups:
            group["lr"] = config.lr * lr_factor(step, config)
        texts = training_texts(
            data_rng,
            config.batch_size,
            config.random_opposite_rate,
            config.extra_descriptors,
            config.corpus,
        )
        tokens, lengths = encode_texts(tokenizer, texts, append_eos=True)
        weights = None
        if config.answer_weight != 1.0:
            weights = 1.0 + (config.answer_weight - 1.0) * conclusion_answers(tokenizer, tokens)
        if vocabulary is None:
            loss = language = lm_loss(model, tokens, lengths, weights)
        else:
            embeddings = model.get_input_embeddings()(tokens)
            if config.fresh_categories:
                std = hf_config.initializer_range
                embeddings = fresh_category_embeddings(embeddings, tokens, vocabulary, std)
            output = model(
                inputs_embeds=embeddings, output_attentions=config.supervision is not None
            )
            language = lm_loss(model, tokens, lengths, weights, logits=output.logits)
            loss = language
        if config.supervision is not None and vocabulary is not None:
            terms = attention_losses(
                output.attentions,
                tokens,
                conclusion_answers(tokenizer, tokens),
                vocabulary,
                supervision_at(config.supervision, step, config.mover_supervision_steps),
            )
            result.attention_losses.append({k: float(v.detach()) for k, v in terms.items()})
            loss = loss + config.supervision.weight * torch.stack(list(terms.values())).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimiser.step()
        if config.qk_decay:
            rate = config.lr * lr_factor(step, config) * config.qk_decay
            for layer in config.qk_decay_layers:
                shrink_query_key_(model, layer, rate)
        result.losses.append(float(language.detach()))
        done = step + 1
        if config.eval_every and (done % config.eval_every == 0 or done == config.steps):
            probe = heldout_probe(
                model, tokenizer, config.eval_prompts, multi_premise=config.corpus != "v3"
            )
            result.evals.append({"step": done, "loss": result.losses[-1], **probe})
            log(
                f"step {done:5d} loss {result.losses[-1]:.4f} "
                f"train acc {probe['train_accuracy']:.3f} ld {probe['train_logit_diff']:.2f} "
                f"heldout acc {probe['heldout_accuracy']:.3f} ld {probe['heldout_logit_diff']:.2f} "
                + (
                    f"two-premise acc {probe['two_premise_accuracy']:.3f} "
                    f"ld {probe['two_premise_logit_diff']:.2f} "
                    f"late acc {probe['two_premise_late_accuracy']:.3f} "
                    if "two_premise_accuracy" in probe
                    else ""
                )
                + f"({time.perf_counter() - start:.0f}s)"
            )
        if on_revision is not None and done in config.revision_steps:
            model.eval()
            on_revision(done, model)
            model.train()
    result.wall_seconds = time.perf_counter() - start
    model.eval()
    return result
