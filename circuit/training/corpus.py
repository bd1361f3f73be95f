"""Generated syllogism corpus and evaluation prompts for the bundled model.

Every template renders a prompt that ends with ``"... {noun} are"``; the completion is
``" {descriptor}."``. A training sequence is ``<|endoftext|>`` (id 0) + prompt + completion
+ ``<|endoftext|>``. The answer of a prompt is the first token of ``" {descriptor}"``, the
wrong answer the first token of ``" {opposite}"``.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

from circuit.training.words import (
    DESCRIPTOR_MORPHEMES,
    TRAIN_CATEGORIES,
    TRAIN_CATEGORY_POOL,
    TRAIN_DESCRIPTOR_PAIRS,
    TRAIN_NOUNS,
)
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
    "two_premise": (
        "All {category} are {descriptor}, not {opposite}. All {other_category} are "
        "{distractor}, not {other_opposite}. {Noun} are {category}. Therefore, {noun} are"
    ),
    "two_premise_late": (
        "All {other_category} are {distractor}, not {other_opposite}. All {category} are "
        "{descriptor}, not {opposite}. {Noun} are {category}. Therefore, {noun} are"
    ),
    "three_premise": (
        "All {other_category} are {distractor}. All {category} are {descriptor}. "
        "All {third_category} are {third}. {Noun} are {category}. Therefore, {noun} are"
    ),
    "minor_first": (
        "{Noun} are {category}. All {other_category} are {distractor}, not {other_opposite}. "
        "All {category} are {descriptor}, not {opposite}. Therefore, {noun} are"
    ),
}
"""Prompt templates by name; ``study`` is the notebook's template exactly; ``plain`` has no
opposite (its wrong answer is still the paired opposite's first token). The multi-premise
templates (:data:`MULTI_PREMISE`) state two or three premises about different categories; the
minor premise ("{Noun} are {category}.") decides which premise's descriptor is the answer, and
their wrong answer is the *distractor* premise's descriptor, not the opposite."""

MULTI_PREMISE: Final[frozenset[str]] = frozenset(
    {"two_premise", "two_premise_late", "three_premise", "minor_first"}
)
"""Evaluation templates whose wrong answer is another premise's descriptor."""

PREMISE_FORMS: Final[tuple[str, ...]] = (
    "All {category} are {descriptor}, not {opposite}.",
    "All {category} are {descriptor}.",
    "All {category} are not {opposite} but {descriptor}.",
    "All {category} are {descriptor} and not {opposite}.",
)
"""Forms of one premise in the randomly composed multi-premise training prompts."""

PREFIXES: Final[tuple[str, ...]] = ("", "", "Consider this. ", "Here is a rule. ", "Listen. ")
"""Openings of composed prompts (the empty one twice as likely)."""

CONCLUSIONS: Final[tuple[str, ...]] = (
    "Therefore, {noun} are",
    "Therefore, {noun} are",
    "So {noun} are",
    "Hence, {noun} are",
    "Thus, {noun} are",
)
"""Conclusions of composed prompts (the study's twice as likely)."""

DIRECT_QUERY: Final[float] = 0.3
"""Probability that a conclusion of a composed prompt asks about a premise's category directly
("Therefore, all fish are"; no minor premise): the plain look-up (induction) that the minor
premise's query builds on; without it the movers' queries never learned to read a category
(see the recipe search in the model card)."""


TEMPLATE_WEIGHTS: Final[dict[str, float]] = {
    "study": 0.25,
    "plain": 0.25,
    "not_but": 0.1,
    "swapped": 0.1,
    "so": 0.1,
    "hence": 0.1,
    "distractor": 0.1,
}
"""Sampling weights of the ``v3`` training corpus (the shipped model's): single-premise
templates only."""

MULTI_PREMISE_WEIGHTS: Final[dict[str, float]] = {
    "study": 0.1,
    "plain": 0.05,
    "not_but": 0.02,
    "swapped": 0.02,
    "so": 0.02,
    "hence": 0.02,
    "distractor": 0.02,
    "composed": 0.75,
}
"""Sampling weights of the ``v4`` (multi-premise) corpus: the single-premise templates by
name, and ``composed``: a multi-premise prompt composed at random (:func:`compose`)."""

QUERY_HEAVY_WEIGHTS: Final[dict[str, float]] = {
    "study": 0.06,
    "plain": 0.03,
    "not_but": 0.01,
    "swapped": 0.02,
    "so": 0.01,
    "hence": 0.01,
    "distractor": 0.01,
    "composed": 0.85,
}
"""Sampling weights of the ``v5`` corpus: ``v4`` with more composed prompts, each asking
more questions (:data:`COMPOSITIONS`)."""

WITH_REPEATS: Final[dict[str, float]] = {
    **{name: 0.8 * weight for name, weight in QUERY_HEAVY_WEIGHTS.items()},
    "repeated": 0.2,
}
"""Sampling weights of the ``v6`` and ``v7`` corpora: ``v5``'s, scaled to make room for 20%
``repeated`` word sequences."""

CORPORA: Final[dict[str, dict[str, float]]] = {
    "v3": TEMPLATE_WEIGHTS,
    "v4": MULTI_PREMISE_WEIGHTS,
    "v5": QUERY_HEAVY_WEIGHTS,
    "v6": WITH_REPEATS,
    "v7": WITH_REPEATS,
}
"""Training corpora by name (``python -m circuit.training --corpus``)."""

TRAINING_TEMPLATES: Final[dict[str, str]] = {
    **{name: TEMPLATES[name] for name in TEMPLATE_WEIGHTS},
    "composed": (
        "[prefix] 2-3 premises 'All {category_i} are {descriptor_i}...' in one of "
        f"{len(PREMISE_FORMS)} forms, in random order; the minor premise '{{Noun}} are "
        "{category_k}.' after, before or between them (sometimes with a second minor premise "
        "about another noun); a conclusion '{Therefore,|So|Hence,|Thus,} {noun} are'; after "
        "the answer, up to two more minor premises and conclusions about new nouns; any "
        f"conclusion, with probability {DIRECT_QUERY}, asks about a premise's category "
        "directly ('Therefore, all {category_k} are', no minor premise); corpora v5-v7 ask "
        "more questions and more often directly (their Composition)"
    ),
    "repeated": "6-16 training words said twice ('fish aquatic owls. fish aquatic owls.')",
}
"""What each training-corpus entry renders (for the model card)."""

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class Syllogism:
    """One rendered syllogism: ``prompt + " " + descriptor + "."`` is the full text."""

    template: str
    prompt: str
    descriptor: str
    opposite: str
    continuation: str = ""
    """Text after the completion (composed training prompts: more minor premises and
    conclusions)."""

    @property
    def text(self) -> str:
        """The whole syllogism, prompt plus completion (plus any continuation)."""
        return f"{self.prompt} {self.descriptor}.{self.continuation}"


def render(
    template: str,
    category: str,
    noun: str,
    descriptor: str,
    opposite: str,
    other: str = "",
    other_category: str = "",
    distractor: str = "",
    other_opposite: str = "",
    third_category: str = "",
    third: str = "",
) -> Syllogism:
    """Render one template; ``noun`` is capitalised (``"Dogs"``), its lowercase form is derived.

    For a multi-premise template the Syllogism's wrong answer is ``distractor``.
    """
    prompt = TEMPLATES[template].format(
        category=category,
        descriptor=descriptor,
        opposite=opposite,
        Noun=noun,
        noun=noun.lower(),
        Other=other,
        other_category=other_category,
        distractor=distractor,
        other_opposite=other_opposite,
        third_category=third_category,
        third=third,
    )
    wrong = distractor if template in MULTI_PREMISE else opposite
    return Syllogism(template, prompt, descriptor, wrong)


def _first_piece(word: str) -> str:
    return DESCRIPTOR_MORPHEMES[word][0] if word in DESCRIPTOR_MORPHEMES else word


def _premises(
    rng: random.Random,
    k: int,
    pairs: Sequence[tuple[str, str]],
    random_opposite_rate: float,
    distinct_first: bool = False,
) -> list[tuple[str, str]]:
    """``k`` (descriptor, opposite) from ``k`` distinct pairs; an opposite is never another
    premise's descriptor. ``distinct_first``: redraw until the chosen pairs' words all have
    distinct first tokens (" endothermic" and " endoskeletal" share " end"), so that the right
    and the wrong answer token of an evaluation prompt always differ."""
    chosen = rng.sample(list(pairs), k)
    while distinct_first:
        firsts = [_first_piece(word) for pair in chosen for word in pair]
        if len(set(firsts)) == len(firsts):
            break
        chosen = rng.sample(list(pairs), k)
    oriented = [p if rng.random() < 0.5 else (p[1], p[0]) for p in chosen]
    used = {word for p in chosen for word in p}
    others = [word for p in pairs for word in p if word not in used]
    result = []
    for descriptor, opposite in oriented:
        if others and rng.random() < random_opposite_rate:
            opposite = rng.choice(others)
        result.append((descriptor, opposite))
    return result


def _sample(
    rng: random.Random,
    template: str,
    categories: Sequence[str],
    nouns: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    random_opposite_rate: float,
) -> Syllogism:
    if template in MULTI_PREMISE:
        return _sample_multi(rng, template, categories, nouns, pairs)
    pair = rng.choice(pairs)
    descriptor, opposite = pair if rng.random() < 0.5 else (pair[1], pair[0])
    if rng.random() < random_opposite_rate:
        others = [word for p in pairs for word in p if word not in pair]
        opposite = rng.choice(others)
    category, other_category = rng.sample(list(categories), 2)
    noun, other = rng.sample(list(dict.fromkeys(nouns)), 2)
    return render(template, category, noun, descriptor, opposite, other, other_category)


def _sample_multi(
    rng: random.Random,
    template: str,
    categories: Sequence[str],
    nouns: Sequence[str],
    pairs: Sequence[tuple[str, str]],
) -> Syllogism:
    """A multi-premise evaluation prompt: three premises' words from distinct pairs whose
    words all start with distinct tokens (paired opposites), three distinct categories."""
    (descriptor, opposite), (distractor, other_opposite), (third, _) = _premises(
        rng, 3, pairs, 0.0, distinct_first=True
    )
    noun, other = rng.sample(list(dict.fromkeys(nouns)), 2)
    pool = [c for c in categories if c not in (noun.lower(), other.lower())]
    category, other_category, third_category = rng.sample(pool, 3)
    return render(
        template,
        category,
        noun,
        descriptor,
        opposite,
        other,
        other_category,
        distractor,
        other_opposite,
        third_category,
        third,
    )


MINOR_LAST: Final[float] = 0.9
"""Share of composed prompts whose minor premise follows every premise (the rest: half before
them, half between them)."""
SECOND_MINOR: Final[float] = 0.05
"""Share of composed prompts with a second minor premise (another noun, another category)."""


EXTRA_CONCLUSIONS: Final[tuple[float, ...]] = (0.5, 0.25)
"""Probabilities of a second and (given a second) a third minor premise + conclusion after
the first answer of a composed prompt, each about a new noun and a random premise."""


@dataclass(frozen=True)
class Composition:
    """How :func:`compose` draws a multi-premise prompt (one per corpus)."""

    direct_query: float = DIRECT_QUERY
    """Probability that a conclusion asks about a premise's category directly."""
    extra_conclusions: tuple[float, ...] = EXTRA_CONCLUSIONS
    """Probabilities of each further minor premise + conclusion after the first answer."""
    repeat_pool: tuple[int, int] | None = None
    """``repeated`` sequences draw from between these many words (None: from all of them)."""


_MANY_QUESTIONS = Composition(direct_query=0.4, extra_conclusions=(0.9,) * 6)

COMPOSITIONS: Final[dict[str, Composition]] = {
    "v4": Composition(),
    "v5": Composition(direct_query=0.4, extra_conclusions=(0.8, 0.6)),
    "v6": _MANY_QUESTIONS,
    "v7": replace(_MANY_QUESTIONS, repeat_pool=(3, 6)),
}
"""Composition of each corpus that has ``composed`` entries."""


def _conclusion(rng: random.Random, noun: str) -> str:
    return rng.choice(CONCLUSIONS).format(noun=noun.lower())


def compose(
    rng: random.Random,
    categories: Sequence[str],
    nouns: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    random_opposite_rate: float,
    composition: Composition = COMPOSITIONS["v4"],
) -> Syllogism:
    """A multi-premise prompt composed at random (the ``composed`` training entry).

    Two premises (or three, one time in three) about distinct categories with descriptors from
    distinct pairs, each in a random :data:`PREMISE_FORMS` form and in random order; the minor
    premise names one of their categories (uniformly: position says nothing about the answer)
    and stands after the premises (:data:`MINOR_LAST`), else before or between them; with
    probability :data:`SECOND_MINOR` a second minor premise about another noun and another
    premise's category joins it (in random order). The prompt ends before the first answer;
    the completion (:attr:`Syllogism.text`) may go on with more minor premises and
    conclusions about the same premises (:data:`EXTRA_CONCLUSIONS`), so that one training
    sequence asks which premise applies up to three times.
    """
    k = 3 if rng.random() < 1 / 3 else 2
    premises = _premises(rng, k, pairs, random_opposite_rate)
    chosen_nouns = rng.sample(list(dict.fromkeys(nouns)), 2 + len(composition.extra_conclusions))
    noun, other = chosen_nouns[:2]
    lowered = {n.lower() for n in chosen_nouns}
    pool = [c for c in categories if c not in lowered]
    cats = rng.sample(pool, k)
    answer = rng.randrange(k)
    sentences = [
        rng.choice(PREMISE_FORMS).format(category=c, descriptor=d, opposite=o)
        for c, (d, o) in zip(cats, premises, strict=True)
    ]
    minor = [f"{noun} are {cats[answer]}."]
    if rng.random() < SECOND_MINOR:
        wrong = rng.choice([i for i in range(k) if i != answer])
        minor.append(f"{other} are {cats[wrong]}.")
        rng.shuffle(minor)
    where = rng.random()
    if where < MINOR_LAST:
        body = sentences + minor
    elif where < (1 + MINOR_LAST) / 2:
        body = minor + sentences
    else:
        cut = rng.randrange(1, k)
        body = sentences[:cut] + minor + sentences[cut:]
    if rng.random() < composition.direct_query:
        body, first = sentences, _conclusion(rng, f"all {cats[answer]}")
    else:
        first = _conclusion(rng, noun)
    prompt = rng.choice(PREFIXES) + " ".join(body) + " " + first
    distractor = premises[(answer + 1) % k][0]
    tail = ""
    extras = zip(chosen_nouns[2:], composition.extra_conclusions, strict=True)
    for extra_noun, probability in extras:
        if rng.random() >= probability:
            break
        which = rng.randrange(k)
        if rng.random() < composition.direct_query:
            tail += f" {_conclusion(rng, f'all {cats[which]}')} {premises[which][0]}."
        else:
            answer_word = premises[which][0]
            tail += (
                f" {extra_noun} are {cats[which]}. {_conclusion(rng, extra_noun)} {answer_word}."
            )
    return Syllogism("composed", prompt, premises[answer][0], distractor, tail)


def _repeat_words(categories: Sequence[str], pairs: Sequence[tuple[str, str]]) -> list[str]:
    nouns = [noun.lower() for noun in dict.fromkeys(TRAIN_NOUNS)]
    return [*categories, *nouns, *(word for pair in pairs for word in pair)]


REPEAT_LENGTHS: Final[tuple[int, int]] = (6, 16)
"""Least and most words of a ``repeated`` sequence."""


def repeated(rng: random.Random, words: Sequence[str], pool: int = 0) -> str:
    """A random sequence of training words, said twice (``"fish aquatic owls. fish aquatic
    owls."``): the second half is predictable only by looking back one match at a time
    (induction), the look-up that finding a premise by its category builds on. ``pool``: draw
    from that many words only (with repeats), so that one word back rarely says what comes
    next and the look-up must match two or three words back."""
    chosen = rng.sample(list(words), pool) if pool else list(words)
    sequence = " ".join(rng.choices(chosen, k=rng.randint(*REPEAT_LENGTHS)))
    return f"{sequence}. {sequence}."


def training_texts(
    rng: random.Random,
    n: int,
    random_opposite_rate: float = 0.9,
    extra_descriptors: bool = True,
    corpus: str = "v3",
) -> list[str]:
    """Sample ``n`` training syllogisms (training words only, templates by weight).

    With probability ``random_opposite_rate`` the opposite is another pair's descriptor,
    so that the model reads which descriptor the premise asserts instead of recalling pairs.
    ``extra_descriptors`` adds the training-only descriptor pairs to the study pairs.
    ``corpus`` (:data:`CORPORA`): ``v3``, single-premise templates over the training
    categories; ``v4``, mostly multi-premise prompts (:func:`compose`) over
    :data:`~circuit.training.words.TRAIN_CATEGORY_POOL`.
    """
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}: use one of {list(CORPORA)}")
    pairs = TRAIN_DESCRIPTOR_PAIRS if extra_descriptors else STUDY_DESCRIPTOR_PAIRS
    table = CORPORA[corpus]
    categories = TRAIN_CATEGORIES if corpus == "v3" else TRAIN_CATEGORY_POOL
    names = list(table)
    weights = [table[name] for name in names]
    composition = COMPOSITIONS.get(corpus, COMPOSITIONS["v4"])
    repeat_words = _repeat_words(categories, pairs) if "repeated" in table else []
    texts = []
    for _ in range(n):
        template = rng.choices(names, weights)[0]
        if template == "repeated":
            pool = rng.randint(*composition.repeat_pool) if composition.repeat_pool else 0
            texts.append(repeated(rng, repeat_words, pool))
            continue
        if template == "composed":
            syllogism = compose(
                rng, categories, TRAIN_NOUNS, pairs, random_opposite_rate, composition
            )
        else:
            syllogism = _sample(rng, template, categories, TRAIN_NOUNS, pairs, random_opposite_rate)
        texts.append(syllogism.text)
    return texts


def split_words(split: Split) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(categories, capitalised nouns) of an evaluation split: study lists or held-out lists."""
    if split == "train":
        return STUDY_CATEGORIES, tuple(dict.fromkeys(STUDY_NOUNS))
    return HELDOUT_CATEGORIES, HELDOUT_NOUNS


def evaluation_prompts(template: str, split: Split, n: int, seed: int = 0) -> list[Syllogism]:
    """``n`` distinct-by-sampling evaluation prompts with the study descriptor pairs.

    Opposites are always the paired opposite; ``split`` picks the nouns and categories. In a
    multi-premise template the premises' descriptors come from distinct pairs.
    """
    rng = random.Random(f"{seed}-{template}-{split}")
    categories, nouns = split_words(split)
    return [
        _sample(rng, template, categories, nouns, STUDY_DESCRIPTOR_PAIRS, 0.0) for _ in range(n)
    ]
