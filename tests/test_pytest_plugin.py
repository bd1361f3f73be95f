"""The pytest plugin, end to end with pytester on a tiny random model.

The tiny model (2 layers x 4 heads, random weights) has no circuit: its claims are never
CONFIRMED, which is what most of these tests rely on; a faked claim kind checks that a
CONFIRMED claim passes.
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import circuit.pipeline.judging
from circuit.statistics import Clusters, Evidence, Side, weighted_mean
from fixtures.tiny_model import write_tiny_model
from tests.support import (
    MORE_CLAIMS,
    WORD_MOVERS,
    claim_file,
    claims_project,
    collected_cases,
    run_claims,
    write_claims,
)


@pytest.fixture
def tiny_model(tiny_path: Path) -> Path:
    """The tiny random model directory (``tests/conftest.py``)."""
    return tiny_path


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    return claims_project(pytester)


run = run_claims


def test_header_ids_table_and_json_report(project, tiny_model):
    path = write_claims(project, "tiny.toml", claim_file(tiny_model, WORD_MOVERS + MORE_CLAIMS))
    report = project.path / "report.json"
    result = run(
        project, "--claims", str(path), "--claims-json", str(report), "-v", "--claims-table", "full"
    )
    out = result.stdout.str()
    assert f"circuit-claims: model {tiny_model}" not in out  # no --model: the file's own
    result.stdout.fnmatch_lines(
        [
            "circuit-claims: model *, revision *, device cpu, dtype float32",
            "circuit-claims: torch *, transformer-lens *, scipy *",
            "*tiny.toml::word-movers?L1H0,L1H1?-heldout *",
            "*tiny.toml::values?L1H0?-unfiltered *",
            "*claim verdicts*",
            "claim*variant*check*statistic*interval*threshold*p*corrected p*verdict*",
        ]
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 0  # random weights: nothing is CONFIRMED
    assert outcomes["failed"] == 7
    assert "a CONFIRMED verdict needed" in out or "could not be measured" in out
    data = json.loads(report.read_text())
    assert len(data["records"]) == 7
    assert {r["variant"] for r in data["records"]} == {"heldout", "unfiltered"}
    for record in data["records"]:
        assert record["model"] == str(tiny_model)
        assert record["verdict"] != "CONFIRMED"
        for key in ("id", "kind", "revision", "statistic", "interval", "threshold", "p"):
            assert key in record
        assert "corrected_p" in record
    assert data["environment"]["torch"]
    assert data["environment"]["dtype"] == "float32"


def test_model_loads_once_and_each_sweep_runs_once(project, tiny_model):
    path = write_claims(project, "tiny.toml", claim_file(tiny_model, WORD_MOVERS + MORE_CLAIMS))
    result = run(project, "--claims", str(path))
    lines = result.stdout.lines
    assert sum("[claims] loaded" in line for line in lines) == 1
    assert sum("measurement clean_run" in line for line in lines) == 2  # one per variant
    assert (
        sum("measurement value_by_position" in line and "computed" in line for line in lines) <= 2
    )
    assert sum("measurement path_query" in line for line in lines) <= 2


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (('kind = "word-movers"', 'kind = "wordmovers"'), "unknown kind"),
        (('attends_to = "descriptor"', 'attends_to = "subject"'), "unknown role"),
        (("{ share = 0.5, top_k = 2,", "{ top_k = 2,"), "missing threshold"),
        (('heads = ["L1H0", "L1H1"]', 'heads = ["L1H0", "L7H1"]'), "out of range"),
        (("[[claims]]", "[[claims]"), "invalid TOML"),
    ],
)
def test_malformed_claim_file_is_a_usage_error_printed_once(project, tiny_model, broken, reason):
    old, new = broken
    text = claim_file(tiny_model)
    assert old in text
    path = write_claims(project, "broken.toml", text.replace(old, new))
    result = run(project, "--claims", str(path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    out = result.stdout.str() + "\n" + result.stderr.str()
    assert out.count("broken.toml:") == 1  # the error (the header names the file too)
    assert out.count(reason) == 1
    assert "During handling" not in out
    assert "Traceback" not in out
    if reason != "invalid TOML":
        assert "claim 'word-movers'" in out


def test_unavailable_model_skips_with_the_reason(project):
    text = claim_file("EleutherAI/pythia-410m", revision="step143000")
    path = write_claims(project, "pythia.toml", text)
    result = run(project, "--claims", str(path), "-rs", "--claims-allow-skip")
    result.assert_outcomes(skipped=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*SKIPPED*model unavailable*EleutherAI/pythia-410m*"])
    assert "empty parameter set" not in result.stdout.str()


def test_a_run_that_skips_every_case_fails_unless_allowed(project):
    path = write_claims(project, "pythia.toml", claim_file("EleutherAI/pythia-410m"))
    report = project.path / "report.json"
    result = run(project, "--claims", str(path), "--claims-json", str(report))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*error: nothing judged: every claim case (2) was skipped*"])
    data = json.loads(report.read_text())
    assert data["records"] == []
    assert "model unavailable" in data["nothing_judged"]
    assert len(data["skipped"]) == 2


def test_default_runs_the_claim_files_of_the_model(project, tiny_model):
    write_claims(project, "tiny.toml", claim_file(tiny_model))
    write_claims(project, "pythia.toml", claim_file("EleutherAI/pythia-410m"))
    result = run(project, "--model", str(tiny_model), "--collect-only", "-q")
    assert collected_cases(result) == [
        "word-movers[L1H0,L1H1]-heldout",
        "word-movers[L1H0,L1H1]-unfiltered",
    ]  # pythia.toml is about another model: not collected
    project.makeini(f"[pytest]\nclaims_model = {tiny_model}\n")
    assert len(collected_cases(run(project, "--collect-only", "-q"))) == 2
    other = run(project, "--collect-only", "-q", "--model", "random:bundled")
    assert other.ret == pytest.ExitCode.USAGE_ERROR  # no claim file is about that model
    other.stderr.fnmatch_lines(["*no claim file is about model 'random:bundled'*tiny.toml*"])


def test_model_option_runs_a_files_claims_against_another_model(project, tiny_model):
    path = write_claims(project, "other.toml", claim_file("bundled", revision="step999"))
    report = project.path / "report.json"
    run(project, "--claims", str(path), "--model", str(tiny_model), "--claims-json", str(report))
    records = json.loads(report.read_text())["records"]
    assert [(r["model"], r["revision"]) for r in records] == [(str(tiny_model), None)] * 2


def _fake_word_movers(strength: float):
    def evidence(claim, subject, settings=None) -> list[Evidence]:
        n = len(subject.dataset)
        rows = np.random.default_rng(0).normal(strength, 0.1, size=(n, 1))

        def statistic(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
            return weighted_mean(batch, weights)[..., 0]

        def null(rng: np.random.Generator, draws: int) -> np.ndarray:
            return rng.normal(0.0, 0.05, size=draws)

        clusters = Clusters.independent(n)
        return [Evidence("fake", rows, clusters, statistic, 0.5, Side.AT_LEAST, null, "fake null")]

    return evidence


@pytest.mark.parametrize(("strength", "outcome"), [(1.0, "passed"), (0.0, "failed")])
def test_only_confirmed_passes(project, tiny_model, monkeypatch, strength, outcome):
    kinds = dict(circuit.pipeline.judging.KINDS)
    kinds["word-movers"] = replace(kinds["word-movers"], evidence=_fake_word_movers(strength))
    monkeypatch.setattr(circuit.pipeline.judging, "KINDS", kinds)
    path = write_claims(project, "tiny.toml", claim_file(tiny_model))
    result = run(project, "--claims", str(path))
    result.assert_outcomes(**{outcome: 2})
    verdict = "CONFIRMED" if outcome == "passed" else "REFUTED"
    assert result.stdout.str().count(verdict) >= 2


def test_runs_are_deterministic_and_the_disk_cache_is_reused(project, tiny_model):
    path = write_claims(project, "tiny.toml", claim_file(tiny_model, WORD_MOVERS + MORE_CLAIMS))
    cache = project.path / "sweep-cache"
    reports = []
    for index in range(2):
        report = project.path / f"report{index}.json"
        result = run(
            project,
            "--claims",
            str(path),
            "--claims-json",
            str(report),
            "--claims-cache",
            str(cache),
        )
        reports.append(json.loads(report.read_text())["records"])
        computed = sum("computed in" in line for line in result.stdout.lines)
        loaded = sum("loaded from cache" in line for line in result.stdout.lines)
        first_run = index == 0
        assert (computed > 0) == first_run  # the first run measures every sweep
        assert (loaded > 0) != first_run  # the second reads every sweep back
    assert reports[0] == reports[1]


FAITHFULNESS_CLAIMS = """
[[claims]]
id = "kept"
kind = "sufficiency"
heads = ["L1H0"]
ablation = "mean"
ablation_source = "corrupted"
thresholds = { recovered = 0.5 }
variants = ["heldout"]

[[claims]]
id = "needed"
kind = "necessity"
heads = ["L1H0"]
ablation = "zero"
thresholds = { drop = 0.5 }
variants = ["heldout"]

[[claims]]
id = "minimal"
kind = "minimality"
heads = ["L1H0", "L1H1"]
ablation = "resample"
ablation_source = "corrupted"
thresholds = { loss = 0.01 }
variants = ["heldout"]
"""


def test_every_claim_of_a_file_is_a_test_whatever_its_kind(project, tiny_model):
    text = claim_file(tiny_model, WORD_MOVERS + MORE_CLAIMS + FAITHFULNESS_CLAIMS)
    path = write_claims(project, "tiny.toml", text)
    result = run(project, "--claims", str(path), "--collect-only", "-q")
    assert collected_cases(result) == [
        "word-movers[L1H0,L1H1]-heldout",
        "word-movers[L1H0,L1H1]-unfiltered",
        "other-movers[L1H2]-heldout",
        "values[L1H0]-heldout",
        "values[L1H0]-unfiltered",
        "queries[L0H1]-heldout",
        "queries[L0H1]-unfiltered",
        "kept[L1H0]-heldout",
        "needed[L1H0]-heldout",
        "minimal[L1H0,L1H1]-heldout",
    ]


def test_a_claim_file_alone_in_a_directory_is_judged(pytester, tiny_model):
    """No ini, no ``claims/``: ``pytest --claims FILE`` (or the file as an argument) collects
    exactly that file, wherever pytest starts."""
    path = pytester.path / "mine.toml"
    path.write_text(claim_file(tiny_model))
    (pytester.path / "pyproject.toml").write_text('[project]\nname = "x"\n')  # not a claim file
    for args in (("--claims", str(path)), (str(path),)):
        result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", *args)
        assert result.ret == pytest.ExitCode.OK
        assert collected_cases(result) == [
            "word-movers[L1H0,L1H1]-heldout",
            "word-movers[L1H0,L1H1]-unfiltered",
        ]


def test_a_run_without_claims_does_not_load_the_pipeline(pytester):
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_plain():
            assert "circuit.pytest_plugin" in sys.modules  # loaded by its entry point
            assert "circuit.pytest_claims" not in sys.modules
            assert "transformer_lens" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)
    assert "circuit-claims:" not in result.stdout.str()


@pytest.fixture(scope="module")
def tiny_with_revisions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model directory in the bundled layout: final ``step2``, checkpoint ``step1``."""
    root = write_tiny_model(tmp_path_factory.mktemp("revisions") / "model", seed=0)
    write_tiny_model(root / "revisions" / "step1", seed=1)
    (root / "revisions.json").write_text(json.dumps({"final": "step2"}))
    return root


def test_revision_all_judges_every_revision_and_reports_formation(project, tiny_with_revisions):
    path = write_claims(project, "tiny.toml", claim_file(tiny_with_revisions))
    report = project.path / "report.json"
    result = run(project, "--claims", str(path), "--revision", "all", "--claims-json", str(report))
    ids = [
        line.split("::", 1)[1].split(" ")[0] for line in result.stdout.lines if ".toml::" in line
    ]
    assert sorted(set(ids)) == [
        "word-movers[L1H0,L1H1]-heldout@step1",
        "word-movers[L1H0,L1H1]-heldout@step2",
        "word-movers[L1H0,L1H1]-unfiltered@step1",
        "word-movers[L1H0,L1H1]-unfiltered@step2",
    ]
    out = result.stdout.str()
    assert out.count("[claims] loaded") == 2  # one load per revision, one at a time
    result.stdout.fnmatch_lines(
        [
            "*claims across revisions*",
            "claim*step1*step2*",
            "word-movers/heldout (share)*",
            "claim*first CONFIRMED*CONFIRMED from*regressions*top heads (Jaccard)*",
            "word-movers/heldout*never*step1: L?H?,L?H? (J=*; step2: L?H?,L?H? (J=*",
            "time per revision: *@step1 *s, *@step2 *s",
            "Benjamini-Hochberg ran across every check of every revision of this run.",
        ]
    )
    data = json.loads(report.read_text())
    assert {r["revision"] for r in data["records"]} == {"step1", "step2"}
    (heldout, _) = data["formation"]
    assert heldout["claim"] == "word-movers/heldout"
    assert [c["revision"] for c in heldout["revisions"]] == ["step1", "step2"]
    assert all(len(c["top_heads"]) == 2 for c in heldout["revisions"])
    assert set(data["revision_seconds"]) == {
        f"{tiny_with_revisions}@step1",
        f"{tiny_with_revisions}@step2",
    }
    assert "across every check of every revision" in data["correction"]
