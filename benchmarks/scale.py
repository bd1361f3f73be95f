"""The scale report: the whole study claim file measured on a random model of its shape.

Shared by ``benchmarks/bench_scale.py`` (CPU, pytest-benchmark) and ``benchmarks/gpu_scale.py``
(a GPU, fp32 and bf16; not collected by pytest). Verdicts on random weights mean nothing: this
measures cost only (wall time, peak memory, what ran).
"""

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.measure import PeakRss

CLAIM_FILE = Path(__file__).resolve().parent.parent / "claims" / "pythia-410m.toml"
MODEL = "random:pythia-410m"


def run_claim_file(
    model: str = MODEL,
    claim_file: Path = CLAIM_FILE,
    n_pairs: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    progress: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Measure every case of ``claim_file`` against ``model`` (``n_pairs`` overrides the file's
    dataset size when given). Returns the time, the peak memory (resident growth on CPU, the
    allocator's peak on a GPU), the sweeps computed and each case's outcome. ``progress``
    receives a line as each sweep starts and ends (the pipeline's progress lines)."""
    from circuit.measurement_store import MeasurementStore
    from circuit.pipeline.cases import select_cases, validate_cases
    from circuit.pipeline.judging import judge_run, measure_cases
    from circuit.pipeline.model_cache import ModelCache
    from circuit.pipeline.options import ClaimOptions, select_files

    options = ClaimOptions(claim_files=(claim_file,), model=model, device=device, dtype=dtype)
    files = select_files(options)
    if n_pairs is not None:
        files = [
            dataclasses.replace(f, dataset=dataclasses.replace(f.dataset, n_pairs=n_pairs))
            for f in files
        ]
    models = ModelCache(device=device, dtype=dtype)
    store = MeasurementStore(progress=progress)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with PeakRss() as rss:
        cases = select_cases(files, options)
        validate_cases(cases, models)
        measured = measure_cases(cases, models, store, progress)
        records = judge_run(measured)
    seconds = time.perf_counter() - start
    report: dict[str, object] = {
        "model": model,
        "device": device,
        "dtype": dtype,
        "n_pairs": n_pairs if n_pairs is not None else files[0].dataset.n_pairs,
        "cases": len(cases),
        "prompts": [m.n_prompts for m in measured],
        "seconds": round(seconds, 1),
        "peak_rss_growth_gib": round(rss.peak / 2**30, 2),
        "sweeps_computed": dict(store.computed),
        "outcomes": [
            f"{m.case.claim.id}/{m.case.variant}: "
            + (f"ERROR {m.error[:80]}" if m.error else r.outcome)
            for m, r in zip(measured, records, strict=True)
        ],
    }
    if device.startswith("cuda"):
        report["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return report


def to_stderr(line: str) -> None:
    """A progress callback: each line to stderr as it comes (pytest ``-s`` shows it)."""
    print(line, file=sys.stderr, flush=True)
