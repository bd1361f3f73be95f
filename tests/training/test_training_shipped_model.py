"""The shipped bundled model: layout, size, offline loading, and measured quality."""

import pytest
import torch
from transformers import AutoTokenizer, GPTNeoXForCausalLM

from circuit.training.attribution import load_bridge
from circuit.training.corpus import evaluation_prompts
from circuit.training.layout import DEFAULT_DIR, read_manifest
from circuit.training.metrics import encode_prompts, score

FINAL, REVISIONS = read_manifest(DEFAULT_DIR)
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def test_manifest_has_final_and_at_least_three_intermediate_revisions():
    steps = [r.step for r in REVISIONS]
    assert steps == sorted(steps)
    assert len(set(steps)) == len(steps)
    assert REVISIONS[-1].name == FINAL
    assert REVISIONS[-1].path == "."
    assert len(REVISIONS) >= 4


@pytest.mark.parametrize("revision", REVISIONS, ids=lambda r: r.name)
def test_revision_is_a_complete_hf_directory(revision):
    for name in HF_FILES:
        assert (DEFAULT_DIR / revision.path / name).is_file()


def test_everything_shipped_is_under_20_mb():
    models = DEFAULT_DIR.parent
    total = sum(p.stat().st_size for p in models.rglob("*") if p.is_file())
    assert total < 20e6, total


@pytest.mark.parametrize("revision", REVISIONS, ids=lambda r: r.name)
def test_revision_boots_through_transformer_bridge_and_matches_hf(revision):
    directory = DEFAULT_DIR / revision.path
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    tokens, _, answers = encode_prompts(tokenizer, evaluation_prompts("study", "heldout", 8))
    bridge = load_bridge(directory)
    hf = GPTNeoXForCausalLM.from_pretrained(str(directory), dtype="float32").eval()
    with torch.no_grad():
        bridge_logits = bridge(tokens)[:, -1]
        hf_logits = hf(input_ids=tokens).logits[:, -1]

    def diffs(logits: torch.Tensor) -> torch.Tensor:
        return logits.gather(1, answers[:, :1]) - logits.gather(1, answers[:, 1:])

    torch.testing.assert_close(diffs(bridge_logits), diffs(hf_logits), atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def heldout_study_prompts():
    return evaluation_prompts("study", "heldout", 200, seed=0)


def _accuracy(directory, prompts) -> float:
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = GPTNeoXForCausalLM.from_pretrained(str(directory), dtype="float32").eval()
    return score(model, tokenizer, prompts)[0]


def test_final_model_solves_the_study_template_on_heldout_words(heldout_study_prompts):
    assert _accuracy(DEFAULT_DIR, heldout_study_prompts) >= 0.95


def test_earliest_revision_does_not(heldout_study_prompts):
    assert _accuracy(DEFAULT_DIR / REVISIONS[0].path, heldout_study_prompts) < 0.95
