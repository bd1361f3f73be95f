"""The fuzz table and the JSON report's ``fuzz`` key."""

import json

import pytest

from circuit.claims import parse_claim_text
from circuit.fuzzing.engine import FuzzTarget, judge_with_fuzz
from circuit.fuzzing.recipes import recipe_from_json
from circuit.fuzzing.report import HEADERS, fuzz_json, fuzz_verdict, render_fuzz
from circuit.measurement_store import MeasurementStore
from tests.support import FUZZ_CLAIM, planted_measure


@pytest.fixture(scope="module")
def runs(models):
    claim_file = parse_claim_text(FUZZ_CLAIM.replace("examples = 10", "examples = 6"), "p.toml")
    broken = FuzzTarget(claim_file, claim_file.claims[0], "bundled", None, "", 6)
    out = {}
    for name, measure in (
        ("broken", planted_measure(frozenset({"birds"}))),
        ("fine", planted_measure()),
    ):
        out[name] = judge_with_fuzz([], {}, [broken], models, MeasurementStore(), measure=measure)[
            1
        ]
    return out


def test_the_table_gives_fractions_quartiles_and_the_verdict(runs):
    text = render_fuzz(runs["fine"])
    header, rule, row = text.splitlines()[:3]
    assert header.split()[:2] == [HEADERS[0], HEADERS[1]]
    assert set(rule.replace(" ", "")) == {"-"}
    cells = row.split()
    assert cells[:7] == ["planted[L3H6]-fuzz", "6", "1.00", "0.00", "0.00", "0.00", "planted"]
    assert cells[-1] == "robust"
    assert "rejected draws: none" in text
    assert "fuzzed 1 claim(s) on up to 6 drawn dataset(s) each" in text


def test_a_failure_prints_a_reproducible_counterexample(runs):
    result = next(iter(runs["broken"].results.values()))
    assert fuzz_verdict(result) == "not robust"
    text = render_fuzz(runs["broken"], "out/report.json")
    assert "not robust" in text
    assert "minimal counterexample (shrunk from draw 1" in text
    assert "needs: nothing beyond the simplest words" in text  # "birds" is the first category
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("recipe: "))
    recipe = recipe_from_json(json.loads(line.split("recipe: ", 1)[1]))
    assert recipe == result.counterexample.recipe
    assert (
        "reproduce: python -m circuit fuzz-repro --claims p.toml --claim planted "
        "--recipe out/report.json" in text
    )


def test_the_json_entry_is_strict_json_and_keeps_the_counterexample(runs):
    (entry,) = fuzz_json(runs["broken"])
    text = json.dumps(entry, allow_nan=False)
    assert entry["verdict"] == "not robust"
    assert len(entry["draws"]) == 6
    assert sum(entry["counts"].values()) == 6
    assert entry["main_check"] == "planted"
    assert set(entry["main_statistic"]) == {"min", "q1", "median", "q3", "max"}
    ce = entry["counterexample"]
    assert recipe_from_json(ce) == next(iter(runs["broken"].results.values())).counterexample.recipe
    assert ce["judged_alone"]["outcome"] in {"REFUTED", "INCONCLUSIVE"}
    assert ce["shrink_judgements"] >= 0
    assert "seconds" not in text


@pytest.fixture(scope="module")
def models():
    from circuit.pipeline.model_cache import ModelCache

    cache = ModelCache(device="cpu")
    reason = cache.unavailable_reason("bundled", None)
    if reason is not None:
        pytest.skip(reason)
    return cache
