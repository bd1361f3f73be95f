"""Hypothesis strategies over whole syllogism dataset recipes.

Every choice shrinks toward the simplest dataset: lists toward their fewest words and each
word toward the start of its pool (the study's words), the template toward the study's, the
descriptor pairs toward their declared order, the seed toward 0 and the extra pairs toward
none. A shrunk counterexample is therefore the study's words and template except where the
failure needs something else (see :func:`circuit.fuzzing.engine.needed_words`).
"""

from dataclasses import dataclass

from hypothesis import strategies as st

from circuit.fuzzing.pools import Pools
from circuit.statistics import MIN_CLUSTERS
from circuit.syllogisms import Recipe, WordLists

DEFAULT_POOLS = Pools()
"""Every pool, unfiltered (:func:`circuit.fuzzing.pools.usable_pools` fits them to a tokenizer)."""

FUZZ_VARIANT = "fuzz"
"""The ``variant`` name of every drawn recipe (and of the datasets built from them)."""


@dataclass(frozen=True)
class DrawSizes:
    """How big a drawn dataset is.

    Each factor (categories, descriptor pairs, nouns) gets ``min_words``..``max_words`` words:
    at least the rule's ``min_clusters`` levels, so that a drawn dataset can be judged. The
    sample has ``pairs_per_word`` x (the largest factor's word count) pairs plus 0..
    ``max_extra_pairs`` more: with k levels and 7k sampled pairs a level is missing from the
    sample with probability about k e^-7 (under 1% per factor at k = 10), so few draws are
    rejected for having too few clusters, and each draw stays small (56..78 pairs).
    """

    min_words: int = MIN_CLUSTERS
    max_words: int = 10
    pairs_per_word: int = 7
    max_extra_pairs: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {self}")
        if self.pairs_per_word < 1 or self.max_extra_pairs < 0:
            raise ValueError(f"need pairs_per_word >= 1 and max_extra_pairs >= 0, got {self}")


def _words(pool: tuple, min_size: int, max_size: int) -> st.SearchStrategy[list]:
    return st.lists(
        st.sampled_from(pool), min_size=min_size, max_size=min(max_size, len(pool)), unique=True
    )


@st.composite
def word_lists(
    draw: st.DrawFn, pools: Pools = DEFAULT_POOLS, min_size: int = 1, max_size: int = 5
) -> WordLists:
    """Distinct words of each factor from ``pools``, each descriptor pair maybe flipped."""
    categories = draw(_words(pools.categories, min_size, max_size))
    pairs = draw(_words(pools.descriptor_pairs, min_size, max_size))
    flipped = [pair[::-1] if draw(st.booleans()) else pair for pair in pairs]
    nouns = draw(_words(pools.nouns, min_size, max_size))
    return WordLists(tuple(categories), tuple(flipped), tuple(nouns))


@st.composite
def recipes(
    draw: st.DrawFn,
    pools: Pools = DEFAULT_POOLS,
    words: st.SearchStrategy[WordLists] | None = None,
    max_pairs: int = 12,
) -> Recipe:
    """Unfiltered recipes (no model needed) over drawn words, templates, seeds and sizes."""
    return Recipe(
        variant="unfiltered",
        seed=draw(st.integers(min_value=0, max_value=2**31 - 1)),
        n_pairs=draw(st.integers(min_value=1, max_value=max_pairs)),
        template=draw(st.sampled_from(pools.templates)),
        words=draw(words if words is not None else word_lists(pools)),
        logit_diff_filter=False,
    )


@st.composite
def fuzz_recipes(draw: st.DrawFn, pools: Pools, sizes: DrawSizes = DrawSizes()) -> Recipe:
    """A whole dataset recipe for judging a claim: template, words, seed and size drawn.

    Like the ``heldout`` and ``unfiltered`` variants, no logit-diff filter (the dataset does
    not depend on the model judged, only on its tokenizer).
    """
    template = draw(st.sampled_from(pools.templates))
    words = draw(word_lists(pools, sizes.min_words, sizes.max_words))
    extra = draw(st.integers(min_value=0, max_value=sizes.max_extra_pairs))
    seed = draw(st.integers(min_value=0, max_value=2**16 - 1))
    largest = max(len(words.categories), len(words.descriptor_pairs), len(words.nouns))
    return Recipe(
        variant=FUZZ_VARIANT,
        seed=seed,
        n_pairs=sizes.pairs_per_word * largest + extra,
        template=template,
        words=words,
        logit_diff_filter=False,
    )
