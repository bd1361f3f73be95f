"""Scale report: the study's claim file (``claims/pythia-410m.toml``) on ``random:pythia-410m``.

Run with ``pytest benchmarks/bench_scale.py --benchmark-only -m slow -s`` (CPU; minutes).
``SCALE_N_PAIRS`` (environment, default 8) overrides the file's ``n_pairs = 56`` so that a run
fits about ten minutes on 2 CPU cores; ``SCALE_N_PAIRS=0`` keeps the file's own size. Verdicts
on random weights mean nothing: the benchmark records the wall time, the peak resident-memory
growth (the kernel's high-water mark, :class:`benchmarks.measure.PeakRss`) and the sweeps
computed, and asserts that the peak stays under :data:`PEAK_LIMIT_GIB`.
"""

import os

import pytest

from benchmarks.scale import run_claim_file, to_stderr
from circuit.models import ModelUnavailableError, resolve

PEAK_LIMIT_GIB = 24


@pytest.mark.slow
def test_study_claim_file_on_random_pythia_410m(benchmark):
    try:
        resolve("random:pythia-410m", None)
    except ModelUnavailableError as error:
        pytest.skip(f"random:pythia-410m unavailable: {error}")
    n_pairs = int(os.environ.get("SCALE_N_PAIRS", "8")) or None
    kwargs = {"n_pairs": n_pairs, "progress": to_stderr}
    report = benchmark.pedantic(run_claim_file, kwargs=kwargs, rounds=1, iterations=1)
    benchmark.extra_info.update(report)
    print(f"\nSCALE {report}")
    assert report["peak_rss_growth_gib"] < PEAK_LIMIT_GIB
