"""Attention supervision targets: found from the tokens alone, zero loss only where the
supervised heads look at exactly the intended positions."""

import math

import pytest
import torch

from circuit.training.metrics import encode_texts
from circuit.training.model_config import TrainConfig
from circuit.training.supervision import (
    Supervision,
    Vocabulary,
    attention_losses,
    fresh_category_embeddings,
)
from circuit.training.tokenizer import to_hf_tokenizer, train_tokenizer
from circuit.training.train import conclusion_answers
from circuit.training.words import TRAIN_CATEGORY_POOL

TEXT = (
    "All fish are aquatic, not terrestrial. All birds are nocturnal. Horses are birds. "
    "Therefore, horses are nocturnal. Therefore, all fish are aquatic."
)


@pytest.fixture(scope="module")
def tokenizer():
    return to_hf_tokenizer(train_tokenizer(1024), 160)


def _position(tokens: list[str], piece: str, occurrence: int = 0) -> int:
    return [i for i, token in enumerate(tokens) if token == piece][occurrence]


def test_targets_are_the_category_the_deciding_mention_and_the_answer(tokenizer):
    tokens, _ = encode_texts(tokenizer, [TEXT], append_eos=True)
    pieces = tokenizer.convert_ids_to_tokens(tokens[0].tolist())
    answers = conclusion_answers(tokenizer, tokens)
    vocabulary = Vocabulary.of(tokenizer, TRAIN_CATEGORY_POOL)
    supervision = Supervision(key=(0, 1), query=(1, 2), mover=(2, 3))
    length = tokens.shape[1]
    attentions = [torch.zeros(1, 4, length, length) for _ in range(3)]
    key = {  # each token after "{category} are" -> the category; lower-cased training nouns
        # are categories too ("horses are"), capitalised ones ("Horses are") are not
        _position(pieces, "Ġaqu"): _position(pieces, "Ġfish"),
        _position(pieces, "Ġnoct"): _position(pieces, "Ġbirds"),
        _position(pieces, "Ġnoct", 1): _position(pieces, "Ġhorses"),
        _position(pieces, "Ġaqu", 1): _position(pieces, "Ġfish", 1),
    }
    finals = [_position(pieces, "Ġare", 3), _position(pieces, "Ġare", 4)]
    assert answers[0].nonzero().flatten().tolist() == finals
    query = {finals[0]: _position(pieces, "Ġbirds", 1), finals[1]: _position(pieces, "Ġfish", 1)}
    mover = {finals[0]: [_position(pieces, "Ġnoct")], finals[1]: [_position(pieces, "Ġaqu")]}
    for row, column in key.items():
        attentions[0][0, 1, row, column] = 1.0
    for row, column in query.items():
        attentions[1][0, 2, row, column] = 1.0
    for row, columns in mover.items():
        attentions[2][0, 3, row, columns] = 1.0 / len(columns)
    exact = attention_losses(attentions, tokens, answers, vocabulary, supervision)
    assert {name: float(value) for name, value in exact.items()} == pytest.approx(
        {"key": 0.0, "query": 0.0, "mover": 0.0}, abs=1e-5
    )
    for layer in range(3):  # every target moved one position: each term is large
        attentions[layer] = attentions[layer].roll(1, dims=3)
    moved = attention_losses(attentions, tokens, answers, vocabulary, supervision)
    assert all(float(value) > 10 for value in moved.values()), moved


def test_uniform_attention_costs_log_of_the_positions_per_target(tokenizer):
    tokens, _ = encode_texts(tokenizer, [TEXT], append_eos=True)
    answers = conclusion_answers(tokenizer, tokens)
    vocabulary = Vocabulary.of(tokenizer, TRAIN_CATEGORY_POOL)
    length = tokens.shape[1]
    causal = torch.tril(torch.ones(length, length))
    uniform = (causal / causal.sum(1, keepdim=True)).expand(1, 8, length, length)
    losses = attention_losses([uniform] * 4, tokens, answers, vocabulary, Supervision())
    final = int(answers[0].nonzero()[0])
    assert float(losses["mover"]) > math.log((final + 1) / 2) - 1.0
    assert all(float(value) > 1.0 for value in losses.values())


def test_a_multi_token_category_is_refused(tokenizer):
    with pytest.raises(ValueError, match="needs 1"):
        Vocabulary.of(tokenizer, ["fish", "zzqxbirds"])


def test_fresh_category_embeddings_recur_within_a_sequence_only(tokenizer):
    tokens, _ = encode_texts(tokenizer, [TEXT, TEXT], append_eos=True)
    vocabulary = Vocabulary.of(tokenizer, TRAIN_CATEGORY_POOL)
    embeddings = torch.randn(*tokens.shape, 16)
    torch.manual_seed(0)
    fresh = fresh_category_embeddings(embeddings, tokens, vocabulary, std=0.02)
    pieces = tokenizer.convert_ids_to_tokens(tokens[0].tolist())
    fish = [i for i, piece in enumerate(pieces) if piece == "Ġfish"]
    birds = [i for i, piece in enumerate(pieces) if piece == "Ġbirds"]
    other = [i for i, piece in enumerate(pieces) if piece in ("Ġare", "Ġaqu", "ĠH")]
    assert torch.equal(fresh[0, fish[0]], fresh[0, fish[1]])  # one vector per sequence
    assert not torch.equal(fresh[0, fish[0]], fresh[1, fish[0]])  # fresh in the next one
    assert not torch.equal(fresh[0, fish[0]], fresh[0, birds[0]])
    assert not torch.equal(fresh[0, fish[0]], embeddings[0, fish[0]])
    assert torch.equal(fresh[:, other], embeddings[:, other])  # other tokens untouched
    assert 0.01 < float(fresh[0, fish[0]].std()) < 0.04
    torch.manual_seed(0)
    assert torch.equal(fresh_category_embeddings(embeddings, tokens, vocabulary, 0.02), fresh)


def test_fresh_categories_need_frozen_embeddings():
    with pytest.raises(ValueError, match="needs freeze_embeddings"):
        TrainConfig(fresh_categories=True, freeze_embeddings=False)
    assert TrainConfig(fresh_categories=True, freeze_embeddings=True).fresh_categories


def test_supervised_heads_must_exist():
    from circuit.training.model_config import ModelShape

    small = ModelShape(n_layers=2, n_heads=4)
    with pytest.raises(ValueError, match="mover head L3H0 is not in a model of 2 layers x 4"):
        TrainConfig(shape=small, qk_decay=0.0)
    TrainConfig(shape=small, supervision=Supervision(mover=(1, 3)), qk_decay=0.0)


def test_without_a_mover_only_the_key_and_query_terms_remain(tokenizer):
    """``Supervision(mover=None)``: the same key and query terms, no mover term; a model of
    any depth accepts it, and the command line spells it ``KEY,QUERY,none``."""
    from circuit.training.__main__ import _heads_text, parse_supervision
    from circuit.training.model_config import ModelShape

    tokens, _ = encode_texts(tokenizer, [TEXT], append_eos=True)
    answers = conclusion_answers(tokenizer, tokens)
    vocabulary = Vocabulary.of(tokenizer, TRAIN_CATEGORY_POOL)
    length = tokens.shape[1]
    torch.manual_seed(0)
    attentions = [torch.rand(1, 8, length, length).tril().softmax(-1) for _ in range(4)]
    both = attention_losses(attentions, tokens, answers, vocabulary, Supervision())
    no_mover = attention_losses(attentions, tokens, answers, vocabulary, Supervision(mover=None))
    assert set(no_mover) == {"key", "query"}
    assert all(no_mover[term].equal(both[term]) for term in no_mover)
    TrainConfig(
        shape=ModelShape(n_layers=2, n_heads=4),
        supervision=Supervision(mover=None),
        mover_supervision_steps=None,
        qk_decay=0.0,
    )
    parsed = parse_supervision("L0H0,L1H0,none", 0.5)
    assert parsed == Supervision(key=(0, 0), query=(1, 0), mover=None, weight=0.5)
    assert _heads_text(parsed) == "L0H0,L1H0,none"
    with pytest.raises(SystemExit, match="MOVER may be 'none'"):
        parse_supervision("none,L1H0,L2H0", 1.0)


def test_the_card_says_when_no_head_is_supervised_as_the_mover():
    from circuit.training.card import _supervision_text

    supervision = {"key": [0, 0], "query": [1, 0], "weight": 1.0}
    three = _supervision_text({"supervision": {**supervision, "mover": [2, 0]}})
    two = _supervision_text({"supervision": {**supervision, "mover": None}})
    assert "3 attention terms" in three
    assert "L2H0 from there to the answer's earlier occurrences" in three
    assert "2 attention terms" in two
    assert "no head is supervised as the mover" in two


def test_the_mover_term_applies_in_its_first_steps_only(tokenizer):
    """``mover_supervision_steps=2``: steps 0-1 carry the mover term, later steps only the key
    and query terms; training is the always-supervised run's until the first step without it
    (the losses agree through step 2, whose loss precedes its update, and differ at step 3)."""
    import dataclasses

    from circuit.training.model_config import ModelShape
    from circuit.training.train import supervision_at, train

    config = TrainConfig(
        steps=4,
        batch_size=4,
        warmup_steps=1,
        revision_steps=(),
        eval_every=0,
        supervision=Supervision(key=(0, 0), query=(0, 1), mover=(1, 0)),
        mover_supervision_steps=None,
        qk_decay=0.0,
        shape=ModelShape(d_model=32, n_layers=2, n_heads=4, d_mlp=64, max_positions=160),
    )
    released = train(
        dataclasses.replace(config, mover_supervision_steps=2), tokenizer, log=lambda _: None
    )
    always = train(config, tokenizer, log=lambda _: None)
    assert [sorted(terms) for terms in released.attention_losses] == [
        ["key", "mover", "query"],
        ["key", "mover", "query"],
        ["key", "query"],
        ["key", "query"],
    ]
    assert [sorted(terms) for terms in always.attention_losses] == [["key", "mover", "query"]] * 4
    assert released.losses[:3] == always.losses[:3]
    assert released.losses[3] != always.losses[3]
    supervision = config.supervision
    assert supervision is not None
    assert supervision_at(supervision, 10**6, None) is supervision
    assert supervision_at(supervision, 4, 5) is supervision
    assert supervision_at(supervision, 5, 5) == dataclasses.replace(supervision, mover=None)


def test_a_mover_schedule_needs_a_mover_and_is_spelled_on_the_command_line_and_card():
    from circuit.training.__main__ import main
    from circuit.training.card import _supervision_text

    with pytest.raises(ValueError, match="needs a supervision with a mover head"):
        TrainConfig(supervision=Supervision(mover=None), mover_supervision_steps=5)
    with pytest.raises(ValueError, match="needs a supervision with a mover head"):
        TrainConfig(supervision=None, mover_supervision_steps=5)
    with pytest.raises(ValueError, match="at least 0, got -1"):
        TrainConfig(mover_supervision_steps=-1)
    with pytest.raises(SystemExit, match=r"circuit\.training: mover_supervision_steps needs"):
        main(["--supervise", "L0H0,L1H0,none", "--mover-supervision-steps", "5", "--no-card"])
    supervision = {"key": [0, 0], "query": [1, 0], "mover": [3, 0], "weight": 1.0}
    timed = _supervision_text({"supervision": supervision, "mover_supervision_steps": 1500})
    throughout = _supervision_text({"supervision": supervision, "mover_supervision_steps": None})
    assert "L3H0 from there to the answer's earlier occurrences (in the first 1500 steps only)" in (
        timed
    )
    assert "first" not in throughout


def test_the_mover_schedule_option_reads_steps_all_or_the_default():
    """Not given: the default, or nothing when no head is supervised as the mover (so a
    ``--supervise none`` run needs no second option); ``all``: every step."""
    from circuit.training.__main__ import parse_mover_steps

    mover, no_mover = Supervision(), Supervision(mover=None)
    assert parse_mover_steps("1200", mover, 1500) == 1200
    assert parse_mover_steps(" ALL ", mover, 1500) is None
    assert parse_mover_steps(None, mover, 1500) == 1500
    assert parse_mover_steps(None, no_mover, 1500) is None
    assert parse_mover_steps(None, None, 1500) is None
    with pytest.raises(SystemExit, match="a number of steps or 'all', got 'soon'"):
        parse_mover_steps("soon", mover, 1500)
