"""Training-only word lists and the morpheme segmentation the tokenizer is trained on.

The model's corpus draws from the study lists in :mod:`circuit.vocabulary` plus the
training-only extras below, and never from the held-out lists. The tokenizer's own training
text additionally contains the held-out words, so that they tokenize like the others.
"""

from typing import Final

from circuit.vocabulary import (
    ADDED_DESCRIPTOR_PAIRS,
    HELDOUT_CATEGORIES,
    HELDOUT_NOUNS,
    STUDY_CATEGORIES,
    STUDY_DESCRIPTOR_PAIRS,
    STUDY_NOUNS,
)

EXTRA_CATEGORIES: Final[tuple[str, ...]] = (
    "animals",
    "creatures",
    "vertebrates",
    "hunters",
    "grazers",
    "swimmers",
    "flyers",
    "climbers",
    "diggers",
    "pests",
    "critters",
    "wildlife",
    "runners",
    "breeders",
    "scavengers",
)
"""Training-only categories (plural, lowercase); disjoint from study and held-out lists."""

EXTRA_NOUNS: Final[tuple[str, ...]] = (
    "Ravens",
    "Swans",
    "Beetles",
    "Spiders",
    "Badgers",
    "Ferrets",
    "Hamsters",
    "Lambs",
    "Mules",
    "Donkeys",
    "Bison",
    "Moose",
    "Koalas",
    "Pandas",
    "Sloths",
    "Lemurs",
    "Apes",
    "Gorillas",
    "Jaguars",
    "Leopards",
    "Panthers",
    "Cougars",
    "Hyenas",
    "Jackals",
    "Coyotes",
    "Weasels",
    "Minks",
    "Newts",
    "Salmon",
    "Trout",
    "Sharks",
    "Clams",
    "Oysters",
    "Worms",
    "Slugs",
    "Flies",
    "Gnats",
    "Fleas",
    "Ticks",
    "Herons",
    "Storks",
    "Cranes",
    "Eagles",
    "Falcons",
    "Pigeons",
    "Doves",
    "Parrots",
    "Finches",
    "Robins",
    "Llamas",
    "Ponies",
    "Bulls",
    "Rams",
    "Boars",
    "Turtles",
    "Voles",
    "Kiwis",
    "Ibises",
    "Uakaris",
    "Nutrias",
)
"""Training-only capitalised plural nouns; disjoint from study and held-out lists."""

EXTRA_DESCRIPTOR_PAIRS: Final[tuple[tuple[str, str], ...]] = ADDED_DESCRIPTOR_PAIRS
"""Training descriptor pairs beyond the study's (each descriptor with its opposite)."""

DESCRIPTOR_MORPHEMES: Final[dict[str, tuple[str, str, str]]] = {
    "endothermic": ("end", "other", "mic"),
    "ectothermic": ("ect", "other", "mic"),
    "herbivorous": ("herb", "iv", "orous"),
    "carnivorous": ("carn", "iv", "orous"),
    "bipedal": ("bip", "ed", "al"),
    "quadrupedal": ("quad", "ruped", "al"),
    "exoskeletal": ("ex", "os", "keletal"),
    "endoskeletal": ("end", "os", "keletal"),
    "digitigrade": ("dig", "iti", "grade"),
    "plantigrade": ("plant", "i", "grade"),
    "nocturnal": ("noct", "urn", "al"),
    "diurnal": ("di", "urn", "al"),
    "aquatic": ("aqu", "at", "ic"),
    "terrestrial": ("ter", "rest", "rial"),
    "venomous": ("ven", "om", "ous"),
    "harmless": ("harm", "le", "ss"),
    "oviparous": ("ov", "ip", "arous"),
    "viviparous": ("viv", "ip", "arous"),
    "solitary": ("sol", "it", "ary"),
    "gregarious": ("greg", "ari", "ous"),
    "arboreal": ("arb", "ore", "al"),
    "fossorial": ("foss", "or", "ial"),
}
"""Every descriptor's three-piece segmentation, as Pythia splits " exoskeletal" into
" ex" "os" "keletal". The tokenizer is trained on these pieces (never on the whole word), so
" {descriptor}" encodes to exactly these three tokens, the first carrying the leading space."""

TEMPLATE_WORDS: Final[tuple[str, ...]] = (
    "All",
    "all",
    "are",
    "not",
    "but",
    "Therefore",
    "therefore",
    "So",
    "so",
    "Hence",
    "Thus",
    "and",
    "is",
    "the",
    "a",
)
"""Function words of the corpus templates. (The ``v4`` corpus's prefixes, "Consider this.",
"Here is a rule.", "Listen.", are not among them: adding them would change the shipped
tokenizer; they are split into smaller pieces.)"""

TRAIN_CATEGORIES: Final[tuple[str, ...]] = tuple(dict.fromkeys(STUDY_CATEGORIES + EXTRA_CATEGORIES))
TRAIN_NOUNS: Final[tuple[str, ...]] = tuple(dict.fromkeys(STUDY_NOUNS + EXTRA_NOUNS))
TRAIN_DESCRIPTOR_PAIRS: Final[tuple[tuple[str, str], ...]] = (
    STUDY_DESCRIPTOR_PAIRS + EXTRA_DESCRIPTOR_PAIRS
)
TRAIN_CATEGORY_POOL: Final[tuple[str, ...]] = TRAIN_CATEGORIES + tuple(
    noun.lower() for noun in dict.fromkeys(TRAIN_NOUNS)
)
"""Every category word of the training corpus: the training categories and the training nouns
lower-cased ("All dogs are ..."), as the ``heldout`` variant uses held-out nouns. A model that
must match a minor premise's category to a premise's category sees ~110 of them, so that its
matching generalises to category tokens it never saw (the held-out ones)."""
ALL_CATEGORIES: Final[tuple[str, ...]] = TRAIN_CATEGORIES + HELDOUT_CATEGORIES
ALL_NOUNS: Final[tuple[str, ...]] = TRAIN_NOUNS + HELDOUT_NOUNS
