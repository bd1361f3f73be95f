"""Invariants of the dataset generator under drawn words, templates, seeds and sizes."""

import torch
from hypothesis import given

from circuit.syllogisms import (
    DatasetError,
    Recipe,
    combinations,
    generate,
    tokenize_prompt,
    word_tokens,
)
from circuit.templates import fill_template
from fixtures.strategies import recipes


def _generate_or_skip(tokenizer, recipe: Recipe):
    """The dataset, or None when the drawn words do not survive the length filters."""
    try:
        return generate(tokenizer, recipe)
    except DatasetError as error:
        if "kept 0/" not in str(error):
            raise
        return None


def _combination_by_text(tokenizer, recipe: Recipe) -> dict:
    """Prompt text -> the combination of words that produced it."""
    return {
        tokenize_prompt(tokenizer, recipe.template, combo).text: combo
        for combo in combinations(recipe.words)
    }


@given(recipe=recipes())
def test_prompts_have_equal_lengths_and_tokenize_to_their_rows(bundled_tokenizer, recipe):
    dataset = _generate_or_skip(bundled_tokenizer, recipe)
    if dataset is None:
        return
    bos = bundled_tokenizer.bos_token_id
    for text, row in zip(dataset.prompts, dataset.clean_tokens.tolist(), strict=True):
        assert [bos, *bundled_tokenizer(text, add_special_tokens=False)["input_ids"]] == row
    for text, row in zip(dataset.corrupted_prompts, dataset.corrupted_tokens.tolist(), strict=True):
        assert [bos, *bundled_tokenizer(text, add_special_tokens=False)["input_ids"]] == row


@given(recipe=recipes())
def test_every_role_points_at_its_word(bundled_tokenizer, recipe):
    dataset = _generate_or_skip(bundled_tokenizer, recipe)
    if dataset is None:
        return
    by_text = _combination_by_text(bundled_tokenizer, recipe)
    roles, tokens = dataset.roles, dataset.clean_tokens
    assert roles["bos"] == 0
    assert roles["final"] == tokens.shape[1] - 1
    assert (tokens[:, 0] == bundled_tokenizer.bos_token_id).all()
    for index, prompt in enumerate(dataset.prompts):
        words = by_text[prompt].words()
        slots = [s for s in fill_template(recipe.template, words) if s.role]
        assert {s.role for s in slots} == set(roles) - {"bos", "final"}
        for slot in slots:
            expected = word_tokens(bundled_tokenizer, words[slot.field])[0]
            assert tokens[index, roles[slot.role]].item() == expected, (slot.role, prompt)
    final_text = bundled_tokenizer.decode(tokens[0, roles["final"]])
    assert recipe.template.endswith(final_text.strip())


@given(recipe=recipes())
def test_corruption_swaps_exactly_the_descriptor_pair_and_flips_the_answer(
    bundled_tokenizer, recipe
):
    dataset = _generate_or_skip(bundled_tokenizer, recipe)
    if dataset is None:
        return
    clean, corrupted, roles = dataset.clean_tokens, dataset.corrupted_tokens, dataset.roles
    combo = _combination_by_text(bundled_tokenizer, recipe)[dataset.prompts[0]]
    width = len(word_tokens(bundled_tokenizer, combo.descriptor))
    assert width == len(word_tokens(bundled_tokenizer, combo.opposite))
    descriptor = list(range(roles["descriptor"], roles["descriptor"] + width))
    opposite = list(range(roles["opposite"], roles["opposite"] + width))
    changed = (clean != corrupted).any(dim=0).nonzero().flatten().tolist()
    assert set(changed) <= set(descriptor) | set(opposite)
    assert torch.equal(corrupted[:, descriptor], clean[:, opposite])
    assert torch.equal(corrupted[:, opposite], clean[:, descriptor])
    n = len(dataset)
    assert n % 2 == 0
    twins = torch.arange(n).view(-1, 2).flip(1).flatten()
    assert torch.equal(dataset.answers[twins], dataset.answers.flip(1))
    assert torch.equal(corrupted, clean[twins])


@given(recipe=recipes())
def test_answers_are_distinct_single_first_tokens(bundled_tokenizer, recipe):
    dataset = _generate_or_skip(bundled_tokenizer, recipe)
    if dataset is None:
        return
    assert dataset.answers.shape == (len(dataset), 2)
    assert dataset.answers.dtype == torch.long
    assert (dataset.answers[:, 0] != dataset.answers[:, 1]).all()
    firsts = {
        word_tokens(bundled_tokenizer, word)[0]
        for pair in recipe.words.descriptor_pairs
        for word in pair
    }
    assert set(dataset.answers.flatten().tolist()) <= firsts


@given(recipe=recipes())
def test_same_recipe_same_dataset(bundled_tokenizer, recipe):
    first = _generate_or_skip(bundled_tokenizer, recipe)
    if first is None:
        return
    second = generate(bundled_tokenizer, recipe)
    assert first.prompts == second.prompts
    assert torch.equal(first.clean_tokens, second.clean_tokens)
    assert torch.equal(first.answers, second.answers)
    assert first.roles == second.roles
