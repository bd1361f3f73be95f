"""Path patching: the study's algorithm (``fixtures/references.py``) vs ``circuit.paths``.

Run with ``pytest benchmarks/bench_paths.py --benchmark-only``. On ``random:pythia-70m``,
the first 32 prompts of the ``unfiltered`` syllogism dataset (22 tokens; random tokens of length
20 where the bundled tokenizer is missing), receivers in the last two layers, for q, k and v: the
reference is timed once (``pedantic``, one round: it takes minutes), the fast routine over three
rounds after one untimed warm-up, on the same data in the same run; results must agree to 1e-5.
``extra_info`` records bridge forward passes, peak resident-memory growth (the kernel's
high-water mark) and the speed-up ratio (reference time over the fast routine's mean).
"""

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from benchmarks.measure import ForwardCounter, PeakRss
from circuit.metrics import LogitDiffMetric
from circuit.models import BUNDLED_DIR
from circuit.paths import path_patch_detailed
from circuit.syllogisms import build_dataset
from fixtures.planted import random_pythia_70m
from fixtures.references import study_path_patch

N_PROMPTS, SEQ_LEN = 32, 20
RECEIVERS = [(4, 3), (5, 1)]
TOLERANCE = 1e-5
FAST_ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
"""Timed rounds of the fast routine (after one warm-up); ``BENCH_ROUNDS`` overrides."""
_reference_runs: dict[str, dict[str, object]] = {}


@pytest.fixture(scope="module")
def pythia(tmp_path_factory) -> torch.nn.Module:
    return random_pythia_70m(Path(tmp_path_factory.mktemp("pythia-70m")))


@pytest.fixture(scope="module")
def data(pythia):
    """Syllogism prompts (descriptor and opposite swapped), or random ones swapping two tokens."""
    if (BUNDLED_DIR / "config.json").is_file():
        dataset = build_dataset(pythia, variant="unfiltered")
        if len(dataset) >= N_PROMPTS:
            answers = dataset.answers[:N_PROMPTS]
            clean, corrupted = dataset.clean_tokens, dataset.corrupted_tokens
            return clean[:N_PROMPTS], corrupted[:N_PROMPTS], LogitDiffMetric(answers)
    generator = torch.Generator().manual_seed(0)
    vocab = pythia.cfg.d_vocab
    clean = torch.randint(0, vocab, (N_PROMPTS, SEQ_LEN), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 4], corrupted[:, 11] = clean[:, 11], clean[:, 4]
    answers = torch.stack([clean[:, 4], clean[:, 11]], dim=1)
    return clean, corrupted, LogitDiffMetric(answers)


def _measure(model: torch.nn.Module, run: Callable[[], object]) -> dict[str, object]:
    counter = ForwardCounter(model)
    try:
        with PeakRss() as memory:
            start = time.perf_counter()
            value = run()
            seconds = time.perf_counter() - start
    finally:
        counter.close()
    return {"value": value, "seconds": seconds, "forwards": counter.count, "peak_mib": memory.mib}


def _reference(pythia, data, receiver_input: str) -> dict[str, object]:
    if receiver_input not in _reference_runs:
        clean, corrupted, metric = data
        _reference_runs[receiver_input] = _measure(
            pythia,
            lambda: study_path_patch(pythia, clean, corrupted, metric, RECEIVERS, receiver_input),
        )
    return _reference_runs[receiver_input]


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_study_reference(benchmark, pythia, data, receiver_input):
    torch.set_grad_enabled(False)
    measured = benchmark.pedantic(
        _reference, args=(pythia, data, receiver_input), rounds=1, iterations=1
    )
    benchmark.extra_info.update(
        forwards=measured["forwards"],
        peak_rss_growth_mib=round(measured["peak_mib"], 1),
        senders=RECEIVERS[-1][0] * pythia.cfg.n_heads,
    )


def plain_callable(answers: torch.Tensor):
    """The logit difference as a TransformerLens user writes it: ``logits -> scalar``."""
    right, wrong, rows = answers[:, 0], answers[:, 1], torch.arange(len(answers))
    return lambda logits: (logits[rows, -1, right] - logits[rows, -1, wrong]).mean()


@pytest.mark.parametrize("metric_kind", ["logit_diff", "callable"])
@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_fast_path_patch(benchmark, pythia, data, receiver_input, metric_kind):
    """The reference (the study's algorithm, timed once per receiver input) against the fast
    routine with the ``LogitDiffMetric`` and with an equal plain callable."""
    torch.set_grad_enabled(False)
    clean, corrupted, metric = data
    reference = _reference(pythia, data, receiver_input)
    fast_metric = metric if metric_kind == "logit_diff" else plain_callable(metric.answers)

    def fast():
        return _measure(
            pythia,
            lambda: path_patch_detailed(
                pythia, clean, corrupted, fast_metric, RECEIVERS, receiver_input
            ),
        )

    measured = benchmark.pedantic(fast, rounds=FAST_ROUNDS, iterations=1, warmup_rounds=1)
    result = measured["value"]
    expected = reference["value"]
    assert torch.equal(result.values.isnan(), expected.isnan())
    torch.testing.assert_close(
        result.values.nan_to_num(), expected.nan_to_num(), atol=TOLERANCE, rtol=0.0
    )
    fast_seconds = benchmark.stats.stats.mean
    ratio = reference["seconds"] / fast_seconds
    benchmark.extra_info.update(
        prompts=list(clean.shape),
        reference_seconds=round(reference["seconds"], 3),
        fast_seconds_mean=round(fast_seconds, 3),
        ratio=round(ratio, 1),
        metric=metric_kind,
        reference_forwards=reference["forwards"],
        fast_bridge_forwards=measured["forwards"],
        fast_sender_chunks=result.evidence.sender_chunks,
        reference_peak_rss_growth_mib=round(reference["peak_mib"], 1),
        fast_peak_rss_growth_mib=round(measured["peak_mib"], 1),
        max_abs_difference=float((result.values - expected).nan_to_num().abs().max()),
    )
    print(
        f"\nSPEEDUP path_patch {receiver_input} [{metric_kind}]: reference "
        f"{reference['seconds']:.2f} s, fast {fast_seconds:.3f} s, {ratio:.1f}x"
    )
    assert ratio >= 1.0
