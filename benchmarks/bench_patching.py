"""Activation patching: ``transformer_lens.patching`` vs ``circuit.patching``, same data, same run.

Run with ``pytest benchmarks/bench_patching.py --benchmark-only``. Model: ``random:pythia-70m``.
Data: the ``unfiltered`` syllogism dataset (16 pairs: 32 prompts of 22 tokens) when the
bundled tokenizer is available, else 32 random prompts of 20 tokens whose corrupted copies swap
two tokens (as descriptor and opposite). By-position sweeps use 32 random prompts of 8 tokens
(the reference takes one full forward per layer x position x head: 384 forwards of the whole
vocabulary's unembedding).

Each case is measured twice: ``reference`` (one round, ``pedantic``) then ``fast`` (one
untimed warm-up round, which extracts the model's weights once, then three timed rounds); the
fast entry asserts equality with the reference within 1e-5 in logit-difference units (1e-5
times the larger of the values' scale and 1 / (clean - corrupted gap) for the normalised
metric) and records in ``extra_info``: both times (the fast one the mean of its rounds), their
ratio, the bridge's forward passes of each (embedding calls: the reference's per-cell runs; the
fast routine's verification run), the fast routine's functional forwards and batch rows, and
each side's peak resident-memory growth (the kernel's high-water mark, no sampling thread).
"""

import os
import time

import pytest
import torch

from benchmarks.measure import ForwardCounter, PeakRss
from circuit.metrics import normalised_metric
from circuit.models import ModelUnavailableError, load_model
from circuit.patching import SweepStats, library_equivalent, patch_heads, patch_resid

N_PROMPTS, SEQ_LEN, BY_POS_SEQ_LEN = 32, 20, 8
TOLERANCE = 1e-5
FAST_ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
"""Timed rounds of the fast routine (after one warm-up); ``BENCH_ROUNDS`` overrides."""
COMPONENTS = ("z", "q", "k", "v", "pattern")
_reference_runs: dict[tuple[str, bool], dict[str, object]] = {}


def _random_pairs(model, n: int, seq: int, swap: tuple[int, int], seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 1000, (n, seq), generator=generator)
    corrupted = clean.clone()
    corrupted[:, swap[0]], corrupted[:, swap[1]] = clean[:, swap[1]], clean[:, swap[0]]
    with torch.inference_mode():
        shift = model(clean)[:, -1] - model(corrupted)[:, -1]
    answers = torch.stack([shift.argmax(-1), shift.argmin(-1)], dim=-1)
    return clean, corrupted, answers


@pytest.fixture(scope="module")
def pythia():
    try:
        return load_model("random:pythia-70m", device="cpu")
    except ModelUnavailableError:
        from fixtures.tiny_model import pythia_70m

        return pythia_70m()


@pytest.fixture(scope="module")
def data(pythia):
    """``(clean, corrupted, metric, clean_cache)`` per sweep kind (all_pos, by_pos)."""
    all_pos = None
    try:
        from circuit.syllogisms import build_dataset

        dataset = build_dataset(pythia, variant="unfiltered", n_pairs=N_PROMPTS // 2)
        if len(dataset) >= N_PROMPTS:
            all_pos = (
                dataset.clean_tokens[:N_PROMPTS],
                dataset.corrupted_tokens[:N_PROMPTS],
                dataset.answers[:N_PROMPTS],
            )
    except (ImportError, ModelUnavailableError, ValueError):
        all_pos = None
    if all_pos is None:
        all_pos = _random_pairs(pythia, N_PROMPTS, SEQ_LEN, (4, 9))
    by_pos = _random_pairs(pythia, N_PROMPTS, BY_POS_SEQ_LEN, (2, 5), seed=1)
    prepared = {}
    for kind, (clean, corrupted, answers) in (("all_pos", all_pos), ("by_pos", by_pos)):
        with torch.inference_mode():
            clean_logits, clean_cache = pythia.run_with_cache(clean)
            corrupted_logits = pythia(corrupted)
        metric = normalised_metric(clean_logits, corrupted_logits, answers)
        prepared[kind] = (clean, corrupted, metric, clean_cache)
    return prepared


CASES = [(c, b) for b in (False, True) for c in COMPONENTS] + [("resid", True)]
METRIC_KINDS = ("logit_diff", "callable")


def plain_callable(metric):
    """The same normalised logit difference as ``metric``, written as a TransformerLens user
    writes a metric: a plain ``logits -> scalar`` closure over tensors of answer ids."""
    right, wrong = metric.answers[:, 0], metric.answers[:, 1]
    rows = torch.arange(len(right))
    clean, corrupted = metric.clean_baseline, metric.corrupted_baseline

    def tl_metric(logits):
        diff = (logits[rows, -1, right] - logits[rows, -1, wrong]).mean()
        return (diff - corrupted) / (clean - corrupted)

    return tl_metric


def _reference_function(component: str, by_position: bool):
    if component == "resid":
        from transformer_lens.patching import get_act_patch_resid_pre

        return get_act_patch_resid_pre
    return library_equivalent(component, by_position)


def _fast_function(component: str, by_position: bool):
    if component == "resid":
        return lambda model, clean, corrupted, metric, stats: patch_resid(
            model, clean, corrupted, metric, stats=stats
        )
    return lambda model, clean, corrupted, metric, stats: patch_heads(
        model, clean, corrupted, metric, component, by_position, stats=stats
    )


@pytest.mark.parametrize("metric_kind", METRIC_KINDS)
@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize(
    ("component", "by_position"),
    CASES,
    ids=[f"{c}-{'by_pos' if b else 'all_pos'}" for c, b in CASES],
)
def test_patch_heads(benchmark, pythia, data, component, by_position, impl, metric_kind):
    """``metric_kind``: the project's ``LogitDiffMetric`` or :func:`plain_callable` (equal
    values). The reference runs once per sweep (the first ``metric_kind``; transformer_lens
    calls either metric once per cell on full logits, so its time does not depend on which)."""
    torch.set_grad_enabled(False)
    if impl == "reference" and metric_kind != METRIC_KINDS[0]:
        pytest.skip("the reference runs once per sweep")
    clean, corrupted, metric, clean_cache = data["by_pos" if by_position else "all_pos"]
    key = (component, by_position)
    where = "by_pos" if by_position else "all_pos"
    benchmark.group = f"patch_heads {component} {where}" if component != "resid" else "patch_resid"
    benchmark.extra_info.update(
        {
            "n_prompts": int(clean.shape[0]),
            "seq_len": int(clean.shape[1]),
            "impl": impl,
            "metric": metric_kind,
        }
    )

    def reference():
        counter = ForwardCounter(pythia)
        start = time.perf_counter()
        with PeakRss() as rss:
            values = _reference_function(*key)(pythia, corrupted, clean_cache, metric)
        seconds = time.perf_counter() - start
        counter.close()
        run = {
            "values": values,
            "seconds": seconds,
            "forwards": counter.count,
            "peak_rss_mib": rss.mib,
        }
        _reference_runs[key] = run
        return run

    if impl == "reference":
        run = benchmark.pedantic(reference, rounds=1, iterations=1)
        benchmark.extra_info.update(
            {"bridge_forwards": run["forwards"], "peak_rss_mib": run["peak_rss_mib"]}
        )
        return
    ref = _reference_runs.get(key) or reference()
    stats = SweepStats()
    counter = ForwardCounter(pythia)
    fast_metric = metric if metric_kind == "logit_diff" else plain_callable(metric)
    routine = _fast_function(*key)

    def fast():
        return routine(pythia, clean, corrupted, fast_metric, stats)

    with PeakRss() as rss:
        values = benchmark.pedantic(fast, rounds=FAST_ROUNDS, iterations=1, warmup_rounds=1)
    counter.close()
    fast_seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        {
            "reference_seconds": round(ref["seconds"], 3),
            "fast_seconds": round(fast_seconds, 4),
            "speedup": round(ref["seconds"] / fast_seconds, 1),
            "metric_reads": stats.metric_reads,
            "metric_calls": stats.metric_calls,
            "reference_bridge_forwards": ref["forwards"],
            "fast_bridge_forwards_per_call": counter.count // (FAST_ROUNDS + 1),
            "fast_functional_forwards_per_call": stats.forwards // (FAST_ROUNDS + 1),
            "fast_batch_rows_per_call": stats.rows // (FAST_ROUNDS + 1),
            "reference_peak_rss_mib": ref["peak_rss_mib"],
            "fast_peak_rss_mib": rss.mib,
            "max_abs_difference": float((values - ref["values"]).abs().max()),
        }
    )
    print(
        f"\nSPEEDUP {benchmark.group} [{metric_kind}]: reference {ref['seconds']:.2f} s, "
        f"fast {fast_seconds:.3f} s, {ref['seconds'] / fast_seconds:.1f}x "
        f"(metric reads {stats.metric_reads or 'answers'}, calls {stats.metric_calls or '-'})"
    )
    # normalised values divide float32 logit noise by the clean-corrupted gap
    gap = abs(metric.clean_baseline - metric.corrupted_baseline)
    scale = max(1.0, float(ref["values"].abs().max()), 1.0 / gap)
    torch.testing.assert_close(values, ref["values"], rtol=0, atol=TOLERANCE * scale)
    if metric_kind == "callable":
        assert stats.metric_reads == "final", stats.metric_reason
