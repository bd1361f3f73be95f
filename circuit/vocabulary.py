"""Word lists for syllogism prompts: the study's lists and the held-out ones.

The study lists are copied verbatim from the source notebook
(``shared/seed/syllogism-circuit-notebook.txt``). Held-out lists hold words the study never
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
