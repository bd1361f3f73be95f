"""Generated syllogism datasets: the study's recipe and its variants, tokenizer-aware.

``build_dataset(model, variant)`` follows the notebook's data setup:

1. keep the words whose token counts (with a leading space, under the model's own
   tokenizer) match the recipe's lengths: categories 1 token, descriptors 3, capitalised
   nouns 2 and lower-case nouns 1 for Pythia; ``None`` means the most common count in the
   word class under this tokenizer, which generalises the recipe to any tokenizer;
2. every (category, descriptor, noun) combination, the opposite being the descriptor's pair;
3. (``study`` only) keep combinations where the clean logit difference is > 2 and the
   swapped prompt's is < -2;
4. sample ``n_pairs`` of them with ``random.Random(seed)`` and add each one's swapped twin.

Prompt ``2k+1`` is the swapped twin of prompt ``2k``, so the corrupted tokens are the
clean tokens with neighbours exchanged, as in the notebook.

A recipe's ``family`` picks the prompts (templates as data: :data:`circuit.templates.
FAMILY_TEMPLATES`). ``study`` is the above. ``two-premise`` states two premises about
different categories ("All birds are exoskeletal, not endoskeletal. All fish are nocturnal,
not diurnal. Horses are birds. Therefore, horses are"); the answer is the first premise's
descriptor, the wrong answer the other premise's (role ``distractor``), and each prompt's
corrupted twin names the other category in the minor premise, which changes the answer and
nothing else. Prompt ``2k+1`` exchanges the two premises' descriptors (and opposites) of prompt
``2k``, so every descriptor is the right answer as often as the wrong one. Its combinations are
too many to enumerate: ``max(8 n_pairs, 512)`` are drawn (seeded) and then filtered and
sampled as above; the ``study`` variant keeps a combination only if the logit-diff filter
holds for it, its corrupted prompt, its twin and the twin's corrupted prompt; a combination
whose four premise words do not start with four different tokens is dropped.

Deviation from the notebook: its ``generate_combinations`` paired descriptor ``i`` with
descriptor ``i+1`` cyclically in the text while its answers paired ``2k`` with ``2k+1``; here
text and answers both use the declared pairs, which is what its answer tokens and corruption
assume.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from jaxtyping import Int

from circuit.dataset import FilterReport, SyllogismDataset
from circuit.metrics import logit_diff
from circuit.templates import FAMILIES, FAMILY_TEMPLATES, STUDY_TEMPLATE, fill_template
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

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

VARIANTS: tuple[str, ...] = ("study", "unfiltered", "heldout")
STUDY_N_PAIRS = 56
STUDY_SEED = 42
LOGIT_DIFF_THRESHOLD = 2.0
FILTER_BATCH = 128


class DatasetError(ValueError):
    """A dataset cannot be built as asked (empty after a filter, misaligned prompts, ...)."""


@dataclass(frozen=True)
class WordLists:
    """The words a dataset draws from; descriptor pairs are (descriptor, opposite)."""

    categories: tuple[str, ...]
    descriptor_pairs: tuple[tuple[str, str], ...]
    nouns: tuple[str, ...]


STUDY_WORDS = WordLists(STUDY_CATEGORIES, STUDY_DESCRIPTOR_PAIRS, STUDY_NOUNS)
"""The notebook's words: 9 categories, 5 descriptor pairs, 30 nouns."""
WIDE_PAIRS = STUDY_DESCRIPTOR_PAIRS + ADDED_DESCRIPTOR_PAIRS
UNFILTERED_WORDS = WordLists(STUDY_CATEGORIES, WIDE_PAIRS, STUDY_NOUNS)
"""The study's categories and nouns with 11 descriptor pairs (enough independent pairs)."""
HELDOUT_WORDS = WordLists(
    HELDOUT_CATEGORIES + HELDOUT_NOUN_CATEGORIES, HELDOUT_DESCRIPTOR_PAIRS, HELDOUT_VARIANT_NOUNS
)
"""Categories, descriptor pairs and nouns no model saw in training (14, 16 and 8)."""

FACTORS: tuple[str, ...] = ("pair", "category", "noun")
"""The factors a syllogism dataset is generated from; each prompt's levels are recorded."""


@dataclass(frozen=True)
class TokenLengths:
    """Required token counts per word class (with a leading space); None = modal count."""

    category: int | None = None
    descriptor: int | None = None
    noun: int | None = None
    noun_lower: int | None = None


PYTHIA_LENGTHS = TokenLengths(category=1, descriptor=3, noun=2, noun_lower=1)
"""The notebook's ``check_len`` arguments, which fit Pythia's tokenizer."""


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a dataset besides the model."""

    variant: str = "study"
    seed: int = STUDY_SEED
    n_pairs: int = STUDY_N_PAIRS
    template: str = STUDY_TEMPLATE
    words: WordLists = STUDY_WORDS
    lengths: TokenLengths = TokenLengths()
    logit_diff_filter: bool = True
    threshold: float = LOGIT_DIFF_THRESHOLD
    family: str = "study"
    """The prompt family (:data:`circuit.templates.FAMILIES`); ``template`` must be one of
    its templates (``recipe_for`` picks the family's own unless ``template`` is given)."""


def _check_integer(name: str, value: object, minimum: int | None = None) -> None:
    """``value`` is an int (not a bool, a float or a string) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        need = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise DatasetError(f"{name} must be {need}, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise DatasetError(f"{name} must be an integer >= {minimum}, got {value!r}")


def recipe_for(variant: str, **overrides: object) -> Recipe:
    """The recipe of a named variant, with fields overridden by keyword.

    Raises :class:`DatasetError` (one line naming the argument) for an unknown variant or
    field, a seed that is not an integer, or ``n_pairs`` that is not an integer >= 1.
    """
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise DatasetError(f"unknown dataset variant {variant!r}: use one of {list(VARIANTS)}")
    fields = set(Recipe.__dataclass_fields__) - {"variant"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise DatasetError(f"unknown dataset option(s) {unknown}; known: {sorted(fields)}")
    if "seed" in overrides:
        _check_integer("seed", overrides["seed"])
    if "n_pairs" in overrides:
        _check_integer("n_pairs", overrides["n_pairs"], 1)
    family = overrides.get("family", "study")
    if not isinstance(family, str) or family not in FAMILIES:
        raise DatasetError(f"unknown prompt family {family!r}: use one of {list(FAMILIES)}")
    if "template" not in overrides:
        overrides = {**overrides, "template": FAMILY_TEMPLATES[family]}
    defaults: dict[str, object] = {
        "study": {},
        "unfiltered": {"words": UNFILTERED_WORDS, "logit_diff_filter": False},
        "heldout": {"words": HELDOUT_WORDS, "logit_diff_filter": False},
    }[variant]
    return Recipe(variant=variant, **{**defaults, **overrides})


@dataclass(frozen=True)
class Combination:
    """One clean prompt's words; its twin swaps descriptor and opposite.

    A two-premise combination (``distractor`` set) adds the other premise's category,
    descriptor and opposite, and ``minor``, the category its minor premise names (empty: the
    answer premise's ``category``); its twin exchanges the two premises' descriptors and
    opposites, its corrupted prompt names ``other_category`` in the minor premise.
    """

    category: str
    descriptor: str
    opposite: str
    noun: str
    other_category: str = ""
    distractor: str = ""
    other_opposite: str = ""
    minor: str = ""

    @property
    def two_premise(self) -> bool:
        return bool(self.distractor)

    @property
    def wrong(self) -> str:
        """The wrong answer: the distractor premise's descriptor, else the opposite."""
        return self.distractor if self.two_premise else self.opposite

    def words(self) -> dict[str, str]:
        """Template field values."""
        return {
            "category": self.category,
            "descriptor": self.descriptor,
            "opposite": self.opposite,
            "noun": self.noun,
            "noun_lower": self.noun.lower(),
            "other_category": self.other_category,
            "distractor": self.distractor,
            "other_opposite": self.other_opposite,
            "minor_category": self.minor or self.category,
        }

    def levels(self) -> dict[str, str]:
        """This prompt's level of every factor (unordered pairs: twins share every level).

        Two-premise prompts: ``pair`` is the unordered {descriptor, distractor} and
        ``category`` the unordered {category, other_category}."""
        if self.two_premise:
            pair = "/".join(sorted((self.descriptor, self.distractor)))
            category = "/".join(sorted((self.category, self.other_category)))
            return {"pair": pair, "category": category, "noun": self.noun}
        pair = "/".join(sorted((self.descriptor, self.opposite)))
        return {"pair": pair, "category": self.category, "noun": self.noun}

    def swapped(self) -> "Combination":
        """The twin prompt's words."""
        if self.two_premise:
            return replace(
                self,
                descriptor=self.distractor,
                opposite=self.other_opposite,
                distractor=self.descriptor,
                other_opposite=self.opposite,
            )
        return replace(self, descriptor=self.opposite, opposite=self.descriptor)

    def corrupted(self) -> "Combination":
        """The corrupted prompt's words: the study's twin, or (two-premise) the minor premise
        naming the other premise's category (same tokens elsewhere, the answer changes)."""
        if self.two_premise:
            return replace(self, minor=self.other_category)
        return self.swapped()


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt's text, token ids (BOS first) and role positions."""

    text: str
    tokens: tuple[int, ...]
    roles: dict[str, int]


def word_tokens(tokenizer, word: str) -> list[int]:
    """Token ids of ``" " + word`` without special tokens."""
    return list(tokenizer(" " + word, add_special_tokens=False)["input_ids"])


def _modal(counts: list[int]) -> int:
    tally = Counter(counts)
    return max(sorted(tally), key=lambda length: tally[length])


def _length_filter(
    tokenizer, words: tuple[str, ...], wanted: int | None, name: str, lower: int | None = None
) -> tuple[tuple[str, ...], list[FilterReport]]:
    lengths = [len(word_tokens(tokenizer, word)) for word in words]
    target = wanted if wanted is not None else _modal(lengths) if lengths else 0
    keep = [length == target for length in lengths]
    reports = [FilterReport(f"{name} are {target} token(s)", sum(keep), len(words))]
    if lower is not None or name == "nouns":
        lower_lengths = [len(word_tokens(tokenizer, word.lower())) for word in words]
        candidates = [ll for ll, k in zip(lower_lengths, keep, strict=True) if k]
        lower_target = lower if lower is not None else _modal(candidates) if candidates else 0
        keep = [k and ll == lower_target for k, ll in zip(keep, lower_lengths, strict=True)]
        reports.append(
            FilterReport(f"lower-case {name} are {lower_target} token(s)", sum(keep), len(words))
        )
    return tuple(w for w, k in zip(words, keep, strict=True) if k), reports


def _pair_filter(
    tokenizer, pairs: tuple[tuple[str, str], ...], wanted: int | None
) -> tuple[tuple[tuple[str, str], ...], list[FilterReport]]:
    lengths = [len(word_tokens(tokenizer, word)) for pair in pairs for word in pair]
    target = wanted if wanted is not None else _modal(lengths) if lengths else 0
    kept = []
    for descriptor, opposite in pairs:
        first = word_tokens(tokenizer, descriptor)
        second = word_tokens(tokenizer, opposite)
        if len(first) == len(second) == target and first[0] != second[0]:
            kept.append((descriptor, opposite))
    report = FilterReport(
        f"descriptor pairs are {target} token(s) with distinct first tokens",
        len(kept),
        len(pairs),
    )
    return tuple(kept), [report]


def filter_words(tokenizer, words: WordLists, lengths: TokenLengths) -> tuple[WordLists, list]:
    """The words that pass the recipe's token-length filters, with one report per filter."""
    categories, reports = _length_filter(
        tokenizer, words.categories, lengths.category, "categories"
    )
    pairs, pair_reports = _pair_filter(tokenizer, words.descriptor_pairs, lengths.descriptor)
    nouns, noun_reports = _length_filter(
        tokenizer, words.nouns, lengths.noun, "nouns", lengths.noun_lower
    )
    return WordLists(categories, pairs, nouns), [*reports, *pair_reports, *noun_reports]


def combinations(words: WordLists) -> list[Combination]:
    """Every (category, descriptor, noun) in the notebook's order, opposites from the pairs."""
    descriptors = [(d, o) for pair in words.descriptor_pairs for d, o in (pair, pair[::-1])]
    return [
        Combination(category, descriptor, opposite, noun)
        for category, (descriptor, opposite), noun in itertools.product(
            words.categories, descriptors, words.nouns
        )
    ]


def tokenize_prompt(tokenizer, template: str, combination: Combination) -> TokenizedPrompt:
    """BOS + the prompt's tokens, and each role's position found from token offsets."""
    segments = fill_template(template, combination.words())
    text = "".join(segment.text for segment in segments)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = {start: index + 1 for index, (start, _) in enumerate(encoded["offset_mapping"])}
    roles = {"bos": 0}
    cursor = 0
    for segment in segments:
        if segment.role is not None:
            if cursor not in starts:
                raise DatasetError(
                    f"role {segment.role!r} does not start on a token boundary in {text!r}"
                )
            roles[segment.role] = starts[cursor]
        cursor += len(segment.text)
    tokens = (tokenizer.bos_token_id, *encoded["input_ids"])
    roles["final"] = len(tokens) - 1
    return TokenizedPrompt(text, tokens, roles)


def answer_tokens(tokenizer, combination: Combination) -> tuple[int, int]:
    """First tokens of the descriptor and of the wrong answer (right, wrong): the opposite,
    or in a two-premise prompt the distractor premise's descriptor."""
    return (
        word_tokens(tokenizer, combination.descriptor)[0],
        word_tokens(tokenizer, combination.wrong)[0],
    )


def _distinct_first_tokens(tokenizer, combination: Combination) -> bool:
    """The premises' four words (descriptor, opposite, distractor, its opposite) start with
    four different tokens (" endothermic" and " endoskeletal" share " end"), so the right and
    the wrong answer differ and neither appears elsewhere as a first token."""
    words = (
        combination.descriptor,
        combination.opposite,
        combination.distractor,
        combination.other_opposite,
    )
    firsts = [word_tokens(tokenizer, word)[0] for word in words]
    return len(set(firsts)) == len(firsts)


def two_premise_combinations(words: WordLists, seed: int, count: int) -> list[Combination]:
    """``count`` distinct two-premise combinations drawn with a seeded RNG (fewer if fewer
    exist): two distinct categories, descriptors from two distinct pairs (each pair in either
    orientation), one noun."""
    rng = random.Random(f"{seed}-two-premise")
    pairs, categories, nouns = words.descriptor_pairs, words.categories, words.nouns
    nouns = tuple(dict.fromkeys(nouns))
    if len(pairs) < 2 or len(categories) < 2 or not nouns:
        return []
    total = len(categories) * (len(categories) - 1) * len(pairs) * (len(pairs) - 1) * 4
    count = min(count, total * len(nouns) // 2)
    found: dict[Combination, None] = {}
    while len(found) < count:
        category, other = rng.sample(categories, 2)
        first, second = rng.sample(pairs, 2)
        first = first if rng.random() < 0.5 else first[::-1]
        second = second if rng.random() < 0.5 else second[::-1]
        noun = rng.choice(nouns)
        combination = Combination(category, *first, noun, other, *second)
        if combination.swapped() not in found:
            found.setdefault(combination)
    return list(found)


def stack_aligned(prompts: list[TokenizedPrompt]) -> tuple[torch.Tensor, dict[str, int]]:
    """Token ids ``[n, seq]`` and the shared roles; raises if lengths or roles differ."""
    reference = prompts[0]
    for prompt in prompts[1:]:
        if len(prompt.tokens) != len(reference.tokens):
            raise DatasetError(
                f"prompt {prompt.text!r} has {len(prompt.tokens)} tokens, but "
                f"{reference.text!r} has {len(reference.tokens)}: lengths must be equal"
            )
        if prompt.roles != reference.roles:
            raise DatasetError(
                f"prompt {prompt.text!r} has roles {prompt.roles}, misaligned with "
                f"{reference.text!r} ({reference.roles})"
            )
    return torch.tensor([p.tokens for p in prompts], dtype=torch.long), dict(reference.roles)


def _final_logit_diffs(
    model: TransformerBridge, tokens: Int[torch.Tensor, "n seq"], answers: Int[torch.Tensor, "n 2"]
) -> torch.Tensor:
    """Per-prompt logit difference at the final position, in batches."""
    device = model.cfg.device
    diffs = []
    with torch.inference_mode():
        for start in range(0, len(tokens), FILTER_BATCH):
            chunk = tokens[start : start + FILTER_BATCH].to(device)
            final_logits = model(chunk)[:, -1, :]
            diffs.append(logit_diff(final_logits, answers[start : start + FILTER_BATCH]).cpu())
    return torch.cat(diffs)


def _passes(model, tokenizer, recipe: Recipe, candidates: list[Combination]) -> list[bool]:
    """Clean logit diff > threshold and corrupted < -threshold, per candidate."""
    clean = [tokenize_prompt(tokenizer, recipe.template, c) for c in candidates]
    swapped = [tokenize_prompt(tokenizer, recipe.template, c.corrupted()) for c in candidates]
    clean_tokens, _ = stack_aligned(clean)
    swapped_tokens, _ = stack_aligned(swapped)
    answers = torch.tensor([answer_tokens(tokenizer, c) for c in candidates])
    clean_diff = _final_logit_diffs(model, clean_tokens, answers)
    swapped_diff = _final_logit_diffs(model, swapped_tokens, answers)
    return ((clean_diff > recipe.threshold) & (swapped_diff < -recipe.threshold)).tolist()


def _logit_diff_filter(
    model: TransformerBridge, tokenizer, recipe: Recipe, candidates: list[Combination]
) -> tuple[list[Combination], FilterReport]:
    keep = _passes(model, tokenizer, recipe, candidates)
    name = f"logit diff > {recipe.threshold:g} and swapped < -{recipe.threshold:g}"
    if recipe.family != "study":
        twins = _passes(model, tokenizer, recipe, [c.swapped() for c in candidates])
        keep = [a and b for a, b in zip(keep, twins, strict=True)]
        name = f"logit diff > {recipe.threshold:g} and corrupted < -{recipe.threshold:g}, twin too"
    kept = [c for c, k in zip(candidates, keep, strict=True) if k]
    return kept, FilterReport(name, len(kept), len(candidates))


def pair_opposites(sampled: list[Combination]) -> list[Combination]:
    """Each sampled prompt followed by its swapped twin, skipping prompts already present."""
    ordered: list[Combination] = []
    seen: set[Combination] = set()
    for combination in sampled:
        for member in (combination, combination.swapped()):
            if member not in seen:
                seen.add(member)
                ordered.append(member)
    return ordered


def generate(tokenizer, recipe: Recipe, model: TransformerBridge | None = None) -> SyllogismDataset:
    """Build a dataset from a recipe; ``model`` is needed only for the logit-diff filter."""
    if recipe.family not in FAMILIES:
        raise DatasetError(f"unknown prompt family {recipe.family!r}: use one of {list(FAMILIES)}")
    words, reports = filter_words(tokenizer, recipe.words, recipe.lengths)
    for report in reports:
        if report.kept == 0:
            raise DatasetError(
                f"{recipe.variant}: filter '{report.name}' kept {report.kept}/{report.total}"
            )
    if recipe.family == "study":
        candidates = combinations(words)
    else:
        drawn = two_premise_combinations(words, recipe.seed, max(8 * recipe.n_pairs, 512))
        candidates = [c for c in drawn if _distinct_first_tokens(tokenizer, c)]
        reports.append(FilterReport(f"draw (seed {recipe.seed})", len(drawn), len(drawn)))
        reports.append(
            FilterReport("premise words have distinct first tokens", len(candidates), len(drawn))
        )
        if not candidates:
            raise DatasetError(f"{recipe.variant}: too few words for two-premise prompts")
    if recipe.logit_diff_filter:
        if model is None:
            raise DatasetError(f"{recipe.variant}: the logit-diff filter needs a model")
        candidates, report = _logit_diff_filter(model, tokenizer, recipe, candidates)
        reports.append(report)
        if not candidates:
            raise DatasetError(
                f"{recipe.variant}: filter '{report.name}' kept {report.kept}/{report.total}: "
                "the model does not do the task on any prompt (expected on random weights)"
            )
    if recipe.n_pairs < 1:
        raise DatasetError(f"n_pairs must be at least 1, got {recipe.n_pairs}")
    sample_size = min(recipe.n_pairs, len(candidates))
    indices = random.Random(recipe.seed).sample(range(len(candidates)), sample_size)
    reports.append(FilterReport(f"sample (seed {recipe.seed})", sample_size, len(candidates)))
    ordered = pair_opposites([candidates[i] for i in indices])
    tokenized = [tokenize_prompt(tokenizer, recipe.template, c) for c in ordered]
    clean_tokens, roles = stack_aligned(tokenized)
    if recipe.family == "study":
        twin = [i + 1 if i % 2 == 0 else i - 1 for i in range(len(ordered))]
        corrupted = [tokenized[i] for i in twin]
        corrupted_tokens = clean_tokens[twin]
    else:
        corrupted = [tokenize_prompt(tokenizer, recipe.template, c.corrupted()) for c in ordered]
        corrupted_tokens, corrupted_roles = stack_aligned(corrupted)
        if corrupted_roles != roles or corrupted_tokens.shape != clean_tokens.shape:
            raise DatasetError(f"{recipe.variant}: corrupted prompts misalign with clean ones")
    return SyllogismDataset(
        variant=recipe.variant,
        seed=recipe.seed,
        prompts=[p.text for p in tokenized],
        corrupted_prompts=[p.text for p in corrupted],
        clean_tokens=clean_tokens,
        corrupted_tokens=corrupted_tokens,
        answers=torch.tensor([answer_tokens(tokenizer, c) for c in ordered]),
        roles=roles,
        filters=reports,
        factors={name: tuple(c.levels()[name] for c in ordered) for name in FACTORS},
    )


def build_dataset(
    model: TransformerBridge,
    variant: str = "study",
    seed: int = STUDY_SEED,
    *,
    allow_fewer: bool = False,
    **overrides: object,
) -> SyllogismDataset:
    """A syllogism dataset for ``model`` (see the module docstring for the recipe).

    ``overrides`` set any :class:`Recipe` field (``n_pairs``, ``family``, ``template``,
    ``words``, ``lengths``, ``threshold``, ``logit_diff_filter``). Asking explicitly for more
    ``n_pairs`` than the filters leave is a :class:`DatasetError`, unless
    ``allow_fewer=True``: then every pair that exists is used and the sample's filter report
    says how many were asked for (the default, :data:`STUDY_N_PAIRS`, always takes what
    exists, as the study's recipe did).
    """
    if getattr(model, "tokenizer", None) is None:
        raise DatasetError(
            "model must be a TransformerBridge with a tokenizer (circuit.models.load_model), "
            f"got {type(model).__name__}"
        )
    if not isinstance(allow_fewer, bool):
        raise DatasetError(f"allow_fewer must be True or False, got {allow_fewer!r}")
    recipe = recipe_for(variant, seed=seed, **overrides)
    dataset = generate(model.tokenizer, recipe, model)
    sample = next((f for f in dataset.filters if f.name.startswith("sample")), None)
    if sample is None or sample.kept >= recipe.n_pairs or "n_pairs" not in overrides:
        return dataset
    if not allow_fewer:
        raise DatasetError(
            f"n_pairs = {recipe.n_pairs} but the {variant} filters leave only {sample.total} "
            "pairs to sample; ask for fewer, or pass allow_fewer=True to use them all"
        )
    noted = FilterReport(
        f"{sample.name}, asked for {recipe.n_pairs} pairs (allow_fewer)", sample.kept, sample.total
    )
    filters = [noted if f is sample else f for f in dataset.filters]
    return replace(dataset, filters=filters)


def summarise(dataset: SyllogismDataset) -> str:
    """The filters' kept/total and the role positions, one line each."""
    lines = [f"{dataset.variant} (seed {dataset.seed}): {len(dataset)} prompts"]
    lines += [f"  {f.name}: kept {f.kept}/{f.total}" for f in dataset.filters]
    lines.append("  roles: " + ", ".join(f"{k}={v}" for k, v in dataset.roles.items()))
    if dataset.factors:
        levels = ", ".join(f"{len(set(v))} {k}" for k, v in dataset.factors.items())
        lines.append(f"  independent levels: {levels}")
    return "\n".join(lines)
