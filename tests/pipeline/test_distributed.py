"""Claims under pytest-xdist: workers measure their share, every process judges alike, and
``-n 2`` gives the serial run's JSON report."""

import json
from pathlib import Path

import pytest

from circuit.pipeline.distributed import (
    ExchangeError,
    Share,
    take,
    wait_for_shares,
    worker_resources,
)
from tests.support import MORE_CLAIMS, WORD_MOVERS, claim_file, claims_project, write_claims


def test_each_case_is_taken_by_exactly_one_worker(tmp_path: Path):
    workers = [Share(index, 3, tmp_path) for index in range(3)]
    taken = {worker.name: [p for p in range(7) if take(worker, p)] for worker in workers}
    assert taken == {"gw0": list(range(7)), "gw1": [], "gw2": []}  # the first asker wins
    later = Share(1, 3, tmp_path / "later")
    later.directory.mkdir()
    assert take(later, 3)
    assert not take(later, 3)
    assert not take(workers[1], 3)
    assert (later.directory / "taken-3").read_text() == "gw1"


def test_workers_taking_turns_measure_disjoint_shares_in_serial_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``measure_cases`` asks ``take`` just before each case and measures only what it got;
    two workers alternating between cases together measure every case exactly once."""
    from circuit.pipeline import judging

    cases = [_Case(("m", "r1"), i) for i in range(3)] + [_Case(("m", "r2"), i) for i in (3, 4)]
    monkeypatch.setattr(judging, "_measure_in_group", _fake_measure)
    monkeypatch.setattr(judging, "_subject_key", lambda case: case.subject)
    models = _Models()
    owners: dict[int, str] = {}
    turn = iter(["gw0", "gw1", "gw1", "gw0", "gw1"])

    def taker(name: str):
        def granted(position: int) -> bool:
            if position in owners:
                return False
            owners[position] = next(turn)
            return owners[position] == name

        return granted

    first = judging.measure_cases(cases, models, None, take=taker("gw0"))
    second = judging.measure_cases(cases, models, None, take=lambda p: owners[p] == "gw1")
    assert [m.case.index for m in first] == [0, 3]
    assert [m.case.index for m in second] == [1, 2, 4]
    assert models.released == 4  # each worker released each revision it measured once


def test_a_worker_keeps_to_the_subjects_it_has_built(monkeypatch: pytest.MonkeyPatch):
    """A worker's next case is the first free one whose dataset it already holds, else the
    first free one; a serial run keeps the run's order."""
    from circuit.pipeline import judging

    monkeypatch.setattr(judging, "_subject_key", lambda case: case.subject)
    cases = [_Case(("m", "r"), i, subject) for i, subject in enumerate("ABAB")]
    subjects: dict[str, str] = {}
    order = judging._taken(range(4), cases, subjects, lambda i: i != 0)  # another took case 0
    assert next(order) == 1
    subjects["B"] = "built"
    assert next(order) == 3  # B's other case before the earlier A case
    assert list(order) == [2]
    assert list(judging._taken(range(4), cases, {"B": "built"}, None)) == [0, 1, 2, 3]


class _Case:
    def __init__(self, group: tuple[str, str], index: int, subject: str = "") -> None:
        self.model, self.revision = group
        self.index = index
        self.subject = subject or f"{group}-{index}"


class _Models:
    released = 0

    def release(self) -> None:
        self.released += 1


def _fake_measure(case, models, store, subjects, keep, progress):
    subjects[case.subject] = "built"
    return type("Measured", (), {"case": case})()


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
