"""``python -m circuit fuzz-repro``: one claim judged alone on one recipe."""

import json

import pytest

from circuit.__main__ import main
from circuit.fuzzing.pools import CATEGORY_POOL, NOUN_POOL, PAIR_POOL
from circuit.fuzzing.recipes import RecipeError, recipe_json
from circuit.fuzzing.repro import load_recipe
from circuit.syllogisms import Recipe, WordLists
from circuit.templates import STUDY_TEMPLATE

CLAIMS = """model = "bundled"
[dataset]
variants = ["heldout"]

[[claims]]
id = "movers"
kind = "word-movers"
heads = ["L3H7", "L3H0", "L2H7"]
roles = {{ attends_to = "descriptor" }}
thresholds = {{ share = {share} }}
"""

RECIPE = Recipe(
    "fuzz",
    0,
    56,
    STUDY_TEMPLATE,
    WordLists(CATEGORY_POOL[:8], PAIR_POOL[:8], NOUN_POOL[:8]),
    logit_diff_filter=False,
)


@pytest.fixture
def files(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(recipe_json(RECIPE)))
    holds = tmp_path / "holds.toml"
    holds.write_text(CLAIMS.format(share=0.5))
    too_much = tmp_path / "too_much.toml"
    too_much.write_text(CLAIMS.format(share=0.99))
    return recipe, holds, too_much


def test_a_claim_that_holds_exits_0_and_a_failure_reproduces_with_1(files, capsys, models):
    recipe, holds, too_much = files
    assert (
        main(["fuzz-repro", "--claims", str(holds), "--claim", "movers", "--recipe", str(recipe)])
        == 0
    )
    assert "movers[L3H7,L3H0,L2H7]" in capsys.readouterr().out
    code = main(
        ["fuzz-repro", "--claims", str(too_much), "--claim", "movers", "--recipe", str(recipe)]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "REFUTED" in out or "INCONCLUSIVE" in out
    assert "fails whatever the correction" in out


def test_usage_errors_exit_2(files, tmp_path, capsys):
    recipe, holds, _ = files
    assert (
        main(["fuzz-repro", "--claims", str(holds), "--claim", "nope", "--recipe", str(recipe)])
        == 2
    )
    assert "'nope' is not in" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert (
        main(["fuzz-repro", "--claims", str(holds), "--claim", "movers", "--recipe", str(bad)]) == 2
    )


def test_a_report_gives_the_claims_counterexample(tmp_path):
    report = tmp_path / "report.json"
    entry = {"claim_id": "movers", "counterexample": {"recipe": recipe_json(RECIPE)}}
    report.write_text(json.dumps({"fuzz": [entry]}))
    assert load_recipe(report, "movers") == RECIPE
    with pytest.raises(RecipeError, match="no counterexample of 'other'"):
        load_recipe(report, "other")


@pytest.fixture(scope="module")
def models():
    from circuit.pipeline.model_cache import ModelCache

    reason = ModelCache(device="cpu").unavailable_reason("bundled", None)
    if reason is not None:
        pytest.skip(reason)
