"""Usage errors of a claims run (pytester, in process): one line, exit code 4, before any
model loads; a run that judges nothing fails and says why.
"""

import json
import os
import time
from pathlib import Path

import pytest
import torch

from tests.support import (
    CLAIM_HEADER,
    MOVERS,
    QUERIES,
    claims_project,
    collected_cases,
    read_only_dir,
    run_claims,
    write_claims,
)

ROOT = Path(__file__).resolve().parent.parent
CLAIMS_DIR = ROOT / "claims"
NO_CUDA = not torch.cuda.is_available()
MISSING_HUB_MODEL = "circuit-claims-test/no-such-model"


@pytest.fixture
def project(pytester: pytest.Pytester, tiny_path: Path) -> pytest.Pytester:
    """A project with one claim file about the tiny model."""
    tiny = CLAIM_HEADER.replace('"bundled"', f'"{tiny_path}"') + MOVERS
    write_claims(claims_project(pytester), "tiny.toml", tiny)
    return pytester


run = run_claims


def usage_cases(project: pytest.Pytester, tiny_path: Path) -> list[tuple[str, list, tuple]]:
    base = project.path
    a_file = base / "a-file"
    a_file.write_text("x")
    (base / "out").mkdir()
    read_only = read_only_dir(base)
    broken = base / "broken.toml"  # outside claims/: default runs do not read it
    text = CLAIM_HEADER.replace('"bundled"', f'"{tiny_path}"') + MOVERS
    broken.write_text(text.replace("spearman = 0.3", "spearman = 2.0"))
    tiny = str(base / "claims" / "tiny.toml")
    cases = [
        ("model typo", ["--model", "bundlde"], ("--model bundlde", "tiny.toml (model")),
        ("model missing", ["--model", "/nonexistent"], ("--model /nonexistent", "not exist")),
        (
            "model missing with --claims",
            ["--model", "/nonexistent", "--claims", tiny],
            ("--model /nonexistent", "does not exist"),
        ),
        ("dtype", ["--dtype", "float8"], ("--dtype float8", "unknown dtype")),
        (
            "revision",
            ["--model", "bundled", "--revision", "step999"],
            ("--revision step999", "no revision 'step999'"),
        ),
        ("random:unknown", ["--model", "random:unknown"], ("random:unknown", "random shape")),
        (
            "no claim file for the model",
            ["--model", "random:bundled"],
            ("no claim file is about model 'random:bundled'", "tiny.toml"),
        ),
        (
            "json a directory",
            ["--claims-json", str(base / "out")],
            ("--claims-json", "is a directory"),
        ),
        (
            "json read-only",
            ["--claims-json", str(read_only / "r.json")],
            ("--claims-json", "cannot write in"),
        ),
        ("cache a file", ["--claims-cache", str(a_file)], ("--claims-cache", "is a file")),
        (
            "cache read-only",
            ["--claims-cache", str(read_only / "cache")],
            ("--claims-cache", "cannot write in"),
        ),
        ("claims file missing", ["--claims", str(base / "nope.toml")], ("nope.toml", "not exist")),
        (
            "impossible threshold",
            ["--claims", str(broken)],
            ("broken.toml", "'spearman' = 2.0", "[-1, 1]"),
        ),
        (
            "revision of a plain directory",
            ["--model", str(tiny_path), "--revision", "step1"],
            ("--revision step1", "has no revisions"),
        ),
    ]
    if NO_CUDA:
        cases.append(("device cuda", ["--device", "cuda"], ("--device cuda", "CUDA")))
    return cases


def test_bad_options_are_one_line_usage_errors(project: pytest.Pytester, tiny_path: Path) -> None:
    """Exit code 4, the message once, no traceback, no report or cache left behind."""
    report = project.path / "report.json"
    cache = project.path / "sweep-cache"
    for name, args, names in usage_cases(project, tiny_path):
        extra = [] if "--claims-json" in args else ["--claims-json", str(report)]
        extra += [] if "--claims-cache" in args else ["--claims-cache", str(cache)]
        start = time.perf_counter()
        result = run(project, *args, *extra)
        elapsed = time.perf_counter() - start
        out = result.stdout.str() + "\n" + result.stderr.str()
        assert result.ret == pytest.ExitCode.USAGE_ERROR, f"{name}: {result.ret}\n{out}"
        errors = [line for line in out.splitlines() if line.startswith("ERROR:")]
        assert len(errors) == 1, f"{name}: {out}"
        assert out.count(errors[0].removeprefix("ERROR: ")) == 1, f"{name}: said twice: {out}"
        for text in names:
            assert text in errors[0], f"{name}: {text!r} not in {errors[0]!r}"
        assert "Traceback" not in out, name
        assert "During handling" not in out, name
        assert not report.exists(), name
        assert not cache.exists(), name
        assert elapsed < 3.0, f"{name} took {elapsed:.1f}s"


def test_a_head_out_of_range_is_one_usage_error(project: pytest.Pytester, tiny_path) -> None:
    far = project.path / "far.toml"
    text = CLAIM_HEADER.replace('"bundled"', f'"{tiny_path}"') + MOVERS.replace("L1H1", "L7H1")
    far.write_text(text)
    result = run(project, "--claims", str(far))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    error = result.stderr.str()
    assert error.count("ERROR:") == 1
    assert "heads ['L7H1'] out of range" in error
    assert "far.toml: claim 'movers'" in error
    assert "Traceback" not in error


def test_a_run_that_skips_everything_fails_and_reports_why(project, monkeypatch) -> None:
    monkeypatch.delenv("CIRCUIT_ALLOW_DOWNLOAD", raising=False)
    (project.path / "claims" / "tiny.toml").unlink()
    text = CLAIM_HEADER.replace('"bundled"', f'"{MISSING_HUB_MODEL}"') + MOVERS + QUERIES
    path = project.path / "claims" / "hub.toml"
    path.write_text(text)
    report = project.path / "report.json"
    result = run(project, "--claims", str(path), "--claims-json", str(report), "-rs")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(skipped=2)  # no empty-parameter-set skip for value-position
    out = result.stdout.str()
    assert "empty parameter set" not in out
    assert out.count("[claims] error: nothing judged: every claim case (2) was skipped") == 1
    assert MISSING_HUB_MODEL in out
    assert "--claims-allow-skip" in out
    data = json.loads(report.read_text())
    assert data["records"] == []
    assert len(data["skipped"]) == 2
    assert MISSING_HUB_MODEL in data["nothing_judged"]
    assert data["environment"]["revision"] == "main"
    allowed = run(project, "--claims", str(path), "--claims-allow-skip")
    assert allowed.ret == pytest.ExitCode.OK
    allowed.assert_outcomes(skipped=2)


def test_claims_given_twice_are_collected_once(project: pytest.Pytester) -> None:
    tiny = project.path / "claims" / "tiny.toml"
    relative = os.path.relpath(tiny, project.path)
    result = run(project, "--claims", str(tiny), "--claims", relative, "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    assert collected_cases(result) == ["movers[L1H0,L1H1]-heldout"]


def test_more_pairs_than_exist_fail_the_case_with_the_reason(project: pytest.Pytester) -> None:
    tiny = project.path / "claims" / "tiny.toml"
    tiny.write_text(tiny.read_text().replace("n_pairs = 6", "n_pairs = 100000"))
    report = project.path / "report.json"
    result = run(project, "--claims", str(tiny), "--claims-json", str(report))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1)
    (record,) = json.loads(report.read_text())["records"]
    assert record["verdict"] == "ERROR"
    assert "n_pairs = 100000" in record["error"]
    assert "allow_fewer" in record["error"]
