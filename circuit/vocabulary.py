"""Word lists for syllogism prompts: the study's lists and the held-out ones.

The study lists are copied verbatim from the source notebook
(the Pythia-410m syllogism notebook the README describes). Held-out lists hold words the study never
used; the bundled model never sees them in training, so claims judged on the ``heldout``
dataset variant are judged away from the data the circuit was discovered on.
"""

from typing import Final

STUDY_CATEGORIES: Final[tuple[str, ...]] = (
    "birds",
    "fish",
    "insects",
    "mammals",
    "primates",
    "rodents",
    "predators",
    "prey",
    "game",
)

STUDY_DESCRIPTOR_PAIRS: Final[tuple[tuple[str, str], ...]] = (
    ("endothermic", "ectothermic"),
    ("herbivorous", "carnivorous"),
    ("bipedal", "quadrupedal"),
    ("exoskeletal", "endoskeletal"),
    ("digitigrade", "plantigrade"),
)
"""The notebook's descriptors, paired as it pairs them (index 2i with 2i+1)."""

ADDED_DESCRIPTOR_PAIRS: Final[tuple[tuple[str, str], ...]] = (
    ("nocturnal", "diurnal"),
    ("aquatic", "terrestrial"),
    ("venomous", "harmless"),
    ("oviparous", "viviparous"),
    ("solitary", "gregarious"),
    ("arboreal", "fossorial"),
)
"""Descriptor pairs beyond the study's five. The verdict rule needs at least eight levels of
every factor behind an interval, and the study has five descriptor pairs, so the ``unfiltered``
and ``heldout`` variants use these as well. The bundled model saw them in training, as it saw
the study's pairs; they played no part in discovering its circuit (that used ``study``)."""

STUDY_NOUNS: Final[tuple[str, ...]] = (
    "Dogs",
    "Elephants",
    "Lions",
    "Zebras",
    "Cows",
    "Horses",
    "Pigs",
    "Monkeys",
    "Wolves",
    "Deer",
    "Foxes",
    "Bears",
    "Mice",
    "Bats",
    "Snakes",
    "Lizards",
    "Seals",
    "Whales",
    "Cats",
    "Squid",
    "Dolphins",
    "Crabs",
    "Snails",
    "Bees",
    "Wasps",
    "Emus",
    "Ducks",
    "Owls",
    "Pigs",
    "Goats",
)
"""The notebook's nouns, duplicates ("Pigs" twice) included, as it had them."""

HELDOUT_CATEGORIES: Final[tuple[str, ...]] = (
    "reptiles",
    "amphibians",
    "herds",
    "pets",
    "beasts",
    "livestock",
)

HELDOUT_NOUNS: Final[tuple[str, ...]] = (
    "Tigers",
    "Rabbits",
    "Frogs",
    "Geese",
    "Sheep",
    "Camels",
    "Otters",
    "Moles",
    "Hawks",
    "Crows",
    "Toads",
    "Ants",
    "Moths",
    "Eels",
    "Hens",
    "Yaks",
)

HELDOUT_NOUN_CATEGORIES: Final[tuple[str, ...]] = tuple(noun.lower() for noun in HELDOUT_NOUNS[8:])
"""The second half of the held-out nouns, lower-cased, serve as eight more held-out categories
("All toads are ..."; the syllogisms are nonsensical by design): with six held-out categories
alone, the ``heldout`` variant would rest on too few independent categories."""

HELDOUT_VARIANT_NOUNS: Final[tuple[str, ...]] = HELDOUT_NOUNS[:8]
"""The held-out nouns of the ``heldout`` variant (the rest are its extra categories)."""

HELDOUT_DESCRIPTOR_PAIRS: Final[tuple[tuple[str, str], ...]] = (
    ("arbothermic", "vivothermic"),
    ("diedal", "teredal"),
    ("exrupedal", "dirupedal"),
    ("fossoskeletal", "biposkeletal"),
    ("plantitigrade", "vivitigrade"),
    ("carnigrade", "venigrade"),
    ("fossurnal", "ecturnal"),
    ("plantatic", "noctatic"),
    ("plantrestrial", "ectrestrial"),
    ("fossomous", "gregomous"),
    ("arbiparous", "digiparous"),
    ("noctarious", "quadarious"),
    ("harmorial", "digorial"),
    ("ectitary", "ovitary"),
    ("fossoreal", "plantoreal"),
    ("aquivorous", "gregivorous"),
)
"""Nonsense descriptor pairs no model has seen: the first piece of one known descriptor
joined to the rest of another (" arb" + "othermic"), the two of a pair sharing that rest as
"exoskeletal"/"endoskeletal" do. Under the bundled tokenizer each is three tokens whose first
is the known piece, so the answer token is familiar and the word is new. This is the fourth
set: each earlier one was replaced once a claim or recipe choice had been measured on it. These
16 were written before any model was measured on them, for the organism that claims
``spearman`` (claims/bundled.toml), whose claims were fixed on ``study`` first."""
