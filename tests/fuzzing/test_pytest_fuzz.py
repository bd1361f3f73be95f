"""``--claims-fuzz`` end to end with pytester on the tiny random model (no circuit: its
claims are never robust), and the same run twice giving the same report."""

import json

import pytest

from tests.support import claim_file, claims_project, collected_cases, run_claims, write_claims

pytest_plugins = ("pytester",)

FUZZ_TABLE = "\n[fuzz]\nshrink = 2\n"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    return claims_project(pytester)


def test_fuzz_items_are_collected_only_when_asked(project, tiny_path):
    path = write_claims(project, "tiny.toml", claim_file(tiny_path) + FUZZ_TABLE)
    plain = collected_cases(run_claims(project, "--claims", str(path), "--collect-only", "-q"))
    assert plain == ["word-movers[L1H0,L1H1]-heldout", "word-movers[L1H0,L1H1]-unfiltered"]
    fuzzed = collected_cases(
        run_claims(project, "--claims", str(path), "--collect-only", "-q", "--claims-fuzz", "2")
    )
    assert fuzzed == [*plain, "word-movers[L1H0,L1H1]-fuzz"]


def test_a_fuzz_table_with_no_examples_turns_fuzzing_off(project, tiny_path):
    path = write_claims(project, "tiny.toml", claim_file(tiny_path) + "\n[fuzz]\nexamples = 0\n")
    result = run_claims(
        project, "--claims", str(path), "--collect-only", "-q", "--claims-fuzz", "2"
    )
    assert len(collected_cases(result)) == 2
    assert not [c for c in collected_cases(result) if c.endswith("-fuzz")]


def test_fuzzing_judges_drawn_datasets_and_reports_them(project, tiny_path):
    path = write_claims(project, "tiny.toml", claim_file(tiny_path) + FUZZ_TABLE)
    reports = []
    for name in ("first.json", "second.json"):
        result = run_claims(
            project, "--claims", str(path), "--claims-fuzz", "2", "--claims-json", name
        )
        result.assert_outcomes(failed=3)
        result.stdout.fnmatch_lines(
            [
                "*[[]claims[]] fuzz tiny.toml on *: drawing 2 dataset(s), seed 0*",
                "*[[]claims[]] fuzz draw 2/2: *",
                "*claim fuzzing*",
                "claim * draws * confirmed * fuzz verdict",
                "word-movers[[]L1H0,L1H1[]]-fuzz * 2 * not robust",
                "fuzzed 1 claim(s) on up to 2 drawn dataset(s) each*",
            ]
        )
        assert "word-movers[L1H0,L1H1]-fuzz: not robust" in result.stdout.str()
        reports.append(json.loads((project.path / name).read_text()))
    first, second = reports
    (entry,) = first["fuzz"]
    assert entry["test_id"] == "word-movers[L1H0,L1H1]-fuzz"
    assert entry["verdict"] == "not robust"
    assert len(entry["draws"]) == 2
    assert sum(entry["counts"].values()) == 2
    assert first["fuzz"] == second["fuzz"]  # deterministic, whatever hypothesis profile
    assert first["records"] == second["records"]


def test_a_negative_count_is_a_usage_error(project, tiny_path):
    path = write_claims(project, "tiny.toml", claim_file(tiny_path))
    result = run_claims(project, "--claims", str(path), "--claims-fuzz", "-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--claims-fuzz must be an integer >= 0, got -1*"])
