import re
from pathlib import Path

import pytest
import torch

from circuit.syllogisms import (
    PYTHIA_LENGTHS,
    STUDY_WORDS,
    DatasetError,
    Recipe,
    TokenizedPrompt,
    TokenLengths,
    WordLists,
    build_dataset,
    combinations,
    generate,
    pair_opposites,
    recipe_for,
    stack_aligned,
    tokenize_prompt,
    two_premise_combinations,
)
from circuit.templates import STUDY_TEMPLATE, TWO_PREMISE_TEMPLATE
from circuit.vocabulary import (
    ADDED_DESCRIPTOR_PAIRS,
    HELDOUT_CATEGORIES,
    HELDOUT_DESCRIPTOR_PAIRS,
    HELDOUT_NOUNS,
    STUDY_CATEGORIES,
    STUDY_DESCRIPTOR_PAIRS,
    STUDY_NOUNS,
)

NOTEBOOK = (
    Path(__file__).resolve().parents[2] / "shared" / "seed" / "syllogism-circuit-notebook.txt"
)


def _notebook_list(name: str) -> list[str]:
    text = NOTEBOOK.read_text()
    match = re.search(rf"^{name} = \[(.*?)\]", text, flags=re.S | re.M)
    assert match, f"{name} not found in the notebook"
    return re.findall(r"'([^']+)'", match.group(1))


@pytest.mark.skipif(not NOTEBOOK.is_file(), reason="the study notebook (shared/seed) is absent")
def test_word_lists_are_the_notebooks():
    assert list(STUDY_CATEGORIES) == _notebook_list("categories")
    descriptors = _notebook_list("descriptors")
    assert [w for pair in STUDY_DESCRIPTOR_PAIRS for w in pair] == descriptors
    assert list(STUDY_NOUNS) == _notebook_list("capitalized_nouns")


def test_heldout_words_are_disjoint_from_the_study():
    assert not set(HELDOUT_CATEGORIES) & set(STUDY_CATEGORIES)
    assert not {n.lower() for n in HELDOUT_NOUNS} & {n.lower() for n in STUDY_NOUNS}


def test_study_recipe_defaults_are_the_notebooks():
    recipe = recipe_for("study")
    assert (recipe.seed, recipe.n_pairs, recipe.threshold) == (42, 56, 2.0)
    assert recipe.template == STUDY_TEMPLATE
    assert recipe.logit_diff_filter
    assert TokenLengths(category=1, descriptor=3, noun=2, noun_lower=1) == PYTHIA_LENGTHS
    assert not recipe_for("unfiltered").logit_diff_filter
    assert recipe_for("heldout").words.nouns == HELDOUT_NOUNS[:8]
    assert recipe_for("heldout").words.descriptor_pairs == HELDOUT_DESCRIPTOR_PAIRS
    assert recipe_for("study").words.descriptor_pairs == STUDY_DESCRIPTOR_PAIRS


def test_every_judged_variant_has_enough_levels_of_every_factor():
    """The verdict rule needs at least 8 levels of every factor behind an interval."""
    for variant in ("unfiltered", "heldout"):
        words = recipe_for(variant).words
        sizes = (len(words.categories), len(words.descriptor_pairs), len(set(words.nouns)))
        assert min(sizes) >= 8, (variant, sizes)
    held = recipe_for("heldout").words
    seen = {w for pair in STUDY_DESCRIPTOR_PAIRS + ADDED_DESCRIPTOR_PAIRS for w in pair}
    assert not {w for pair in held.descriptor_pairs for w in pair} & seen
    assert not set(held.categories) & set(STUDY_CATEGORIES)


def test_prompts_carry_their_factor_levels_and_twins_share_them(bundled_model):
    data = build_dataset(bundled_model, "heldout", n_pairs=8)
    assert set(data.factors) == {"pair", "category", "noun"}
    for name, labels in data.factors.items():
        assert len(labels) == len(data)
        assert all(labels[i] == labels[i + 1] for i in range(0, len(data), 2)), name
    for i, prompt in enumerate(data.prompts):
        assert data.factors["category"][i] in prompt
        assert data.factors["noun"][i] in prompt
        assert all(word in prompt for word in data.factors["pair"][i].split("/"))


def test_combinations_follow_the_notebook_order_and_pair_opposites():
    words = WordLists(("birds", "fish"), (("exoskeletal", "endoskeletal"),), ("Horses",))
    combos = combinations(words)
    assert [(c.category, c.descriptor, c.opposite) for c in combos] == [
        ("birds", "exoskeletal", "endoskeletal"),
        ("birds", "endoskeletal", "exoskeletal"),
        ("fish", "exoskeletal", "endoskeletal"),
        ("fish", "endoskeletal", "exoskeletal"),
    ]
    ordered = pair_opposites([combos[1], combos[0], combos[2]])
    assert ordered == [combos[1], combos[0], combos[2], combos[3]]


def test_unknown_variant_raises():
    with pytest.raises(DatasetError, match="unknown dataset variant 'train'"):
        recipe_for("train")


def test_filter_that_empties_the_dataset_names_itself(bundled_tokenizer):
    words = WordLists(STUDY_WORDS.categories, STUDY_WORDS.descriptor_pairs, ("Horses",))
    recipe = Recipe(words=words, lengths=TokenLengths(noun=40), logit_diff_filter=False)
    with pytest.raises(DatasetError, match=r"nouns are 40 token\(s\)' kept 0/1"):
        generate(bundled_tokenizer, recipe)


def test_misaligned_prompts_are_rejected_naming_the_prompt(bundled_tokenizer):
    combo = combinations(WordLists(("birds",), STUDY_DESCRIPTOR_PAIRS[:1], ("Horses",)))[0]
    study = tokenize_prompt(bundled_tokenizer, STUDY_TEMPLATE, combo)
    longer = tokenize_prompt(bundled_tokenizer, "Yes. " + STUDY_TEMPLATE, combo)
    with pytest.raises(DatasetError, match=r"prompt 'Yes\. All birds.*tokens"):
        stack_aligned([study, longer])
    moved = TokenizedPrompt(study.text + "!", study.tokens, {**study.roles, "noun": 1})
    with pytest.raises(DatasetError, match=r"misaligned with"):
        stack_aligned([study, moved])
    assert stack_aligned([study, study])[1] == study.roles


@pytest.mark.parametrize("variant", ["study", "unfiltered", "heldout"])
def test_bundled_model_variants_have_aligned_roles(bundled_model, variant):
    dataset = build_dataset(bundled_model, variant)
    assert len(dataset) >= 40
    assert dataset.clean_tokens.shape == dataset.corrupted_tokens.shape
    tokens = dataset.clean_tokens
    roles = dataset.roles
    assert roles["final"] == tokens.shape[1] - 1
    assert torch.equal(tokens[:, roles["descriptor"]], dataset.answers[:, 0])
    assert torch.equal(tokens[:, roles["opposite"]], dataset.answers[:, 1])
    assert torch.equal(dataset.corrupted_tokens[:, roles["descriptor"]], dataset.answers[:, 1])
    assert (tokens[:, roles["bos"]] == bundled_model.tokenizer.bos_token_id).all()
    assert all(f.kept > 0 and f.kept <= f.total for f in dataset.filters)


def test_study_variant_reports_every_filter(bundled_model):
    dataset = build_dataset(bundled_model, "study")
    names = [f.name for f in dataset.filters]
    assert any(name.startswith("categories are") for name in names)
    assert any(name.startswith("descriptor pairs are") for name in names)
    assert any(name.startswith("nouns are") for name in names)
    assert any(name.startswith("lower-case nouns are") for name in names)
    assert any(name.startswith("logit diff > 2") for name in names)
    assert names[-1] == "sample (seed 42)"


def test_study_variant_keeps_only_prompts_the_model_solves(bundled_model):
    from circuit.metrics import logit_diff

    dataset = build_dataset(bundled_model, "study")
    clean = logit_diff(bundled_model(dataset.clean_tokens), dataset.answers)
    assert (clean > 2).all()


def test_random_pythia_unfiltered_is_aligned(random_pythia_70m):
    dataset = build_dataset(random_pythia_70m, "unfiltered", n_pairs=8)
    assert dataset.clean_tokens.shape[0] == len(dataset.prompts) >= 8
    assert torch.equal(dataset.clean_tokens[:, dataset.roles["descriptor"]], dataset.answers[:, 0])


def test_random_pythia_study_is_emptied_by_the_logit_diff_filter_and_says_so(random_pythia_70m):
    with pytest.raises(DatasetError, match=r"logit diff > 2 and swapped < -2' kept 0/\d+"):
        build_dataset(random_pythia_70m, "study")


def test_same_seed_same_dataset_other_seed_other_sample(bundled_model):
    first = build_dataset(bundled_model, "unfiltered", seed=7)
    again = build_dataset(bundled_model, "unfiltered", seed=7)
    other = build_dataset(bundled_model, "unfiltered", seed=8)
    assert first.prompts == again.prompts
    assert torch.equal(first.clean_tokens, again.clean_tokens)
    assert first.prompts != other.prompts


# --- the two-premise family -------------------------------------------------------------


def test_two_premise_recipe_uses_its_template_and_unknown_families_raise():
    recipe = recipe_for("heldout", family="two-premise")
    assert recipe.family == "two-premise"
    assert recipe.template == TWO_PREMISE_TEMPLATE
    assert recipe_for("heldout").family == "study"
    with pytest.raises(DatasetError, match="unknown prompt family 'three'"):
        recipe_for("heldout", family="three")


def test_two_premise_combinations_are_seeded_distinct_and_twin_free():
    words = recipe_for("heldout").words
    first = two_premise_combinations(words, 42, 200)
    assert first == two_premise_combinations(words, 42, 200)
    assert first != two_premise_combinations(words, 43, 200)
    assert len(set(first)) == len(first) == 200
    assert not {c.swapped() for c in first} & set(first)
    for c in first:
        assert c.category != c.other_category
        pairs = {tuple(sorted(p)) for p in words.descriptor_pairs}
        assert tuple(sorted((c.descriptor, c.opposite))) in pairs
        assert tuple(sorted((c.distractor, c.other_opposite))) in pairs
        assert {c.descriptor, c.opposite}.isdisjoint({c.distractor, c.other_opposite})


@pytest.mark.parametrize("variant", ["unfiltered", "heldout"])
def test_two_premise_corruption_changes_only_the_minor_premise(bundled_model, variant):
    data = build_dataset(bundled_model, variant, n_pairs=16, family="two-premise")
    roles = data.roles
    assert {"descriptor", "distractor", "category2", "other_category"} <= set(roles)
    differ = (data.clean_tokens != data.corrupted_tokens).nonzero()[:, 1].unique().tolist()
    assert differ == [roles["category2"]]
    tokens = data.clean_tokens
    assert torch.equal(tokens[:, roles["category2"]], tokens[:, roles["category"]])
    assert torch.equal(
        data.corrupted_tokens[:, roles["category2"]], tokens[:, roles["other_category"]]
    )
    assert torch.equal(tokens[:, roles["descriptor"]], data.answers[:, 0])
    assert torch.equal(tokens[:, roles["distractor"]], data.answers[:, 1])
    # twins exchange the premises' descriptors: each answer token is right as often as wrong
    assert torch.equal(data.answers[0::2], data.answers[1::2].flip(1))
    for name, labels in data.factors.items():
        assert all(labels[i] == labels[i + 1] for i in range(0, len(data), 2)), name
    for i, prompt in enumerate(data.prompts):
        assert all(word in prompt for word in data.factors["pair"][i].split("/"))
        assert all(word in prompt for word in data.factors["category"][i].split("/"))


def test_two_premise_heldout_has_enough_levels_and_unseen_words(bundled_model):
    data = build_dataset(bundled_model, "heldout", family="two-premise")
    assert min(len(set(v)) for v in data.factors.values()) >= 8
    seen = {w for pair in STUDY_DESCRIPTOR_PAIRS + ADDED_DESCRIPTOR_PAIRS for w in pair}
    for prompt in data.prompts:
        assert not {w.strip(".,") for w in prompt.split()} & seen


def test_two_premise_study_variant_filters_on_clean_corrupted_and_twin(bundled_model):
    """The logit-diff filter of two-premise ``study`` keeps a combination only if clean > 2,
    corrupted < -2, and the same for its twin. The shipped organism never saw a multi-premise
    prompt: it answers with the first premise's descriptor whatever the minor premise says, so
    the corrupted prompts keep the clean answer, nothing passes, and the error says so; an
    organism that does the task gets only prompts it solves."""
    from circuit.metrics import logit_diff

    try:
        data = build_dataset(bundled_model, "study", family="two-premise")
    except DatasetError as error:
        message = str(error)
        data = None
    if data is None:
        assert "logit diff > 2 and corrupted < -2, twin too' kept" in message
        probe = build_dataset(bundled_model, "unfiltered", family="two-premise", n_pairs=32)
        corrupted = logit_diff(bundled_model(probe.corrupted_tokens), probe.answers)
        assert (corrupted > 0).float().mean() > 0.75  # the minor premise is ignored
        return
    assert len(data) >= 40
    assert (logit_diff(bundled_model(data.clean_tokens), data.answers) > 2).all()
    assert (logit_diff(bundled_model(data.corrupted_tokens), data.answers) < -2).all()
