"""``python -m circuit``: summarise a syllogism dataset on a model, calibrate the rule, or
draw the standard sweeps.

Examples: ``python -m circuit --model bundled --variant study``;
``python -m circuit calibrate --model random:bundled --seeds 10 --claims-per-kind 200``
(false CONFIRMED rates of the verdict rule on random weights, and its false discovery rate on
simulated data); ``python -m circuit figures --model bundled --variant study --out figs
--receivers L3H6,L3H0`` (direct logit attribution, head and residual patching, path patching
into the receivers' queries, as PNG and SVG); ``python -m circuit discover --model bundled
--variant study --movers 4`` (a DRAFT claim file, discovered on ``study`` and judged on
``heldout`` and ``unfiltered``, with the measured numbers as comments; ``--variant heldout``
is refused unless ``--allow-heldout``). Claims are judged by ``pytest claims`` (see README).
"""

import argparse
import sys

from circuit.models import ModelSpecError, ModelUnavailableError, load_model
from circuit.summary import baselines, summary_table
from circuit.syllogisms import VARIANTS, DatasetError, build_dataset


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the dataset, print its table; 2 on a usage error."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:
        return calibrate_main(argv[1:])
    if argv[:1] == ["figures"]:
        return figures_main(argv[1:])
    if argv[:1] == ["discover"]:
        return discover_main(argv[1:])
    if argv[:1] == ["fuzz-repro"]:  # docs/fuzzing.md
        from circuit.fuzzing.repro import main as fuzz_repro_main

        return fuzz_repro_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m circuit", description=__doc__)
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--variant", default="study", choices=VARIANTS)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    try:
        model = load_model(args.model, args.revision, args.device, args.dtype)
        dataset = build_dataset(model, args.variant, seed=args.seed)
    except (ModelSpecError, ModelUnavailableError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary_table(dataset, baselines(model, dataset)))
    return 0


def calibrate_main(argv: list[str]) -> int:
    """``calibrate``: random-model false CONFIRMED table and the simulated FDR; 1 if either
    fails (any CONFIRMED on random weights, or FDR above alpha), 2 on a usage error."""
    from circuit.calibration import KINDS_CALIBRATED, calibrate_random_models, simulate_fdr
    from circuit.claims import ClaimFileError, load_claim_file
    from circuit.statistics import VerdictSettings

    parser = argparse.ArgumentParser(prog="python -m circuit calibrate")
    parser.add_argument("--model", default="random:bundled", help="random:<shape>")
    parser.add_argument("--seeds", type=int, default=10, help="number of random models")
    parser.add_argument("--claims", action="append", default=[], help="claim file(s)")
    parser.add_argument("--claims-per-kind", type=int, default=200)
    parser.add_argument("--kinds", nargs="*", default=list(KINDS_CALIBRATED))
    parser.add_argument("--n-pairs", type=int, default=56)
    parser.add_argument("--simulate-runs", type=int, default=100, help="0 skips the FDR run")
    args = parser.parse_args(argv)
    if not args.model.startswith("random:") or args.model.count(":") != 1:
        parser.error(f"--model must be random:<shape> (seeds come from --seeds), got {args.model}")
    if args.seeds < 1 or args.claims_per_kind < 1 or args.simulate_runs < 0:
        parser.error("--seeds and --claims-per-kind must be >= 1, --simulate-runs >= 0")
    try:
        files = [load_claim_file(path) for path in args.claims]
    except ClaimFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = VerdictSettings()
    shape = args.model.removeprefix("random:")
    try:
        report = calibrate_random_models(
            shape,
            list(range(args.seeds)),
            args.claims_per_kind,
            kinds=args.kinds,
            claim_files=files,
            n_pairs=args.n_pairs,
            settings=settings,
            progress=lambda line: print(f"[calibrate] {line}", file=sys.stderr),
        )
    except (ModelSpecError, ModelUnavailableError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Random-weight models: {', '.join(report.models)}")
    print(report.table())
    for tally in report.tallies.values():
        for line in tally.examples:
            print(f"  {line}")
    failed = report.false_confirmed() > 0
    if args.simulate_runs:
        result = simulate_fdr(runs=args.simulate_runs, settings=settings)
        print(f"Simulated null ensemble: {result.text()}")
        failed |= result.fdr > settings.alpha
    return 1 if failed else 0


def figures_main(argv: list[str]) -> int:
    """``figures``: the standard sweeps of a model on a dataset, drawn into ``--out`` (PNG and
    SVG); 2 with a one-line error on a usage error."""
    from pathlib import Path

    from circuit.guards import as_heads

    parser = argparse.ArgumentParser(prog="python -m circuit figures")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--variant", default="study", choices=VARIANTS)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n-pairs", type=int, default=None, help="default: the variant's")
    parser.add_argument("--out", required=True, help="directory for the figures")
    parser.add_argument(
        "--receivers", default="", help="heads for path patching into q, e.g. L3H6,L3H0"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _error(f"--out {out} is a file; name a directory for the figures")
    if args.n_pairs is not None and args.n_pairs < 1:
        return _error(f"--n-pairs must be at least 1, got {args.n_pairs}")
    names = [name.strip() for name in args.receivers.split(",") if name.strip()]
    try:
        model = load_model(args.model, args.revision, args.device, args.dtype)
        receivers = (
            as_heads(names, model.cfg.n_layers, model.cfg.n_heads, "--receivers") if names else []
        )
        overrides = {} if args.n_pairs is None else {"n_pairs": args.n_pairs}
        dataset = build_dataset(model, args.variant, seed=args.seed, **overrides)
    except (ModelSpecError, ModelUnavailableError, DatasetError, ValueError) as error:
        return _error(str(error).splitlines()[0] if str(error) else type(error).__name__)
    from circuit.figures import standard_figures

    try:
        written = standard_figures(
            model, dataset, out, receivers, progress=lambda line: print(f"[figures] {line}")
        )
    except OSError as error:
        return _error(f"cannot write into --out {out}: {error.strerror or error}")
    except ValueError as error:  # e.g. receivers with no sender before them
        return _error(str(error).splitlines()[0] if str(error) else type(error).__name__)
    print(f"{len(written)} figures (PNG and SVG) in {out}")
    return 0


def discover_main(argv: list[str]) -> int:
    """``discover``: print a DRAFT claim file for a model, discovered on ``--variant`` (study by
    default) from the claim kinds' own sweeps; 2 with a one-line error on a usage error or on
    ``--variant heldout`` without ``--allow-heldout``."""
    import shlex

    import torch

    from circuit.discovery import DiscoveryError, check_variant, discover, draft_claims, notes
    from circuit.kinds.measurements import Subject
    from circuit.measurement_store import MeasurementStore, SubjectKey
    from circuit.metrics import MetricError
    from circuit.syllogisms import summarise
    from circuit.templates import FAMILIES

    parser = argparse.ArgumentParser(prog="python -m circuit discover")
    parser.add_argument("--model", required=True)
    parser.add_argument("--revision", default=None)
    parser.add_argument("--variant", default="study", choices=VARIANTS)
    parser.add_argument(
        "--family", default="study", choices=FAMILIES, help="prompt family of the dataset"
    )
    parser.add_argument("--allow-heldout", action="store_true", help="discover on heldout")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n-pairs", type=int, default=56)
    parser.add_argument("--movers", type=int, default=1, help="top-DLA heads taken as movers")
    parser.add_argument("--top", type=int, default=6, help="heads to profile")
    parser.add_argument(
        "--no-logit-diff-filter",
        action="store_true",
        help="keep prompts the model gets wrong (a model that does not do the task)",
    )
    args = parser.parse_args(argv)
    if args.n_pairs < 1 or args.movers < 1 or args.top < 1:
        return _error("--n-pairs, --movers and --top must be at least 1")
    try:
        check_variant(args.variant, args.allow_heldout)
        model = load_model(args.model, args.revision)
        overrides = {"logit_diff_filter": False} if args.no_logit_diff_filter else {}
        dataset = build_dataset(
            model,
            args.variant,
            seed=args.seed,
            n_pairs=args.n_pairs,
            allow_fewer=True,
            family=args.family,
            **overrides,
        )
        device, dtype = str(model.cfg.device), str(model.cfg.dtype).removeprefix("torch.")
        key = SubjectKey(
            args.model,
            args.revision,
            dtype,
            device,
            args.variant,
            args.seed,
            args.n_pairs,
            args.family,
        )
        with torch.no_grad():
            found = discover(
                Subject(model, dataset, key, MeasurementStore()), args.movers, args.top
            )
    except (
        ModelSpecError,
        ModelUnavailableError,
        DatasetError,
        DiscoveryError,
        MetricError,
    ) as error:
        return _error(str(error).splitlines()[0] if str(error) else type(error).__name__)
    command = "python -m circuit discover " + shlex.join(argv)
    print(
        draft_claims(
            found,
            args.model,
            args.revision,
            args.variant,
            command,
            args.seed,
            args.n_pairs,
            summarise(dataset),
            notes(args.variant, args.no_logit_diff_filter),
            args.family,
        ),
        end="",
    )
    return 0


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
