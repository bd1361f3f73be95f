"""Drawn recipes: JSON round trip, digests, and the checks a draw must pass."""

import json

import pytest

from circuit.fuzzing.pools import CATEGORY_POOL, NOUN_POOL, PAIR_POOL
from circuit.fuzzing.recipes import (
    RecipeError,
    build_checked,
    recipe_digest,
    recipe_from_json,
    recipe_json,
)
from circuit.syllogisms import Recipe, WordLists
from circuit.templates import STUDY_TEMPLATE


def _recipe(n: int = 8, n_pairs: int = 56, **words) -> Recipe:
    lists = WordLists(CATEGORY_POOL[:n], PAIR_POOL[:n], NOUN_POOL[:n])
    lists = WordLists(**{**lists.__dict__, **words})
    return Recipe("fuzz", 0, n_pairs, STUDY_TEMPLATE, lists, logit_diff_filter=False)


def test_json_round_trip_and_digest():
    recipe = _recipe()
    data = json.loads(json.dumps(recipe_json(recipe)))
    assert recipe_from_json(data) == recipe
    assert recipe_from_json({"recipe": data}) == recipe
    assert recipe_digest(recipe) == recipe_digest(recipe_from_json(data))
    assert recipe_digest(recipe) != recipe_digest(_recipe(n_pairs=57))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": "1"}, "'seed' must be an integer"),
        ({"n_pairs": 0}, "'n_pairs' must be an integer"),
        ({"nouns": []}, "'nouns' must be a non-empty list"),
        ({"descriptor_pairs": [["a"]]}, "'descriptor_pairs' must be a list"),
        ({"template": 3}, "'template' must be a string"),
    ],
)
def test_bad_recipes_are_one_line_errors(change, message):
    with pytest.raises(RecipeError, match=message) as error:
        recipe_from_json({**recipe_json(_recipe()), **change})
    assert "\n" not in str(error.value)


def test_checks_a_draw_must_pass(bundled_tokenizer):
    dataset = build_checked(bundled_tokenizer, _recipe(), 8)
    assert not isinstance(dataset, str)
    assert min(len(set(v)) for v in dataset.factors.values()) >= 8
    assert build_checked(bundled_tokenizer, _recipe(n_pairs=8), 8) == "clusters"
    assert build_checked(bundled_tokenizer, _recipe(n=4), 8) == "clusters"
    long_word = (*CATEGORY_POOL[:7], "Uakaris")  # two tokens: a category must be one
    assert build_checked(bundled_tokenizer, _recipe(categories=long_word), 8) == "token-length"
    glued = Recipe(
        "fuzz", 0, 56, "All {category} are{descriptor} not {opposite}. x are", _recipe().words
    )
    assert build_checked(bundled_tokenizer, glued, 8) in {"roles", "alignment"}
