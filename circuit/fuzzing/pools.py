"""What the fuzzer draws from: word pools and a family of templates that keep the roles.

Pools are ordered simplest first, because hypothesis shrinks a drawn word toward the start
of its pool: the study's words, then the held-out ones (:mod:`circuit.vocabulary`), then the
fuzzer's own (:data:`FUZZ_CATEGORIES`, :data:`FUZZ_NOUNS`, :data:`FUZZ_DESCRIPTOR_PAIRS`).
Category and noun pools share no word (a prompt never reads "Toads are toads").
:func:`usable_pools` keeps the words that pass a tokenizer's token-length checks, so that
almost every draw builds a dataset.
"""

from dataclasses import dataclass
from typing import Final

from circuit.syllogisms import TokenLengths, WordLists, filter_words
from circuit.templates import STUDY_TEMPLATE, fill_template
from circuit.vocabulary import (
    ADDED_DESCRIPTOR_PAIRS,
    HELDOUT_CATEGORIES,
    HELDOUT_DESCRIPTOR_PAIRS,
    HELDOUT_NOUN_CATEGORIES,
    HELDOUT_VARIANT_NOUNS,
    STUDY_CATEGORIES,
    STUDY_DESCRIPTOR_PAIRS,
    STUDY_NOUNS,
)

FUZZ_CATEGORIES: Final[tuple[str, ...]] = (
    "ravens",
    "swans",
    "beetles",
    "spiders",
    "badgers",
    "ferrets",
    "lambs",
    "mules",
)
"""More categories: plural animal names (one token each under the bundled tokenizer), used as
categories the way the ``heldout`` variant uses its second half of nouns."""

FUZZ_NOUNS: Final[tuple[str, ...]] = (
    "Sharks",
    "Eagles",
    "Parrots",
    "Turtles",
    "Llamas",
    "Bison",
    "Moose",
    "Koalas",
)
"""More nouns, none of them in a category pool."""

FUZZ_DESCRIPTOR_PAIRS: Final[tuple[tuple[str, str], ...]] = (
    ("herbothermic", "quadothermic"),
    ("bipivorous", "solivorous"),
    ("noctedal", "gregedal"),
    ("harmoskeletal", "arboskeletal"),
    ("fossitigrade", "venitigrade"),
    ("carnurnal", "planturnal"),
    ("digatic", "ovatic"),
    ("teromous", "exomous"),
    ("aquiparous", "ectiparous"),
    ("enditary", "vivitary"),
    ("dioreal", "soloreal"),
)
"""Nonsense descriptor pairs in the style of :data:`HELDOUT_DESCRIPTOR_PAIRS` (a known first
piece joined to another descriptor's rest, the pair sharing that rest), none of them there."""

CATEGORY_POOL: Final[tuple[str, ...]] = tuple(
    dict.fromkeys(STUDY_CATEGORIES + HELDOUT_CATEGORIES + HELDOUT_NOUN_CATEGORIES + FUZZ_CATEGORIES)
)
NOUN_POOL: Final[tuple[str, ...]] = tuple(
    dict.fromkeys(STUDY_NOUNS + HELDOUT_VARIANT_NOUNS + FUZZ_NOUNS)
)
PAIR_POOL: Final[tuple[tuple[str, str], ...]] = tuple(
    dict.fromkeys(
        STUDY_DESCRIPTOR_PAIRS
        + ADDED_DESCRIPTOR_PAIRS
        + HELDOUT_DESCRIPTOR_PAIRS
        + FUZZ_DESCRIPTOR_PAIRS
    )
)

TEMPLATE_FAMILY: Final[tuple[str, ...]] = (
    STUDY_TEMPLATE,
    "All {category} are {descriptor}, not {opposite}. {noun} are {category}. So {noun_lower} are",
    "All {category} are {descriptor} and not {opposite}. {noun} are {category}. "
    "Hence, {noun_lower} are",
    "All {category} are not {opposite} but {descriptor}. {noun} are {category}. "
    "Therefore, {noun_lower} are",
    "All {category} are {descriptor} and never {opposite}. {noun} are {category}. "
    "So {noun_lower} are",
    "Remember: {noun} are {category}. All {category} are {descriptor}, not {opposite}. "
    "Therefore, {noun_lower} are",
    "Every one of the {category} is {descriptor}, not {opposite}. The {noun_lower} are "
    "{category}. Hence the {noun_lower} are",
)
"""Paraphrases of the study template that keep every role of the study's, simplest
(the study's own) first: the training corpus's ``so``, ``hence`` and ``not_but`` wordings, then
three the bundled model never saw. None opens with a word slot: a prompt's first word has no
leading space, so it is not the token the same word is elsewhere (the corpus's ``swapped``
wording, "{Noun} are {category}. ...", is left out for that reason; "Remember: {noun} are
{category}. ..." keeps its order)."""

EXTRA_TEMPLATES: Final[tuple[str, ...]] = (
    "All {category} are {descriptor}, not {opposite}. Therefore, {noun_lower} are",
)
"""Templates that drop roles (no second category, no second noun): for the generator's own
property tests, never for judging a claim, whose roles may name what they drop."""


def template_roles(template: str) -> set[str]:
    """The roles a template defines (``bos`` and ``final`` included)."""
    words = {field: field for field in ("category", "descriptor", "opposite", "noun")}
    words["noun_lower"] = "noun"
    return {s.role for s in fill_template(template, words) if s.role} | {"bos", "final"}


STUDY_ROLES: Final[frozenset[str]] = frozenset(template_roles(STUDY_TEMPLATE))
"""The roles of the study's template: a claim's roles name some of these, so a template
that judges claims must define them all."""


@dataclass(frozen=True)
class Pools:
    """The words and templates a fuzzer draws from (each tuple simplest first)."""

    categories: tuple[str, ...] = CATEGORY_POOL
    descriptor_pairs: tuple[tuple[str, str], ...] = PAIR_POOL
    nouns: tuple[str, ...] = NOUN_POOL
    templates: tuple[str, ...] = TEMPLATE_FAMILY

    def size(self) -> str:
        """E.g. ``31 categories, 33 pairs, 45 nouns, 8 templates``."""
        return (
            f"{len(self.categories)} categories, {len(self.descriptor_pairs)} pairs, "
            f"{len(self.nouns)} nouns, {len(self.templates)} templates"
        )


def usable_pools(tokenizer, pools: Pools | None = None) -> Pools:
    """``pools`` less the words that fail the token-length checks :func:`generate` applies
    (lengths: the modal count of each whole pool) and the templates that lack a role."""
    pools = pools or Pools()
    words = WordLists(pools.categories, pools.descriptor_pairs, pools.nouns)
    kept, _ = filter_words(tokenizer, words, TokenLengths())
    templates = tuple(t for t in pools.templates if template_roles(t) >= STUDY_ROLES)
    return Pools(kept.categories, kept.descriptor_pairs, kept.nouns, templates)
