"""The bundled tokenizer splits the study's word classes as Pythia does."""

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from circuit.training.layout import DEFAULT_DIR
from circuit.training.tokenizer import SPECIAL_TOKEN, token_count, train_tokenizer
from circuit.training.words import (
    ALL_CATEGORIES,
    ALL_NOUNS,
    DESCRIPTOR_MORPHEMES,
    TRAIN_DESCRIPTOR_PAIRS,
)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(str(DEFAULT_DIR))


def test_special_token_is_id_zero_and_no_bos_is_added(tokenizer):
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN) == 0
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id == 0
    assert 0 not in tokenizer("All birds are")["input_ids"]
    assert 300 <= len(tokenizer) <= 2000


@pytest.mark.parametrize("category", ALL_CATEGORIES)
def test_categories_are_one_token(tokenizer, category):
    assert token_count(tokenizer, category) == 1


@pytest.mark.parametrize("noun", sorted(set(ALL_NOUNS)))
def test_nouns_capitalised_two_tokens_lowercase_one(tokenizer, noun):
    assert token_count(tokenizer, noun) == 2
    assert token_count(tokenizer, noun.lower()) == 1


@pytest.mark.parametrize("descriptor", sorted(DESCRIPTOR_MORPHEMES))
def test_descriptors_are_their_three_morphemes(tokenizer, descriptor):
    ids = tokenizer(" " + descriptor, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    first, second, third = DESCRIPTOR_MORPHEMES[descriptor]
    assert pieces == [" " + first, second, third]


@pytest.mark.parametrize(("descriptor", "opposite"), TRAIN_DESCRIPTOR_PAIRS)
def test_paired_descriptors_have_different_first_tokens(tokenizer, descriptor, opposite):
    first = tokenizer(" " + descriptor, add_special_tokens=False)["input_ids"][0]
    other = tokenizer(" " + opposite, add_special_tokens=False)["input_ids"][0]
    assert first != other


def test_training_the_tokenizer_reproduces_the_shipped_vocabulary(tokenizer):
    assert train_tokenizer().get_vocab() == tokenizer.get_vocab()
