import pytest

from circuit.dataset import ROLE_NAMES
from circuit.templates import (
    FAMILIES,
    FAMILY_TEMPLATES,
    STUDY_TEMPLATE,
    TWO_PREMISE_TEMPLATE,
    TemplateError,
    fill_template,
    parse_template,
)

WORDS = {
    "category": "birds",
    "descriptor": "exoskeletal",
    "opposite": "endoskeletal",
    "noun": "Horses",
    "noun_lower": "horses",
}


def test_study_template_reproduces_the_notebook_prompt():
    segments = fill_template(STUDY_TEMPLATE, WORDS)
    text = "".join(segment.text for segment in segments)
    assert text == (
        "All birds are exoskeletal, not endoskeletal. Horses are birds. Therefore, horses are"
    )
    roles = [segment.role for segment in segments if segment.role]
    assert roles == ["category", "descriptor", "opposite", "noun", "category2", "noun2"]
    assert all(s.text.startswith(" ") for s in segments if s.role)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("All {category} are {colour}. So", "unknown field"),
        ("All {category} are {descriptor}. So", "lacks the fields"),
        ("All {category} are {descriptor}, not {opposite}", "must end with literal text"),
        ("All {category} are {descriptor!r}, not {opposite}. So", "unknown field"),
        ("All {category} are x{descriptor}, not {opposite}. So", None),
    ],
)
def test_malformed_templates_raise(template, message):
    with pytest.raises(TemplateError, match=message):
        parse_template(template) if message else fill_template(template, WORDS)


def test_two_premise_template_roles_keep_the_study_names():
    words = {
        **WORDS,
        "other_category": "fish",
        "distractor": "nocturnal",
        "other_opposite": "diurnal",
        "minor_category": "birds",
    }
    segments = fill_template(TWO_PREMISE_TEMPLATE, words)
    text = "".join(segment.text for segment in segments)
    assert text == (
        "All birds are exoskeletal, not endoskeletal. All fish are nocturnal, not diurnal. "
        "Horses are birds. Therefore, horses are"
    )
    roles = [segment.role for segment in segments if segment.role]
    assert roles == [
        "category",
        "descriptor",
        "opposite",
        "other_category",
        "distractor",
        "other_opposite",
        "noun",
        "category2",
        "noun2",
    ]
    assert set(roles) <= set(ROLE_NAMES)
    corrupted = fill_template(TWO_PREMISE_TEMPLATE, {**words, "minor_category": "fish"})
    assert "".join(s.text for s in corrupted) == text.replace("Horses are birds", "Horses are fish")


def test_every_family_template_parses_and_names_known_roles():
    assert FAMILIES == ("study", "two-premise")
    for template in FAMILY_TEMPLATES.values():
        parse_template(template)
