"""Strategies for whole dataset recipes: sizes, checks, and where shrinking goes."""

from hypothesis import find, given, settings

from circuit.fuzzing.pools import CATEGORY_POOL, NOUN_POOL, PAIR_POOL, Pools
from circuit.fuzzing.recipes import REJECTION_REASONS, build_checked
from circuit.fuzzing.strategies import DrawSizes, fuzz_recipes
from circuit.statistics import MIN_CLUSTERS
from circuit.templates import STUDY_TEMPLATE

SIZES = DrawSizes()


@settings(max_examples=15)
@given(recipe=fuzz_recipes(Pools(), SIZES))
def test_drawn_recipes_have_judgeable_sizes(bundled_tokenizer, recipe):
    words = recipe.words
    counts = [len(words.categories), len(words.descriptor_pairs), len(words.nouns)]
    assert all(SIZES.min_words <= c <= SIZES.max_words for c in counts)
    extra = recipe.n_pairs - SIZES.pairs_per_word * max(counts)
    assert 0 <= extra <= SIZES.max_extra_pairs
    assert not recipe.logit_diff_filter
    built = build_checked(bundled_tokenizer, recipe, MIN_CLUSTERS)
    if isinstance(built, str):
        assert built in REJECTION_REASONS
        return
    assert min(len(set(v)) for v in built.factors.values()) >= MIN_CLUSTERS
    assert len(built) <= 2 * recipe.n_pairs  # a twin already sampled is not added twice


def test_shrinking_goes_to_the_study_words_and_template():
    simplest = find(fuzz_recipes(Pools(), SIZES), lambda recipe: True)
    assert simplest.template == STUDY_TEMPLATE
    assert simplest.words.categories == CATEGORY_POOL[:MIN_CLUSTERS]
    assert simplest.words.descriptor_pairs == PAIR_POOL[:MIN_CLUSTERS]
    assert simplest.words.nouns == NOUN_POOL[:MIN_CLUSTERS]
    assert (simplest.seed, simplest.n_pairs) == (0, SIZES.pairs_per_word * MIN_CLUSTERS)
