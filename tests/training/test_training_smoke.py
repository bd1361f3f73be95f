"""A few training steps on a tiny config: the loss falls, runs are deterministic, layout written."""

import json

import pytest
from transformers import AutoTokenizer

from circuit.training.__main__ import main
from circuit.training.model_config import ModelShape, TrainConfig
from circuit.training.tokenizer import to_hf_tokenizer, train_tokenizer
from circuit.training.train import train

TINY = ModelShape(d_model=32, n_layers=2, n_heads=4, d_mlp=64, max_positions=64)


@pytest.fixture(scope="module")
def tokenizer():
    return to_hf_tokenizer(train_tokenizer(), TINY.max_positions)


def _config(steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=16,
        lr=3e-3,
        warmup_steps=5,
        revision_steps=(),
        eval_every=0,
        threads=1,
        shape=TINY,
    )


def test_loss_falls_in_a_few_steps(tokenizer):
    result = train(_config(25), tokenizer, log=lambda _: None)
    first = sum(result.losses[:3]) / 3
    last = sum(result.losses[-3:]) / 3
    assert last < 0.8 * first, (first, last)


def test_training_is_deterministic(tokenizer):
    one = train(_config(5), tokenizer, log=lambda _: None).losses
    two = train(_config(5), tokenizer, log=lambda _: None).losses
    assert one == two


def test_entry_point_writes_the_shipped_layout(tmp_path):
    main(
        [
            "--out",
            str(tmp_path),
            "--steps",
            "4",
            "--revisions",
            "1,2,3",
            "--batch-size",
            "4",
            "--d-model",
            "32",
            "--layers",
            "1",
            "--heads",
            "2",
            "--d-mlp",
            "64",
            "--eval-every",
            "0",
            "--no-card",
        ]
    )
    manifest = json.loads((tmp_path / "revisions.json").read_text())
    assert manifest["final"] == "step4"
    assert [r["name"] for r in manifest["revisions"]] == ["step1", "step2", "step3", "step4"]
    for directory in [tmp_path] + [tmp_path / "revisions" / f"step{i}" for i in (1, 2, 3)]:
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (directory / name).is_file(), directory / name
    assert AutoTokenizer.from_pretrained(str(tmp_path)).convert_tokens_to_ids("<|endoftext|>") == 0


def test_square_mlp_is_refused():
    with pytest.raises(ValueError, match="d_mlp must differ"):
        ModelShape(d_model=32, d_mlp=32)


def test_the_multi_premise_corpus_makes_the_minor_premise_decide():
    """``v4``: most sequences state two or three premises about different categories; the
    answer is the descriptor of the premise whose category the minor premise names."""
    import random
    import re

    from circuit.training.corpus import compose, training_texts
    from circuit.training.words import TRAIN_CATEGORY_POOL, TRAIN_DESCRIPTOR_PAIRS, TRAIN_NOUNS

    rng = random.Random(0)
    minor_decides = 0
    for _ in range(300):
        s = compose(rng, TRAIN_CATEGORY_POOL, TRAIN_NOUNS, TRAIN_DESCRIPTOR_PAIRS, 0.9)
        premises = dict(re.findall(r"All (\w+) are (?:not \w+ but )?(\w+)", s.prompt))
        assert 2 <= len(premises) <= 3
        assert s.descriptor in premises.values()
        assert s.opposite in premises.values()
        assert s.descriptor != s.opposite
        query = re.search(r"(?:Therefore,|So|Hence,|Thus,) (all )?(\w+) are$", s.prompt)
        assert query is not None, s.prompt
        if query.group(1):  # a direct query names the category
            assert premises[query.group(2)] == s.descriptor
            continue
        noun = query.group(2)
        (category,) = re.findall(rf"{noun.capitalize()} are (\w+)\.", s.prompt)
        assert premises[category] == s.descriptor
        minor_decides += 1
    assert minor_decides > 150
    texts = training_texts(random.Random(1), 200, corpus="v4")
    assert sum(text.count("All ") >= 2 for text in texts) > 100
    assert training_texts(random.Random(1), 50) == training_texts(random.Random(1), 50, 0.9)
    with pytest.raises(ValueError, match="unknown corpus"):
        training_texts(random.Random(1), 1, corpus="v5")
