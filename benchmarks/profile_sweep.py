"""Where a fast sweep's time goes, and how far it sits from the matmul limit.

``python benchmarks/profile_sweep.py [--sweep z|q|k|v|pattern|resid|path-q|path-k|path-v]
[--by-position] [--metric logit_diff|callable]``: runs the sweep once (warm-up), then once
under ``torch.profiler`` (CPU), and prints the top operators by self time, the measured matmul
rate of this machine (a ``torch`` matmul of the sweep's typical shape) and the sweep's
multiply-add count (``SweepStats.row_layer_positions`` x the multiply-adds of one layer at one
position, plus the readout), i.e. the time the sweep would take at the matmul rate.
Not collected by pytest.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_patching import N_PROMPTS, plain_callable
from benchmarks.bench_paths import plain_callable as path_callable
from circuit.metrics import LogitDiffMetric, normalised_metric
from circuit.models import load_model
from circuit.patching import SweepStats, patch_heads, patch_resid
from circuit.paths import path_patch_detailed
from circuit.syllogisms import build_dataset


def matmul_rate(rows: int, d_model: int, d_mlp: int) -> float:
    """Measured multiply-adds per second of ``[rows, d_model] @ [d_model, d_mlp]``."""
    a, b = torch.randn(rows, d_model), torch.randn(d_model, d_mlp)
    for _ in range(3):
        a @ b
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    return rows * d_model * d_mlp * reps / (time.perf_counter() - start)


MATMUL_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::addmm_",
    "aten::bmm",
    "aten::baddbmm",
    "aten::baddbmm_",
)


def matmul_flops(events) -> float:
    """FLOPs of every matmul the profile saw (2 per multiply-add). The profiler counts ``mm``,
    ``addmm`` and ``bmm`` itself but not the in-place ``addmm_`` and ``baddbmm_`` the engine
    accumulates with; those are counted from their recorded input shapes
    (``self [.., m, n]``, ``a [.., m, k]``, ``b [.., k, n]``)."""
    total = 0.0
    for event in events:
        if event.key in ("aten::addmm_", "aten::baddbmm_"):
            out, a = event.input_shapes[0], event.input_shapes[1]
            batch = out[0] if len(out) == 3 else 1
            total += 2.0 * batch * out[-2] * out[-1] * a[-1] * event.count
        elif event.key in MATMUL_OPS:
            total += event.flops or 0
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", default="z")
    parser.add_argument("--by-position", action="store_true")
    parser.add_argument("--metric", choices=["logit_diff", "callable"], default="logit_diff")
    parser.add_argument("--top", type=int, default=18)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = load_model("random:pythia-70m", device="cpu")
    data = build_dataset(model, variant="unfiltered", n_pairs=N_PROMPTS // 2)
    clean, corrupted = data.clean_tokens[:N_PROMPTS], data.corrupted_tokens[:N_PROMPTS]
    answers = data.answers[:N_PROMPTS]
    if args.by_position:  # the benchmark's by-position data: 8 random tokens, two swapped
        generator = torch.Generator().manual_seed(1)
        clean = torch.randint(0, 1000, (N_PROMPTS, 8), generator=generator)
        corrupted = clean.clone()
        corrupted[:, 2], corrupted[:, 5] = clean[:, 5], clean[:, 2]
    normalised = normalised_metric(model(clean), model(corrupted), answers)
    stats = SweepStats()
    if args.sweep.startswith("path-"):
        raw = LogitDiffMetric(answers)
        metric = raw if args.metric == "logit_diff" else path_callable(answers)

        def sweep():
            return path_patch_detailed(
                model, clean, corrupted, metric, [(4, 3), (5, 1)], args.sweep[-1]
            )
    else:
        metric = normalised if args.metric == "logit_diff" else plain_callable(normalised)

        def sweep():
            if args.sweep == "resid":
                return patch_resid(model, clean, corrupted, metric, stats=stats)
            return patch_heads(
                model, clean, corrupted, metric, args.sweep, args.by_position, stats=stats
            )

    sweep()
    stats.__init__()
    rate_before = matmul_rate(4096, model.cfg.d_model, model.cfg.d_mlp)
    start = time.perf_counter()
    sweep()
    seconds = time.perf_counter() - start
    rate_after = matmul_rate(4096, model.cfg.d_model, model.cfg.d_mlp)
    with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
        sweep()
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6
    flops = matmul_flops(prof.key_averages(group_by_input_shape=True))
    rate = 2 * max(rate_before, rate_after)  # FLOP/s (2 per multiply-add), the better one
    print(
        f"sweep {args.sweep} by_position={args.by_position} metric={args.metric}: "
        f"{seconds:.3f} s unprofiled; profiled {total:.3f} s, of which matmuls "
        f"{matmul:.3f} s ({matmul / total:.0%}); matmul FLOPs executed {flops / 1e9:.1f} G; "
        f"measured matmul rate {rate_before * 2e-9:.1f}-{rate_after * 2e-9:.1f} GFLOP/s -> "
        f"{flops / rate:.3f} s at the FLOP limit ({flops / rate / seconds:.0%} of the "
        f"unprofiled time); rows x layers x positions {stats.row_layer_positions // 2}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
