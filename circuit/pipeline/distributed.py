"""Claims judged across pytest-xdist workers: workers measure, every process judges alike.

Benjamini-Hochberg makes each verdict depend on every p-value of the run, so a worker cannot
judge its cases alone. Workers take the run's cases from one queue: each walks the cases in
the serial order (grouped by model and revision) and measures a case only if it is the first
to take it (:func:`take`, an atomic file in the exchange directory), so a worker that drew a
cheap case goes on to the next one while another is still busy with an expensive one, and
since every worker walks forward through the same order, each model and revision loads at
most once per worker. Within a model and revision a worker first takes the free cases whose
dataset it has already built (:func:`circuit.pipeline.judging.measure_cases`), so two
workers keep to their own datasets and shared sweeps instead of rebuilding each other's.
The controller measures nothing: it checks the claim files against the models' configs
without loading a model (nor importing transformer-lens), so the workers start sooner.
A worker writes its measurements to the exchange directory the controller made, waits
until every worker has written its share, and then judges the whole run exactly as a
serial run does (the same cases in the same order, so the same corrected
p-values and verdicts; which worker measured a case does not change its numbers). The
controller reads the same files once the workers are done and writes the reports, so a run
with ``-n N`` gives the serial run's JSON report.

Resources: on CPU each worker takes its share of the cores (``torch`` threads = cores /
workers), since oversubscribed torch threads slow every process down; on a machine with
several GPUs, worker ``i`` takes ``cuda:i mod devices`` unless a device is given.
"""

import os
import pickle
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuit.claims import ClaimCase
from circuit.pipeline.judging import MeasuredCase

WAIT_SECONDS = 6 * 3600.0
"""How long a worker waits for the others' measurements before giving up."""
POLL_SECONDS = 0.2


class ExchangeError(RuntimeError):
    """A worker's measurements did not arrive (a worker crashed or timed out)."""


@dataclass(frozen=True)
class Share:
    """This worker's place in the run: index ``index`` of ``count`` workers, exchanging
    measurements through ``directory``."""

    index: int
    count: int
    directory: Path

    @property
    def name(self) -> str:
        return f"gw{self.index}"


def take(share: Share, position: int) -> bool:
    """Take case ``position`` (in the run's serial order) for this worker: True for exactly one
    worker of the run, whichever asks first (an exclusively created file names the taker)."""
    marker = share.directory / f"taken-{position}"
    try:
        descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        file.write(share.name)
    return True


def worker_resources(
    index: int, count: int, cpu_count: int, device_count: int, requested: str | None
) -> tuple[int, str | None]:
    """``(torch threads, device)`` of worker ``index`` of ``count``: its share of the CPU
    cores (at least one), and with CUDA devices and no explicit device index, its own
    device ``cuda:index mod device_count``."""
    threads = max(1, cpu_count // max(1, count))
    device = requested
    if device_count > 0 and requested in (None, "cuda"):
        device = f"cuda:{index % device_count}"
    return threads, device


def new_exchange() -> Path:
    """A fresh directory for one distributed run's measurements."""
    return Path(tempfile.mkdtemp(prefix="circuit-claims-xdist-"))


def _payload(measured: MeasuredCase) -> dict[str, Any]:
    return {
        "key": measured.case.key,
        "checks": measured.checks,
        "error": measured.error,
        "n_prompts": measured.n_prompts,
        "top_heads": measured.top_heads,
        "dataset_digest": measured.dataset_digest,
    }


def write_share(
    share: Share,
    measured: Sequence[MeasuredCase],
    skipped: Mapping[str, str],
    seconds: Mapping[str, float],
) -> Path:
    """Write this worker's measurements (atomically: the others never read half a file)."""
    data = {
        "measured": [_payload(m) for m in measured],
        "skipped": dict(skipped),
        "seconds": dict(seconds),
    }
    path = share.directory / f"measured-{share.name}.pkl"
    partial = path.with_suffix(".partial")
    partial.write_bytes(pickle.dumps(data))
    os.replace(partial, path)
    return path


def wait_for_shares(share: Share, timeout: float = WAIT_SECONDS) -> None:
    """Block until every worker of the run has written its measurements."""
    deadline = time.monotonic() + timeout
    while len(list(share.directory.glob("measured-*.pkl"))) < share.count:
        if time.monotonic() > deadline:
            raise ExchangeError(
                f"worker {share.name}: the other workers' measurements did not arrive in "
                f"{timeout:.0f}s (in {share.directory}); did a worker crash?"
            )
        time.sleep(POLL_SECONDS)


@dataclass(frozen=True)
class Gathered:
    """Every worker's measurements, in the run's case order, with what they skipped and the
    time each spent per model and revision."""

    measured: list[MeasuredCase]
    skipped: dict[str, str]
    seconds: dict[str, float]


def gather(directory: Path, cases: Sequence[ClaimCase]) -> Gathered:
    """Read every worker's file; rebuild each measured case on this process's own
    :class:`ClaimCase` (matched by key), ordered as ``cases`` (the serial order)."""
    by_key = {case.key: case for case in cases}
    found: dict[tuple, MeasuredCase] = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for path in sorted(directory.glob("measured-*.pkl")):
        data = pickle.loads(path.read_bytes())
        skipped.update(data["skipped"])
        for key, value in data["seconds"].items():
            seconds[key] = seconds.get(key, 0.0) + value
        for item in data["measured"]:
            case = by_key.get(item.pop("key"))
            if case is not None:
                found[case.key] = MeasuredCase(case, case.file.verdict, **item)
    ordered = [found[case.key] for case in cases if case.key in found]
    return Gathered(ordered, skipped, seconds)
