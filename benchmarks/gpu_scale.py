"""Scale report on a GPU: ``python benchmarks/gpu_scale.py --dtype float32|bfloat16``.

Not collected by pytest and no CI dependency: it needs a CUDA device. Runs the study's claim
file (``claims/pythia-410m.toml``) on ``random:pythia-410m`` at the file's own size (or
``--n-pairs``), and prints one JSON line: wall time, the allocator's peak GPU memory, the peak
resident-memory growth, the sweeps computed and each case's outcome (verdicts on random weights
mean nothing: cost only). ``--dtype both`` runs float32 then bfloat16.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.scale import MODEL, run_claim_file, to_stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="float32")
    parser.add_argument("--n-pairs", type=int, default=None, help="override the file's n_pairs")
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this script measures the GPU path only", file=sys.stderr)
        return 2
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    for dtype in dtypes:
        report = run_claim_file(
            args.model, n_pairs=args.n_pairs, device="cuda", dtype=dtype, progress=to_stderr
        )
        report["gpu"] = torch.cuda.get_device_name()
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
