"""Baselines: rules, deterministic files, comparisons; end to end through the plugin on the
bundled model (same revision passes; an earlier revision and a weakened head fail with a
diff and a non-zero exit)."""

import json
import shutil
import tomllib
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from circuit.baselines import (
    BaselineError,
    Rules,
    baseline_path,
    compare,
    model_slug,
    parse_rules,
    write_baseline,
)
from circuit.data import BUNDLED_DIR
from circuit.heads import Head
from circuit.revisions import declared_revisions
from tests.support import shipped_claim_file


def _entry(verdict="CONFIRMED", statistic=0.7, low=0.6, high=0.8) -> dict:
    return {
        "statistic": statistic,
        "interval": [low, high],
        "p": 0.001,
        "corrected_p": 0.002,
        "verdict": verdict,
        "n_prompts": 10,
    }


def _baseline(revision="step800", **checks) -> dict:
    case = {"dataset": {"variant": "heldout"}, "dataset_fingerprint": "abc", "n_prompts": 10}
    return {
        "schema_version": 1,
        "environment": {"model": "m", "torch": "1"},
        "revisions": {revision: {"cases": {"f:c/heldout": case}, "checks": checks}},
    }


def test_rules_parse_and_fail_as_stated():
    assert parse_rules("verdict,overlap") == Rules(True, True, None, None)
    assert parse_rules("statistic:5%") == Rules(False, False, 0.05, None)
    assert parse_rules("verdict, statistic:0.1") == Rules(True, False, None, 0.1)
    with pytest.raises(BaselineError, match="unknown rule 'p:5%'"):
        parse_rules("p:5%")
    rules = Rules(True, True, 0.05, None)
    assert rules.failures(_entry(), _entry()) == []
    assert rules.failures(_entry(), _entry("REFUTED")) == ["verdict CONFIRMED -> REFUTED"]
    moved = rules.failures(_entry(), _entry(statistic=0.9, low=0.85, high=0.95))
    assert "intervals do not overlap" in moved
    assert any("statistic moved 28.6% > 5%" in why for why in moved)
    assert Rules(False, True).failures(_entry(), _entry(statistic=0.75, low=0.7, high=0.9)) == []


def test_compare_reports_failures_environment_and_one_sided_checks(tmp_path):
    stored = _baseline(**{"f:c/heldout::share": _entry(), "f:c/heldout::gone": _entry()})
    now = _baseline("step100", **{"f:c/heldout::share": _entry("REFUTED", 0.1, 0.0, 0.2)})
    now["revisions"]["step100"]["checks"]["f:c/heldout::new"] = _entry()
    now["environment"]["torch"] = "2"
    result = compare(stored, now, parse_rules("verdict,overlap"), tmp_path / "b.json")
    assert result.failed
    assert result.compared == 1
    (failure,) = result.failures
    assert failure.check == "f:c/heldout::share @step100"
    assert failure.why == "verdict CONFIRMED -> REFUTED; intervals do not overlap"
    assert "revision: step800 -> step100" in result.environment
    assert "torch: 1 -> 2" in result.environment
    assert result.missing == ["f:c/heldout::gone @step100"]
    assert result.new == ["f:c/heldout::new @step100"]
    same = compare(stored, stored, parse_rules("verdict,overlap"), tmp_path / "b.json")
    assert not same.failed
    assert same.environment == []


def test_baseline_files_are_deterministic_and_named_by_model(tmp_path):
    data = _baseline(**{"b::x": _entry(), "a::y": _entry()})
    first = write_baseline(tmp_path / "1.json", data).read_bytes()
    second = write_baseline(tmp_path / "2.json", dict(reversed(list(data.items())))).read_bytes()
    assert first == second
    assert first.index(b'"a::y"') < first.index(b'"b::x"')
    assert model_slug("EleutherAI/pythia-410m") == "EleutherAI__pythia-410m"
    assert model_slug("./models/my model") == "my_model"
    assert baseline_path(tmp_path, "bundled", "main") == tmp_path / "bundled" / "main.json"
    assert baseline_path(tmp_path, "bundled", "x/y.json") == Path("x/y.json")


# End to end on the bundled model ---------------------------------------------------------


@pytest.fixture
def claims(pytester: pytest.Pytester) -> Path:
    pytester.makeini("[pytest]\n")
    path = pytester.path / "movers.toml"
    path.write_text(shipped_claim_file())
    return path


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "--claims-baseline-dir", "bl", *args)


def test_an_identical_rerun_passes_and_the_file_is_byte_identical(pytester, claims):
    saved = _run(pytester, str(claims), "--claims-baseline-save")
    assert saved.ret == pytest.ExitCode.OK, saved.stdout.str()
    path = pytester.path / "bl" / "bundled" / "baseline.json"
    first = path.read_bytes()
    assert json.loads(first)["environment"]["model"] == "bundled"
    again = _run(pytester, str(claims), "--claims-baseline-save", "--claims-baseline-compare")
    assert again.ret == pytest.ExitCode.OK, again.stdout.str()
    again.stdout.fnmatch_lines(["*checks compared, 0 failing*", "baseline comparison passed"])
    assert path.read_bytes() == first


def test_an_earlier_revision_fails_the_comparison_with_a_diff(pytester, claims):
    assert _run(pytester, str(claims), "--claims-baseline-save").ret == pytest.ExitCode.OK
    earliest = declared_revisions("bundled")[0]
    result = _run(pytester, str(claims), "--revision", earliest, "--claims-baseline-compare")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*check*baseline*now*why it fails*",
            f"*::share @{earliest}*CONFIRMED*verdict CONFIRMED -> *",
            f"environment differences: revision: * -> {earliest}*",
            "baseline comparison FAILED",
        ]
    )


def test_a_weakened_head_fails_the_comparison(pytester, claims):
    assert _run(pytester, str(claims), "--claims-baseline-save").ret == pytest.ExitCode.OK
    head = Head.parse(tomllib.loads(claims.read_text())["claims"][0]["heads"][0])
    weakened = pytester.path / "weakened"
    shutil.copytree(BUNDLED_DIR, weakened, ignore=shutil.ignore_patterns("revisions*"))
    weights = load_file(weakened / "model.safetensors")
    dense = weights[f"gpt_neox.layers.{head.layer}.attention.dense.weight"]
    width = (
        dense.shape[1] // json.loads((weakened / "config.json").read_text())["num_attention_heads"]
    )
    columns = slice(head.head * width, (head.head + 1) * width)
    dense[:, columns] = dense[:, columns] * 0.05
    save_file({k: v.contiguous() for k, v in weights.items()}, weakened / "model.safetensors")
    stored = pytester.path / "bl" / "bundled" / "baseline.json"
    result = _run(
        pytester, str(claims), "--model", str(weakened), "--claims-baseline-compare", str(stored)
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            f"*::share[[]{head}[]] @*intervals do not overlap*",
            f"*model: bundled -> {weakened}*",
            "baseline comparison FAILED",
        ]
    )
