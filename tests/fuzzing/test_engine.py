"""The fuzz engine against ground truth: a claim planted to break on one category, a claim
that holds everywhere, the joint correction, determinism, and the ``[fuzz]`` table."""

import json
from dataclasses import replace

import pytest

from circuit.claims import ClaimCase, ClaimFileError, FuzzSettings, parse_claim_text
from circuit.fuzzing.engine import FuzzTarget, judge_with_fuzz, targets_for
from circuit.fuzzing.pools import CATEGORY_POOL, NOUN_POOL, PAIR_POOL
from circuit.fuzzing.report import fuzz_json
from circuit.measurement_store import MeasurementStore
from circuit.pipeline.model_cache import ModelCache
from circuit.statistics import MIN_CLUSTERS, correct
from circuit.templates import STUDY_TEMPLATE
from tests.support import FUZZ_CLAIM, planted_measure

BROKEN = "pets"
"""A held-out category (well inside the pool, so the simplest draw does not hold it)."""


@pytest.fixture(scope="module")
def planted_file():
    return parse_claim_text(FUZZ_CLAIM, "planted.toml")


def _fuzz(claim_file, models, broken=frozenset(), examples=10):
    target = FuzzTarget(claim_file, claim_file.claims[0], "bundled", None, "", examples)
    _, run = judge_with_fuzz(
        [], {}, [target], models, MeasurementStore(), measure=planted_measure(broken)
    )
    return run, run.results[target.key]


def test_the_fuzzer_finds_the_broken_category_and_shrinks_to_it(planted_file, models):
    assert BROKEN in CATEGORY_POOL[MIN_CLUSTERS:]
    run, result = _fuzz(planted_file, models, frozenset({BROKEN}))
    assert not result.robust
    assert result.counts()["CONFIRMED"] < len(result.draws) == 10
    assert any(BROKEN in d.recipe.words.categories for d in result.draws if not d.record.passed)
    assert all(d.record.passed for d in result.draws if BROKEN not in d.recipe.words.categories)
    ce = result.counterexample
    assert ce is not None
    assert ce.record.outcome != "CONFIRMED"
    assert dict(ce.needed) == {"categories": (BROKEN,)}  # the word responsible, and only it
    words = ce.recipe.words
    assert set(words.categories) == set(CATEGORY_POOL[: MIN_CLUSTERS - 1]) | {BROKEN}
    assert set(words.descriptor_pairs) <= set(PAIR_POOL[:MIN_CLUSTERS])
    assert set(words.nouns) == set(NOUN_POOL[:MIN_CLUSTERS])
    assert len(words.descriptor_pairs) == MIN_CLUSTERS
    assert ce.recipe.template == STUDY_TEMPLATE
    assert 0 < ce.judgements <= planted_file.fuzz.shrink
    assert run.shrink_judgements == ce.judgements


def test_a_claim_that_holds_everywhere_is_robust(planted_file, models):
    run, result = _fuzz(planted_file, models)
    assert result.robust
    assert result.counterexample is None
    assert not result.note
    assert result.counts() == {"CONFIRMED": 10, "INCONCLUSIVE": 0, "REFUTED": 0, "ERROR": 0}
    assert result.main_check() == "planted"
    low, q1, median, q3, high = result.quartiles()
    assert 0.9 < low <= q1 <= median <= q3 <= high < 1.1
    assert run.shrink_judgements == 0


def test_every_fuzz_judgement_is_corrected_together(planted_file, models):
    _, result = _fuzz(planted_file, models, frozenset({BROKEN}))
    checks = [j for d in result.draws for j in d.record.checks]
    expected = correct([j.measured.p for j in checks])
    assert [j.p_corrected for j in checks] == pytest.approx(list(expected))


def test_two_runs_give_identical_reports(planted_file, models):
    first = json.dumps(fuzz_json(_fuzz(planted_file, models, frozenset({BROKEN}))[0]))
    second = json.dumps(fuzz_json(_fuzz(planted_file, models, frozenset({BROKEN}))[0]))
    assert first == second


def test_another_seed_draws_other_datasets(planted_file, models):
    other = replace(planted_file, fuzz=FuzzSettings(examples=10, seed=7))
    digests = [
        [d["digest"] for d in fuzz_json(_fuzz(f, models)[0])[0]["draws"]]
        for f in (planted_file, other)
    ]
    assert digests[0][1:] != digests[1][1:]


def test_targets_follow_the_option_and_the_fuzz_table(planted_file):
    claim = planted_file.claims[0]
    cases = [ClaimCase(planted_file, claim, v, "bundled", None) for v in ("heldout", "unfiltered")]
    (target,) = targets_for(cases, 3)
    assert target.examples == 10  # the file's [fuzz] examples
    assert target.test_id == "planted[L3H6]-fuzz"
    plain = replace(planted_file, fuzz=FuzzSettings())
    cases = [ClaimCase(plain, claim, "heldout", "bundled", None)]
    assert [t.examples for t in targets_for(cases, 3)] == [3]
    assert targets_for(cases, 0) == []
    off = replace(planted_file, fuzz=FuzzSettings(examples=0))
    assert targets_for([ClaimCase(off, claim, "heldout", "bundled", None)], 3) == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[fuzz]\nexamples = -1\n", "examples must be an integer >= 0"),
        ("[fuzz]\nseed = 'x'\n", "seed must be an integer"),
        ("[fuzz]\nshrink = true\n", "shrink must be an integer"),
        ("[fuzz]\ndraws = 3\n", "unknown keys"),
        ("fuzz = 3\n", "'fuzz' must be a table"),
    ],
)
def test_bad_fuzz_tables_are_one_line_errors(table, message):
    text = FUZZ_CLAIM.replace("[fuzz]\nexamples = 10\nshrink = 40\n", "")
    head, rest = text.split("[dataset]", 1)
    with pytest.raises(ClaimFileError, match=message) as error:
        parse_claim_text(head + table + "[dataset]" + rest, "bad.toml")
    assert "\n" not in str(error.value)


def test_the_fuzz_table_parses(planted_file):
    assert planted_file.fuzz == FuzzSettings(examples=10, seed=0, shrink=40)
    text = FUZZ_CLAIM.replace("[fuzz]\nexamples = 10\nshrink = 40\n", "")
    assert parse_claim_text(text, "plain.toml").fuzz == FuzzSettings()


@pytest.fixture(scope="module")
def models():
    cache = ModelCache(device="cpu")
    reason = cache.unavailable_reason("bundled", None)
    if reason is not None:
        pytest.skip(reason)
    return cache
