"""Claims under pytest-xdist: workers measure their share, every process judges alike, and
``-n 2`` gives the serial run's JSON report."""

import json
from pathlib import Path

import pytest

from circuit.pipeline.distributed import (
    ExchangeError,
    Share,
    share_of,
    wait_for_shares,
    worker_resources,
)
from tests.support import MORE_CLAIMS, WORD_MOVERS, claim_file, claims_project, write_claims


def test_shares_partition_the_run_in_order():
    cases = list(range(7))
    shares = [share_of(cases, index, 3) for index in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(case for share in shares for case in share) == cases
    assert share_of(cases, 0, 1) == cases


@pytest.mark.parametrize(
    ("index", "count", "cpus", "gpus", "requested", "expected"),
    [
        (0, 2, 2, 0, None, (1, None)),  # 2 cores, 2 workers: one thread each
        (1, 4, 16, 0, "cpu", (4, "cpu")),
        (0, 3, 2, 0, None, (1, None)),  # never fewer than one thread
        (0, 4, 16, 4, None, (4, "cuda:0")),  # each worker its own GPU
        (3, 4, 16, 4, "cuda", (4, "cuda:3")),
        (5, 6, 12, 4, None, (2, "cuda:1")),  # more workers than GPUs: shared round-robin
        (1, 2, 8, 2, "cuda:0", (4, "cuda:0")),  # an explicit device index is kept
        (1, 2, 8, 2, "cpu", (4, "cpu")),
    ],
)
def test_each_worker_takes_its_share_of_cores_and_its_own_device(
    index, count, cpus, gpus, requested, expected
):
    assert worker_resources(index, count, cpus, gpus, requested) == expected


def test_a_missing_worker_share_times_out_with_a_reason(tmp_path: Path):
    (tmp_path / "measured-gw0.pkl").write_bytes(b"")
    with pytest.raises(ExchangeError, match="gw0: the other workers' measurements did not"):
        wait_for_shares(Share(0, 2, tmp_path), timeout=0.3)
    wait_for_shares(Share(0, 1, tmp_path), timeout=0.3)  # all (one) present: returns


def _comparable(path: Path) -> dict:
    """The JSON report without timings and per-process counters."""
    data = json.loads(path.read_text())
    data.pop("revision_seconds")
    for key in ("torch_threads", "models_loaded"):
        data["environment"].pop(key)
    return data


def test_two_workers_give_the_serial_report(pytester: pytest.Pytester, tiny_path: Path):
    project = claims_project(pytester)
    path = write_claims(project, "tiny.toml", claim_file(tiny_path, WORD_MOVERS + MORE_CLAIMS))
    args = ["-p", "no:cacheprovider", "claims", "--claims", str(path), "--claims-table", "full"]
    serial = pytester.runpytest_subprocess(*args, "--claims-json", "serial.json")
    distributed = pytester.runpytest_subprocess(*args, "--claims-json", "xdist.json", "-n", "2")
    assert serial.ret == distributed.ret == pytest.ExitCode.TESTS_FAILED  # random weights
    distributed.stdout.fnmatch_lines(["*claim verdicts*", "*REFUTED*"])
    serial_report = _comparable(pytester.path / "serial.json")
    assert len(serial_report["records"]) == 7
    assert _comparable(pytester.path / "xdist.json") == serial_report
    assert _verdict_table(distributed) == _verdict_table(serial)


def _verdict_table(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "claim verdicts" in line)
    end = next(i for i, line in enumerate(lines) if "measured and judged in" in line)
    return lines[start:end]
