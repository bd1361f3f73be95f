"""Revisions as a run axis: lists, ``all``, Pythia's schedule, training order."""

import pytest

from circuit.models import ModelSpecError, bundled_revisions
from circuit.revisions import PYTHIA_STEPS, declared_revisions, ordered, parse_revisions, step_of


def test_pythia_schedule_has_its_154_published_steps():
    assert len(PYTHIA_STEPS) == 154
    assert PYTHIA_STEPS[:12] == (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
    assert PYTHIA_STEPS[-1] == 143000
    revisions = declared_revisions("EleutherAI/pythia-410m")
    assert revisions[0] == "step0"
    assert revisions[-1] == "step143000"


def test_all_means_every_declared_revision_in_training_order():
    declared = parse_revisions("all", "bundled")
    assert set(declared) == set(bundled_revisions())
    steps = [step_of(r) for r in declared]
    assert steps == sorted(steps)


def test_lists_are_stripped_deduplicated_and_ordered_by_step():
    assert parse_revisions(" step400 ,step100,step400", "bundled") == ["step100", "step400"]
    assert ordered(["b", "a", "b"]) == ["b", "a"]  # no steps: as given


@pytest.mark.parametrize(
    ("text", "spec", "message"),
    [
        ("all", "random:bundled", "declares no revisions"),
        ("step1,,step2", "bundled", "empty name"),
        ("all,step100", "bundled", "cannot be combined"),
        ("all", "someone/some-model", "declares no revision list"),
    ],
)
def test_unusable_revision_lists_are_refused(text, spec, message):
    with pytest.raises(ModelSpecError, match=message):
        parse_revisions(text, spec)
