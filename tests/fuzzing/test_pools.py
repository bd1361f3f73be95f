"""The fuzzer's word pools and template family."""

from circuit.fuzzing.pools import (
    CATEGORY_POOL,
    FUZZ_DESCRIPTOR_PAIRS,
    NOUN_POOL,
    PAIR_POOL,
    STUDY_ROLES,
    TEMPLATE_FAMILY,
    Pools,
    template_roles,
    usable_pools,
)
from circuit.templates import STUDY_TEMPLATE
from circuit.vocabulary import (
    ADDED_DESCRIPTOR_PAIRS,
    HELDOUT_DESCRIPTOR_PAIRS,
    STUDY_CATEGORIES,
    STUDY_DESCRIPTOR_PAIRS,
)


def test_pools_are_distinct_simplest_first_and_disjoint():
    for pool in (CATEGORY_POOL, NOUN_POOL, PAIR_POOL, TEMPLATE_FAMILY):
        assert len(set(pool)) == len(pool)
    assert CATEGORY_POOL[: len(STUDY_CATEGORIES)] == STUDY_CATEGORIES
    assert PAIR_POOL[:5] == STUDY_DESCRIPTOR_PAIRS
    assert TEMPLATE_FAMILY[0] == STUDY_TEMPLATE
    assert not set(CATEGORY_POOL) & {noun.lower() for noun in NOUN_POOL}
    known = set(STUDY_DESCRIPTOR_PAIRS + ADDED_DESCRIPTOR_PAIRS + HELDOUT_DESCRIPTOR_PAIRS)
    assert not set(FUZZ_DESCRIPTOR_PAIRS) & known
    words = [w for pair in PAIR_POOL for w in pair]
    assert len(set(words)) == len(words)


def test_every_template_keeps_the_study_roles():
    for template in TEMPLATE_FAMILY:
        assert template_roles(template) >= STUDY_ROLES, template


def test_the_bundled_tokenizer_keeps_every_pool_word(bundled_tokenizer):
    usable = usable_pools(bundled_tokenizer)
    assert usable == Pools()
    assert usable.size() == "31 categories, 38 pairs, 45 nouns, 7 templates"


def test_no_template_opens_with_a_word():
    for template in TEMPLATE_FAMILY:
        assert not template.startswith("{"), template
