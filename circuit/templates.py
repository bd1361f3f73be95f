"""Prompt templates as data: literal text with named word slots, and the roles they define.

A template is a format string over the fields ``category``, ``descriptor``, ``opposite``,
``noun`` (capitalised) and ``noun_lower``. Each field occurrence becomes a *role*: the first
occurrence keeps its name, later ones get a suffix (``category2``); ``noun`` and
``noun_lower`` count as one word, so the study's lower-case noun is the role ``noun2``.
Two roles are added: ``bos`` (position 0) and ``final`` (the last token, where the answer
is predicted). The template must end right before the answer, so not with a field.
"""

from dataclasses import dataclass
from string import Formatter
from typing import Final

FIELDS: Final[frozenset[str]] = frozenset(
    {
        "category",
        "descriptor",
        "opposite",
        "noun",
        "noun_lower",
        "other_category",
        "distractor",
        "other_opposite",
        "minor_category",
    }
)
REQUIRED_FIELDS: Final[frozenset[str]] = frozenset({"descriptor", "opposite"})
FIELD_ENTITY: Final[dict[str, str]] = {"noun_lower": "noun", "minor_category": "category"}
"""Fields naming the same word in another form share one role sequence. ``minor_category``
is the category the minor premise names: the answer premise's category in a clean prompt,
another premise's in its corrupted twin; it shares the ``category`` roles, so in the
two-premise template it is ``category2``, as the study's minor premise is."""

STUDY_TEMPLATE: Final[str] = (
    "All {category} are {descriptor}, not {opposite}. {noun} are {category}. "
    "Therefore, {noun_lower} are"
)
"""The notebook's template (``generate_combinations``), up to the answer."""

TWO_PREMISE_TEMPLATE: Final[str] = (
    "All {category} are {descriptor}, not {opposite}. "
    "All {other_category} are {distractor}, not {other_opposite}. "
    "{noun} are {minor_category}. Therefore, {noun_lower} are"
)
"""Two premises about different categories; the minor premise decides which premise's
descriptor is the answer. Roles: ``descriptor`` is the answer premise's descriptor (first
token), ``distractor`` the other premise's; ``category2`` is the minor premise's category."""

FAMILY_TEMPLATES: Final[dict[str, str]] = {
    "study": STUDY_TEMPLATE,
    "two-premise": TWO_PREMISE_TEMPLATE,
}
"""Prompt families by name and their templates. ``study``: the notebook's syllogism, corrupted
by swapping descriptor and opposite; ``two-premise``: corrupted by naming the other premise's
category in the minor premise (``circuit.syllogisms``)."""

FAMILIES: Final[tuple[str, ...]] = tuple(FAMILY_TEMPLATES)


class TemplateError(ValueError):
    """A template is malformed."""


@dataclass(frozen=True)
class Segment:
    """A piece of a prompt: literal text, or a word slot named by ``field`` and ``role``."""

    text: str
    field: str | None = None
    role: str | None = None


def parse_template(template: str) -> tuple[tuple[str, str | None], ...]:
    """``(literal, field)`` pairs in order; ``field`` is None for the trailing literal."""
    parts: list[tuple[str, str | None]] = []
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as error:
        raise TemplateError(f"template {template!r} is not a format string: {error}") from None
    for literal, field, spec, conversion in parsed:
        if field is not None and (field not in FIELDS or spec or conversion):
            raise TemplateError(
                f"template {template!r} has unknown field {{{field}}}: use {sorted(FIELDS)}"
            )
        parts.append((literal, field))
    fields = {field for _, field in parts if field}
    missing = REQUIRED_FIELDS - fields
    if missing:
        raise TemplateError(f"template {template!r} lacks the fields {sorted(missing)}")
    if parts[-1][1] is not None or not parts[-1][0].strip():
        raise TemplateError(
            f"template {template!r} must end with literal text before the answer "
            "(e.g. ' are'), not with a field"
        )
    return tuple(parts)


def fill_template(template: str, words: dict[str, str]) -> list[Segment]:
    """The prompt as segments; a field's segment carries its leading space, as BPE splits.

    Word slots must follow a space (or open the prompt); the space moves into the word's
    segment so that the segment starts where the word's first token starts.
    """
    segments: list[Segment] = []
    counts: dict[str, int] = {}
    for literal, field in parse_template(template):
        text = literal
        if field is None:
            segments.append(Segment(text))
            continue
        if text and not text.endswith(" "):
            raise TemplateError(
                f"field {{{field}}} must follow a space or open the template: {template!r}"
            )
        leading = " " if text else ""
        if text[:-1]:
            segments.append(Segment(text[:-1]))
        entity = FIELD_ENTITY.get(field, field)
        counts[entity] = counts.get(entity, 0) + 1
        role = entity if counts[entity] == 1 else f"{entity}{counts[entity]}"
        segments.append(Segment(leading + words[field], field, role))
    return segments
