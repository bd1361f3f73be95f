"""Generated syllogism corpus and evaluation prompts for the bundled model.

Every template renders a prompt that ends with ``"... {noun} are"``; the completion is
``" {descriptor}."``. A training sequence is ``<|endoftext|>`` (id 0) + prompt + completion
+ ``<|endoftext|>``. The answer of a prompt is the first token of ``" {descriptor}"``, the
wrong answer the first token of ``" {opposite}"``.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from circuit.training.words import TRAIN_CATEGORIES, TRAIN_DESCRIPTOR_PAIRS, TRAIN_NOUNS
from circuit.vocabulary import (
    HELDOUT_CATEGORIES,
    HELDOUT_NOUNS,
    STUDY_CATEGORIES,
    STUDY_DESCRIPTOR_PAIRS,
    STUDY_NOUNS,
)

TEMPLATES: Final[dict[str, str]] = {
    "study": (
        "All {category} are {descriptor}, not {opposite}. {Noun} are {category}. "
        "Therefore, {noun} are"
    ),
    "plain": "All {category} are {descriptor}. {Noun} are {category}. Therefore, {noun} are",
    "not_but": (
        "All {category} are not {opposite} but {descriptor}. {Noun} are {category}. "
        "Therefore, {noun} are"
    ),
    "swapped": (
        "{Noun} are {category}. All {category} are {descriptor}, not {opposite}. "
        "Therefore, {noun} are"
    ),
    "so": "All {category} are {descriptor}, not {opposite}. {Noun} are {category}. So {noun} are",
    "hence": (
        "All {category} are {descriptor} and not {opposite}. {Noun} are {category}. "
        "Hence, {noun} are"
    ),
    "distractor": (
        "All {category} are {descriptor}, not {opposite}. {Other} are {other_category}. "
        "{Noun} are {category}. Therefore, {noun} are"
    ),
}
"""Prompt templates by name; ``study`` is the notebook's template exactly; ``plain`` has no
opposite (its wrong answer is still the paired opposite's first token)."""

TEMPLATE_WEIGHTS: Final[dict[str, float]] = {
    "study": 0.25,
    "plain": 0.25,
    "not_but": 0.1,
    "swapped": 0.1,
    "so": 0.1,
    "hence": 0.1,
    "distractor": 0.1,
}
"""Sampling weights of the templates in the training corpus."""

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class Syllogism:
    """One rendered syllogism: ``prompt + " " + descriptor + "."`` is the full text."""

    template: str
    prompt: str
    descriptor: str
    opposite: str

    @property
    def text(self) -> str:
        """The whole syllogism, prompt plus completion."""
        return f"{self.prompt} {self.descriptor}."


def render(
    template: str,
    category: str,
    noun: str,
    descriptor: str,
    opposite: str,
    other: str = "",
    other_category: str = "",
) -> Syllogism:
    """Render one template; ``noun`` is capitalised (``"Dogs"``), its lowercase form is derived."""
    prompt = TEMPLATES[template].format(
        category=category,
        descriptor=descriptor,
        opposite=opposite,
        Noun=noun,
        noun=noun.lower(),
        Other=other,
        other_category=other_category,
    )
    return Syllogism(template, prompt, descriptor, opposite)


def _sample(
    rng: random.Random,
    template: str,
    categories: Sequence[str],
    nouns: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    random_opposite_rate: float,
) -> Syllogism:
    pair = rng.choice(pairs)
    descriptor, opposite = pair if rng.random() < 0.5 else (pair[1], pair[0])
    if rng.random() < random_opposite_rate:
        others = [word for p in pairs for word in p if word not in pair]
        opposite = rng.choice(others)
    category, other_category = rng.sample(list(categories), 2)
    noun, other = rng.sample(list(dict.fromkeys(nouns)), 2)
    return render(template, category, noun, descriptor, opposite, other, other_category)


def training_texts(
    rng: random.Random,
    n: int,
    random_opposite_rate: float = 0.9,
    extra_descriptors: bool = True,
) -> list[str]:
    """Sample ``n`` training syllogisms (training words only, templates by weight).

    With probability ``random_opposite_rate`` the opposite is another pair's descriptor,
    so that the model reads which descriptor the premise asserts instead of recalling pairs.
    ``extra_descriptors`` adds the training-only descriptor pairs to the study pairs.
    """
    pairs = TRAIN_DESCRIPTOR_PAIRS if extra_descriptors else STUDY_DESCRIPTOR_PAIRS
    names = list(TEMPLATE_WEIGHTS)
    weights = [TEMPLATE_WEIGHTS[name] for name in names]
    texts = []
    for _ in range(n):
        template = rng.choices(names, weights)[0]
        syllogism = _sample(
            rng,
            template,
            TRAIN_CATEGORIES,
            TRAIN_NOUNS,
            pairs,
            random_opposite_rate,
        )
        texts.append(syllogism.text)
    return texts


def split_words(split: Split) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(categories, capitalised nouns) of an evaluation split: study lists or held-out lists."""
    if split == "train":
        return STUDY_CATEGORIES, tuple(dict.fromkeys(STUDY_NOUNS))
    return HELDOUT_CATEGORIES, HELDOUT_NOUNS


def evaluation_prompts(template: str, split: Split, n: int, seed: int = 0) -> list[Syllogism]:
    """``n`` distinct-by-sampling evaluation prompts with the study descriptor pairs.

    Opposites are always the paired opposite; ``split`` picks the nouns and categories.
    """
    rng = random.Random(f"{seed}-{template}-{split}")
    categories, nouns = split_words(split)
    return [
        _sample(rng, template, categories, nouns, STUDY_DESCRIPTOR_PAIRS, 0.0) for _ in range(n)
    ]
