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
        corpus="v3",
        supervision=None,
        mover_supervision_steps=None,
        qk_decay=0.0,
        freeze_embeddings=False,
        fresh_categories=False,
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
            "--supervise",
            "none",
            "--qk-decay",
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


def test_weight_decay_option_reaches_the_optimiser(tmp_path):
    """``--weight-decay`` is recorded in the training log, and it changes the weights; the
    default is :class:`TrainConfig`'s (the shipped model's), so the plain command reproduces it."""
    from safetensors.torch import load_file

    args = ["--steps", "3", "--revisions", "", "--batch-size", "4", "--d-model", "32"]
    args += ["--layers", "1", "--heads", "2", "--d-mlp", "64", "--eval-every", "0"]
    args += ["--supervise", "none", "--no-card", "--lr", "0.05", "--qk-decay", "0"]
    weights = {}
    for name, extra in {"default": [], "decay": ["--weight-decay", "0.5"]}.items():
        out = tmp_path / name
        main(["--out", str(out), *args, *extra])
        log = json.loads((out / "training_log.json").read_text())
        expected = TrainConfig().weight_decay if name == "default" else 0.5
        assert log["config"]["weight_decay"] == expected
        weights[name] = load_file(str(out / "model.safetensors"))
    matrices = [k for k, v in weights["default"].items() if v.ndim >= 2 and "embed_in" not in k]
    assert any(not weights["default"][k].equal(weights["decay"][k]) for k in matrices)


def test_shrink_query_key_scales_only_that_layers_queries_and_keys():
    """Rows ``[head, (q, k, v), d_head]`` of ``query_key_value``: q and k scaled, v and every
    other layer bit for bit; the last layer's attention pattern softens, earlier ones do not."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from circuit.training.train import shrink_query_key_

    torch.manual_seed(0)
    config = TINY.hf_config(64)
    config._attn_implementation = "eager"
    model = GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            layer.attention.query_key_value.bias.normal_(0.0, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(1, 64, (2, 12))
    with torch.no_grad():
        patterns = model(tokens, output_attentions=True).attentions
        shrink_query_key_(model, 1, 0.75)
        after = model(tokens, output_attentions=True).attentions
    name = "gpt_neox.layers.1.attention.query_key_value"
    d_head = TINY.d_model // TINY.n_heads
    for suffix in ("weight", "bias"):
        old = before[f"{name}.{suffix}"].view(TINY.n_heads, 3, d_head, -1)
        new = model.state_dict()[f"{name}.{suffix}"].view(TINY.n_heads, 3, d_head, -1)
        assert new[:, :2].equal(old[:, :2] * 0.25)
        assert new[:, 2].equal(old[:, 2])
    changed = [k for k in before if not before[k].equal(model.state_dict()[k])]
    assert changed == [f"{name}.weight", f"{name}.bias"]
    assert patterns[0].equal(after[0])
    entropy = [-(p * p.clamp_min(1e-12).log()).sum(-1).mean() for p in (patterns[1], after[1])]
    assert entropy[1] > entropy[0]


def test_qk_decay_option_shrinks_only_the_chosen_layers_queries_and_keys(tmp_path):
    """``--qk-decay`` and ``--qk-decay-layers`` are recorded in the log; with them the chosen
    layer's queries and keys end smaller than in the default run (no decay)."""
    from safetensors.torch import load_file

    args = ["--steps", "3", "--revisions", "", "--batch-size", "4", "--d-model", "32"]
    args += ["--layers", "2", "--heads", "2", "--d-mlp", "64", "--eval-every", "0"]
    args += ["--supervise", "none", "--no-card", "--lr", "0.05", "--corpus", "v3"]
    args += ["--qk-decay", "0", "--qk-decay-layers", ""]
    args += ["--no-freeze-embeddings", "--no-fresh-categories", "--max-positions", "64"]
    weights = {}
    runs = {"default": [], "decay": ["--qk-decay", "5", "--qk-decay-layers", "1"]}
    for name, extra in runs.items():
        out = tmp_path / name
        main(["--out", str(out), *args, *extra])
        config = json.loads((out / "training_log.json").read_text())["config"]
        expected = (0.0, []) if name == "default" else (5.0, [1])
        assert (config["qk_decay"], config["qk_decay_layers"]) == expected
        weights[name] = load_file(str(out / "model.safetensors"))
    qkv = "gpt_neox.layers.1.attention.query_key_value.weight"
    default, decayed = weights["default"][qkv], weights["decay"][qkv]
    assert decayed.view(2, 3, 16, 32)[:, :2].norm() < default.view(2, 3, 16, 32)[:, :2].norm()


def test_qk_decay_needs_layers_that_exist():
    with pytest.raises(ValueError, match="needs qk_decay_layers"):
        TrainConfig(
            qk_decay=1.0,
            qk_decay_layers=(),
            supervision=None,
            mover_supervision_steps=None,
            shape=TINY,
        )
    with pytest.raises(ValueError, match=r"qk_decay_layers \(2,\) are not all in a model of 2"):
        TrainConfig(
            qk_decay=1.0,
            qk_decay_layers=(2,),
            supervision=None,
            mover_supervision_steps=None,
            shape=TINY,
        )


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
        training_texts(random.Random(1), 1, corpus="v9")


def test_query_heavy_corpora_ask_more_and_repeat_word_sequences():
    """``v5`` asks up to three questions per composed sequence, ``v6``/``v7`` up to seven and
    add ``repeated`` sequences (``v7``: drawn from 3-6 words, so one word back is ambiguous)."""
    import random

    from circuit.training.corpus import training_texts
    from circuit.training.words import HELDOUT_CATEGORIES, HELDOUT_NOUNS

    def questions(text: str) -> int:
        return sum(text.count(opener) for opener in ("Therefore,", "So ", "Hence,", "Thus,"))

    v4, v5, v6, v7 = (
        training_texts(random.Random(2), 300, corpus=c) for c in ("v4", "v5", "v6", "v7")
    )
    assert sum(map(questions, v4)) < sum(map(questions, v5)) < sum(map(questions, v6))
    assert max(map(questions, v6)) > 3
    distinct = {}
    for name, texts in (("v6", v6), ("v7", v7)):
        repeats = [t for t in texts if "All " not in t and " are " not in t]
        assert 30 < len(repeats) < 100
        for text in repeats:
            first, second = text[:-1].split(". ")
            assert first == second
        distinct[name] = [len(set(t.split(". ")[0].split())) for t in repeats]
    assert max(distinct["v7"]) <= 6
    assert sum(n > 6 for n in distinct["v6"]) > len(distinct["v6"]) / 2
    every_word = {word.strip(".,").lower() for text in v5 + v6 + v7 for word in text.split()}
    assert not every_word & {w.lower() for w in (*HELDOUT_CATEGORIES, *HELDOUT_NOUNS)}


def test_conclusion_answers_mark_the_token_after_each_conclusion(tokenizer):
    from circuit.training.metrics import encode_texts
    from circuit.training.train import conclusion_answers

    text = (
        "All fish are aquatic. Owls are fish. Therefore, owls are aquatic. So all fish are aquatic."
    )
    tokens, _ = encode_texts(tokenizer, [text], append_eos=True)
    marks = conclusion_answers(tokenizer, tokens)
    targets = tokens[0, 1:][marks[0]].tolist()
    aquatic = tokenizer(" aquatic", add_special_tokens=False)["input_ids"][0]
    assert targets == [aquatic, aquatic]
    assert marks.sum() == 2


def test_weighted_loss_with_unit_weights_is_the_plain_loss(tokenizer):
    import torch
    from transformers import GPTNeoXForCausalLM

    from circuit.training.metrics import encode_texts
    from circuit.training.train import lm_loss

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(TINY.hf_config(len(tokenizer)))
    tokens, lengths = encode_texts(tokenizer, ["All fish are aquatic.", "Owls are fish."], True)
    plain = lm_loss(model, tokens, lengths)
    ones = torch.ones(tokens.shape[0], tokens.shape[1] - 1)
    torch.testing.assert_close(lm_loss(model, tokens, lengths, ones), plain)
    heavier = ones.clone()
    heavier[0, 2] = 50.0
    assert not torch.isclose(lm_loss(model, tokens, lengths, heavier), plain)


def test_answer_weight_changes_training_only_when_set(tokenizer):
    import dataclasses

    plain = train(_config(3), tokenizer, log=lambda _: None).losses
    unit = train(dataclasses.replace(_config(3), answer_weight=1.0), tokenizer, log=lambda _: None)
    weighted = train(
        dataclasses.replace(_config(3), answer_weight=10.0, corpus="v5"),
        tokenizer,
        log=lambda _: None,
    )
    assert unit.losses == plain
    assert weighted.losses != plain


def test_every_corpus_is_described_for_the_model_card():
    from circuit.training.card import CORPUS_NOTES
    from circuit.training.corpus import CORPORA, TRAINING_TEMPLATES

    assert set(CORPUS_NOTES) == set(CORPORA)
    for corpus, weights in CORPORA.items():
        assert abs(sum(weights.values()) - 1.0) < 1e-9, corpus
        assert set(weights) <= set(TRAINING_TEMPLATES), corpus


def test_supervised_training_with_fresh_categories_keeps_embeddings_and_repeats(tokenizer):
    import dataclasses

    from circuit.training.supervision import Supervision

    config = dataclasses.replace(
        _config(3),
        corpus="v6",
        supervision=Supervision(key=(0, 0), query=(0, 1), mover=(1, 0)),
        freeze_embeddings=True,
        fresh_categories=True,
    )
    one = train(config, tokenizer, log=lambda _: None)
    two = train(config, tokenizer, log=lambda _: None)
    assert one.losses == two.losses
    assert one.attention_losses == two.attention_losses
    assert [sorted(terms) for terms in one.attention_losses] == [["key", "mover", "query"]] * 3
    assert all(value > 0 for terms in one.attention_losses for value in terms.values())
    untrained = train(dataclasses.replace(config, steps=0), tokenizer, log=lambda _: None)
    embeddings = one.model.get_input_embeddings().weight
    assert embeddings.equal(untrained.model.get_input_embeddings().weight)
    assert not one.model.gpt_neox.layers[0].attention.query_key_value.weight.equal(
        untrained.model.gpt_neox.layers[0].attention.query_key_value.weight
    )
