"""Head ablation: one bridge forward per mask (``hook_z`` hooks) vs ``circuit.ablation``.

Run with ``pytest benchmarks/bench_ablation.py --benchmark-only``. Model: ``random:pythia-70m``
(6 layers x 8 heads). Data: the ``unfiltered`` syllogism dataset (16 pairs: 32 prompts) when
the bundled tokenizer is available, else 32 random prompts of 20 tokens whose corrupted copies
swap two tokens. Masks: :data:`N_MASKS` masks as a sufficiency claim's sweep has them (every
head ablated except a random 4-head set of layers 2-4), for mean and for resample ablation.

Each case is measured as in ``bench_patching.py``: ``reference`` (one round, ``pedantic``: one
bridge forward per mask, ``circuit.ablation.reference_ablate_heads``) then ``fast`` (one
untimed warm-up round, then three timed rounds of ``circuit.ablation.ablate_heads``, its
proofs included); the fast entry asserts equality within 1e-5 (relative to the values' scale
and the normalised metric's 1 / gap) and records both times, their ratio, the bridge forwards
of each, the functional forwards and batch rows, and each side's peak resident-memory growth.
"""

import time

import numpy as np
import pytest
import torch

from benchmarks.measure import ForwardCounter, PeakRss
from circuit.ablation import Ablation, AblationStats, ablate_heads, reference_ablate_heads
from circuit.metrics import normalised_metric
from circuit.models import ModelUnavailableError, load_model

N_PROMPTS, SEQ_LEN, N_MASKS = 32, 20, 64
TOLERANCE = 1e-5
ABLATIONS = {"mean": Ablation("mean", "clean"), "resample": Ablation("resample", "corrupted")}
_reference_runs: dict[str, dict[str, object]] = {}


@pytest.fixture(scope="module")
def pythia():
    try:
        return load_model("random:pythia-70m", device="cpu")
    except ModelUnavailableError:
        from fixtures.tiny_model import pythia_70m

        return pythia_70m()


@pytest.fixture(scope="module")
def data(pythia):
    """``(clean, corrupted, metric, masks)``."""
    tokens = None
    try:
        from circuit.syllogisms import build_dataset

        dataset = build_dataset(pythia, variant="unfiltered", n_pairs=N_PROMPTS // 2)
        if len(dataset) >= N_PROMPTS:
            tokens = (
                dataset.clean_tokens[:N_PROMPTS],
                dataset.corrupted_tokens[:N_PROMPTS],
                dataset.answers[:N_PROMPTS],
            )
    except (ImportError, ModelUnavailableError, ValueError):
        tokens = None
    if tokens is None:
        from benchmarks.bench_patching import _random_pairs

        tokens = _random_pairs(pythia, N_PROMPTS, SEQ_LEN, (4, 9))
    clean, corrupted, answers = tokens
    with torch.inference_mode():
        metric = normalised_metric(pythia(clean), pythia(corrupted), answers)
    layers, heads = int(pythia.cfg.n_layers), int(pythia.cfg.n_heads)
    rng = np.random.default_rng(0)
    pool = np.arange(2 * heads, 5 * heads)
    masks = torch.ones(N_MASKS, layers * heads, dtype=torch.bool)
    for row in range(N_MASKS):
        masks[row, torch.from_numpy(rng.choice(pool, 4, replace=False))] = False
    return clean, corrupted, metric, masks.view(N_MASKS, layers, heads)


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("method", list(ABLATIONS))
def test_ablate_heads(benchmark, pythia, data, method, impl):
    torch.set_grad_enabled(False)
    clean, corrupted, metric, masks = data
    ablation = ABLATIONS[method]
    benchmark.group = f"ablate_heads {method}"
    benchmark.extra_info.update(
        {
            "n_prompts": int(clean.shape[0]),
            "seq_len": int(clean.shape[1]),
            "n_masks": N_MASKS,
            "impl": impl,
        }
    )

    def reference():
        counter = ForwardCounter(pythia)
        start = time.perf_counter()
        with PeakRss() as rss:
            values = reference_ablate_heads(pythia, clean, corrupted, metric, masks, ablation)
        seconds = time.perf_counter() - start
        counter.close()
        run = {
            "values": values,
            "seconds": seconds,
            "forwards": counter.count,
            "peak_rss_mib": rss.mib,
        }
        _reference_runs[method] = run
        return run

    if impl == "reference":
        run = benchmark.pedantic(reference, rounds=1, iterations=1)
        benchmark.extra_info.update(
            {"bridge_forwards": run["forwards"], "peak_rss_mib": run["peak_rss_mib"]}
        )
        return
    ref = _reference_runs.get(method) or reference()
    stats = AblationStats()
    counter = ForwardCounter(pythia)

    def fast():
        return ablate_heads(pythia, clean, corrupted, metric, masks, ablation, stats=stats)

    with PeakRss() as rss:
        values = benchmark.pedantic(fast, rounds=3, iterations=1, warmup_rounds=1)
    counter.close()
    fast_seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        {
            "reference_seconds": round(ref["seconds"], 3),
            "fast_seconds": round(fast_seconds, 4),
            "speedup": round(ref["seconds"] / fast_seconds, 1),
            "reference_bridge_forwards": ref["forwards"],
            "fast_bridge_forwards_per_call": counter.count // 4,
            "fast_functional_forwards_per_call": stats.forwards // 4,
            "fast_batch_rows_per_call": stats.rows // 4,
            "reference_peak_rss_mib": ref["peak_rss_mib"],
            "fast_peak_rss_mib": rss.mib,
            "max_abs_difference": float((values - ref["values"]).abs().max()),
        }
    )
    gap = abs(metric.clean_baseline - metric.corrupted_baseline)
    scale = max(1.0, float(ref["values"].abs().max()), 1.0 / gap)
    torch.testing.assert_close(values, ref["values"], rtol=0, atol=TOLERANCE * scale)
