"""Claims across pytest-xdist workers, on the bundled model's claim file, in one session:
the serial run, one worker (``-n 1``, every core's thread) and two workers (``-n 2``, each
worker its share of the cores: torch threads = cores / workers).

Asserts that the three JSON reports agree (except timings and per-process counters) and that
two workers beat one. Records the serial time too: an xdist run pays a controller process
and a second start-up, which a claim file this small does not earn back on two cores (see
the README's "Parallel runs").
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMINGS = ("revision_seconds",)
COUNTERS = ("torch_threads", "models_loaded")


def _run(tmp_path: Path, name: str, *extra: str) -> tuple[float, dict]:
    report = tmp_path / f"{name}.json"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "claims"]
    command += ["--claims-json", str(report), *extra]
    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=environment, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    data = json.loads(report.read_text())
    for key in TIMINGS:
        data.pop(key, None)
    for key in COUNTERS:
        data["environment"].pop(key, None)
    return seconds, data


def test_two_workers_beat_one(benchmark, tmp_path: Path) -> None:
    serial_seconds, serial = _run(tmp_path, "serial")
    one_seconds, one = _run(tmp_path, "one", "-n", "1")
    result: dict[str, object] = {}

    def two_workers() -> None:
        result["seconds"], result["data"] = _run(tmp_path, "two", "-n", "2")

    benchmark.pedantic(two_workers, rounds=1, iterations=1)
    two_seconds = float(result["seconds"])
    assert one == serial
    assert result["data"] == serial
    benchmark.extra_info.update(
        serial_s=round(serial_seconds, 1),
        one_worker_s=round(one_seconds, 1),
        two_workers_s=round(two_seconds, 1),
        two_over_one=one_seconds / two_seconds,
        two_over_serial=serial_seconds / two_seconds,
    )
    print(f"\nXDIST serial {serial_seconds:.1f}s, -n 1 {one_seconds:.1f}s, -n 2 {two_seconds:.1f}s")
    assert two_seconds < one_seconds, f"-n 2 took {two_seconds:.1f}s, -n 1 {one_seconds:.1f}s"
