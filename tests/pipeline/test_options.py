"""A claims run's options are refused before anything loads, with one line naming the option.

Output paths, dtype, device, model spec, revision and claim files; refused checks leave
nothing behind.
"""

import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from circuit.pipeline.cases import select_cases
from circuit.pipeline.options import (
    ClaimOptions,
    ClaimSetupError,
    check_cache_dir,
    check_options,
    check_output_file,
    select_files,
    unique_paths,
)
from circuit.reports import write_json
from tests.support import (
    read_only_dir,
)

ROOT = Path(__file__).resolve().parents[2]
CLAIMS_DIR = ROOT / "claims"
NO_CUDA = not torch.cuda.is_available()
MISSING_HUB_MODEL = "circuit-claims-test/no-such-model"


# Options checked before anything loads -----------------------------------------------------


def options_cases(tmp_path: Path, tiny_path: Path) -> list[tuple[str, dict, tuple[str, ...]]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    read_only = read_only_dir(tmp_path)
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_path / name, no_tokenizer / name)
    cases = [
        ("json a directory", {"json_path": tmp_path}, ("--claims-json", "is a directory")),
        ("json under a file", {"json_path": a_file / "r.json"}, ("--claims-json", "a-file")),
        (
            "json read-only",
            {"json_path": read_only / "sub" / "r.json"},
            ("--claims-json", "cannot write in", str(read_only)),
        ),
        ("cache a file", {"cache_dir": a_file}, ("--claims-cache", "is a file")),
        (
            "cache read-only",
            {"cache_dir": read_only / "cache"},
            ("--claims-cache", "cannot write in"),
        ),
        ("cache under a file", {"cache_dir": a_file / "c"}, ("--claims-cache", "not a directory")),
        ("model typo", {"model": "bundlde"}, ("--model bundlde", "bundled.toml (model bundled)")),
        (
            "model missing directory",
            {"model": "/nonexistent"},
            ("--model /nonexistent", "does not exist", "pythia-410m.toml"),
        ),
        ("dtype float8", {"dtype": "float8"}, ("--dtype float8",)),
        ("device tpu", {"device": "tpu"}, ("--device tpu",)),
        ("revision step999", {"revision": "step999"}, ("--revision step999", "no revision")),
        ("random:unknown", {"model": "random:unknown"}, ("--model random:unknown",)),
        (
            "no claim file for the model",
            {"model": "random:bundled"},
            ("no claim file is about model 'random:bundled'", "bundled.toml", "--claims FILE"),
        ),
        (
            "claims file missing",
            {"claim_files": (tmp_path / "nope.toml",)},
            ("--claims", "nope.toml", "does not exist"),
        ),
        (
            "model without tokenizer",
            {"model": str(no_tokenizer)},
            ("no-tokenizer", "tokenizer files"),
        ),
        (
            "revision of a plain directory",
            {"model": str(tiny_path), "revision": "step100"},
            ("--revision step100", "has no revisions"),
        ),
    ]
    if NO_CUDA:
        cases.append(("device cuda", {"device": "cuda"}, ("--device cuda", "CUDA")))
    return cases


def test_options_are_refused_before_anything_loads(tmp_path: Path, tiny_path: Path) -> None:
    cases = options_cases(tmp_path, tiny_path)
    before = sorted(tmp_path.iterdir())
    for name, changes, names in cases:
        options = ClaimOptions(claims_dir=CLAIMS_DIR, **changes)
        start = time.perf_counter()
        with pytest.raises(ClaimSetupError) as raised:
            check_options(options)
        assert time.perf_counter() - start < 1.0, name
        message = str(raised.value)
        assert "\n" not in message, name
        for text in names:
            assert text in message, f"{name}: {text!r} not in {message!r}"
    assert sorted(tmp_path.iterdir()) == before  # no report, no cache directory


def test_output_checks_leave_nothing_behind(tmp_path: Path) -> None:
    check_output_file(tmp_path / "deep" / "r.json", "--claims-json")  # fine: created later
    check_cache_dir(tmp_path / "cache", "--claims-cache")
    assert list(tmp_path.iterdir()) == []


def test_a_report_that_cannot_be_written_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    with pytest.raises(ValueError, match="Out of range float"):
        write_json(path, {"statistic": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_the_same_claim_file_twice_is_judged_once(tmp_path: Path) -> None:
    bundled = CLAIMS_DIR / "bundled.toml"
    relative = Path(os.path.relpath(bundled))
    kept = unique_paths([bundled, relative, bundled])
    assert kept == (bundled,)


def test_cases_record_the_revision_actually_loaded() -> None:
    files = select_files(ClaimOptions(claims_dir=CLAIMS_DIR))
    cases = select_cases(files, ClaimOptions(claims_dir=CLAIMS_DIR))
    assert {case.revision for case in cases} == {"step3000"}
    other = select_cases(files, ClaimOptions(model="random:bundled"))
    assert {case.revision for case in other} == {None}
