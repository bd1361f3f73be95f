"""Claims across pytest-xdist workers: ``pytest claims -n 2`` against the serial run, in the
same session, on the bundled model's claim file (each worker takes its share of the cores:
torch threads = cores / workers). Asserts that two workers beat one and that the JSON
reports agree (except timings and per-process counters)."""

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
    result: dict[str, object] = {}

    def distributed() -> None:
        result["seconds"], result["data"] = _run(tmp_path, "xdist", "-n", "2")

    benchmark.pedantic(distributed, rounds=1, iterations=1)
    assert result["data"] == serial
    ratio = serial_seconds / float(result["seconds"])
    benchmark.extra_info.update(
        serial_s=round(serial_seconds, 1), xdist_s=round(float(result["seconds"]), 1), ratio=ratio
    )
    assert ratio > 1.0, f"-n 2 took {result['seconds']:.1f}s, serial {serial_seconds:.1f}s"
