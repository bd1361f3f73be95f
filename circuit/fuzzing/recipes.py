"""Drawn recipes as data: JSON round trip, a stable digest, and the checks a draw must pass.

A drawn dataset must pass the checks every built-in variant passes (each drawn word survives
the token-length filters, every role starts on a token boundary, prompts align) and have at
least ``min_clusters`` levels of every factor, or it is rejected with one of
:data:`REJECTION_REASONS`.
"""

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from circuit.dataset import SyllogismDataset
from circuit.fuzzing.pools import STUDY_ROLES
from circuit.syllogisms import DatasetError, Recipe, WordLists, generate

REJECTION_REASONS: tuple[str, ...] = ("token-length", "roles", "alignment", "clusters", "duplicate")
"""Why a draw was rejected: a drawn word fails a token-length filter; a role is missing or
does not start on a token boundary; prompts differ in length; fewer than ``min_clusters``
levels of a factor in the sample; the same recipe drawn twice."""


class RecipeError(ValueError):
    """A recipe file cannot be read as a recipe (one line: the field and what it needs)."""


def recipe_json(recipe: Recipe) -> dict[str, Any]:
    """The recipe as JSON-ready data (everything :func:`generate` reads)."""
    return {
        "variant": recipe.variant,
        "template": recipe.template,
        "categories": list(recipe.words.categories),
        "descriptor_pairs": [list(pair) for pair in recipe.words.descriptor_pairs],
        "nouns": list(recipe.words.nouns),
        "seed": recipe.seed,
        "n_pairs": recipe.n_pairs,
        "logit_diff_filter": recipe.logit_diff_filter,
        "family": getattr(recipe, "family", "study"),
    }


def _strings(data: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = data.get(name)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RecipeError(f"recipe {name!r} must be a non-empty list of strings, got {value!r}")
    return tuple(value)


def recipe_from_json(data: object) -> Recipe:
    """The :class:`Recipe` of :func:`recipe_json` output (or of ``{"recipe": ...}``)."""
    if isinstance(data, Mapping) and "recipe" in data:
        data = data["recipe"]
    if not isinstance(data, Mapping):
        raise RecipeError(f"a recipe must be a JSON object, got {type(data).__name__}")
    pairs = data.get("descriptor_pairs")
    if (
        not isinstance(pairs, list)
        or not pairs
        or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(w, str) for w in p)
            for p in pairs
        )
    ):
        raise RecipeError(
            f"recipe 'descriptor_pairs' must be a list of [word, opposite], got {pairs!r}"
        )
    for name in ("seed", "n_pairs"):
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (name == "n_pairs"):
            raise RecipeError(f"recipe {name!r} must be an integer, got {value!r}")
    template = data.get("template")
    if not isinstance(template, str) or not template:
        raise RecipeError(f"recipe 'template' must be a string, got {template!r}")
    words = WordLists(
        _strings(data, "categories"), tuple((a, b) for a, b in pairs), _strings(data, "nouns")
    )
    return Recipe(
        variant=str(data.get("variant", "fuzz")),
        seed=data["seed"],
        n_pairs=data["n_pairs"],
        template=template,
        words=words,
        logit_diff_filter=bool(data.get("logit_diff_filter", False)),
        **({"family": str(data["family"])} if "family" in data else {}),
    )


def recipe_digest(recipe: Recipe) -> str:
    """A short stable digest of the recipe (names a drawn dataset's sweeps)."""
    text = json.dumps(recipe_json(recipe), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_checked(tokenizer, recipe: Recipe, min_clusters: int) -> SyllogismDataset | str:
    """The recipe's dataset, or the reason (one of :data:`REJECTION_REASONS`) it is rejected."""
    try:
        dataset = generate(tokenizer, recipe)
    except DatasetError as error:
        text = str(error)
        if "kept 0/" in text:
            return "token-length"
        if "token boundary" in text or "roles" in text:
            return "roles"
        return "alignment"
    for report in dataset.filters:
        if "token(s)" not in report.name:  # not a word's token-length filter
            continue
        if report.kept < report.total:  # it dropped a drawn word
            return "token-length"
    if not set(dataset.roles) >= STUDY_ROLES:
        return "roles"
    levels = [len(set(labels)) for labels in dataset.factors.values()]
    if not levels or min(levels) < min_clusters:
        return "clusters"
    return dataset
