"""The training report's attribution (``circuit.training.attribution``) reads the project's one
direct-logit-attribution routine; it equals the cache-based computation it replaced."""

import pytest
import torch

from circuit.training.attribution import (
    component_attributions,
    first_position,
    head_attributions,
    load_bridge,
)
from circuit.training.corpus import evaluation_prompts
from circuit.training.layout import DEFAULT_DIR
from circuit.training.metrics import encode_prompts


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(DEFAULT_DIR))
    return load_bridge(DEFAULT_DIR), tokenizer, evaluation_prompts("study", "heldout", 24, seed=0)


def _cache_reference(bridge, tokenizer, prompts):
    """The former cache-based code: (mean logit diff, [L*H] DLA, attn to descriptor/opposite,
    component DLA)."""
    tokens, _, answers = encode_prompts(tokenizer, prompts)
    logits, cache = bridge.run_with_cache(tokens)
    last = logits[:, -1]
    total = float((last.gather(1, answers[:, :1]) - last.gather(1, answers[:, 1:])).mean())
    scaled = cache.apply_ln_to_stack(
        cache.stack_head_results(layer=-1, pos_slice=-1), layer=-1, pos_slice=-1
    )
    directions = bridge.tokens_to_residual_directions(answers)
    diff = directions[:, 0] - directions[:, 1]
    dla = (scaled * diff.unsqueeze(0)).sum(-1).mean(-1)
    rows = torch.arange(tokens.shape[0])
    descriptor, opposite = [], []
    for layer in range(bridge.cfg.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, -1]  # [n, H, pos]
        for head in range(bridge.cfg.n_heads):
            descriptor.append(
                float(pattern[rows, head, first_position(tokens, answers[:, 0])].mean())
            )
            opposite.append(
                float(pattern[rows, head, first_position(tokens, answers[:, 1])].mean())
            )
    stack, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    values = (cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1) * diff).sum(-1).mean(-1)
    return total, dla, descriptor, opposite, dict(zip(labels, values.tolist(), strict=True))


@torch.no_grad()
def test_head_and_component_attributions_equal_the_cache_based_code(shipped):
    bridge, tokenizer, prompts = shipped
    total, dla, descriptor, opposite, components = _cache_reference(bridge, tokenizer, prompts)
    got_total, heads = head_attributions(bridge, tokenizer, prompts)
    assert got_total == pytest.approx(total, abs=1e-4)
    assert [h.logit_diff for h in heads] == sorted((h.logit_diff for h in heads), reverse=True)
    n_heads = bridge.cfg.n_heads
    for h in heads:
        index = h.layer * n_heads + h.head
        assert h.logit_diff == pytest.approx(float(dla[index]), abs=1e-4)
        assert h.share == pytest.approx(float(dla[index]) / total, abs=1e-4)
        assert h.attn_descriptor == pytest.approx(descriptor[index], abs=1e-4)
        assert h.attn_opposite == pytest.approx(opposite[index], abs=1e-4)
    got = component_attributions(bridge, tokenizer, prompts)
    assert list(got) == list(components)
    for label, value in components.items():
        assert got[label] == pytest.approx(value, abs=1e-4), label
