"""``python -m circuit discover`` for any prompt family of the bundled model.

``python -m circuit.training.discover --family two-premise [--variant study] [--movers 3]
[--top 8] [--n-pairs 56] [--revision stepN]``

The same routines as ``python -m circuit discover`` (:func:`circuit.discovery.discover` and
:func:`circuit.discovery.draft_claims`: direct logit attribution, attention and its Spearman
correlation with writing, value patching by position, path patching into the top movers'
queries), on a dataset of the given family (:data:`circuit.templates.FAMILIES`); the draft's
``[dataset]`` table names the family. Discovery on ``heldout`` is refused, as there.
"""

import argparse
import os
import shlex
import sys

import torch

from circuit.discovery import DiscoveryError, check_variant, discover, draft_claims, notes
from circuit.kinds.measurements import Subject
from circuit.measurement_store import MeasurementStore, SubjectKey
from circuit.models import load_model
from circuit.syllogisms import VARIANTS, DatasetError, build_dataset, summarise
from circuit.templates import FAMILIES


def main(argv: list[str] | None = None) -> int:
    """Print a DRAFT claim file discovered on ``--variant`` of ``--family``; 2 on an error."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m circuit.training.discover", description=__doc__
    )
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--family", default="two-premise", choices=FAMILIES)
    parser.add_argument("--variant", default="study", choices=VARIANTS)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n-pairs", type=int, default=56)
    parser.add_argument("--movers", type=int, default=3)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        check_variant(args.variant, False)
        model = load_model(args.model, args.revision)
        dataset = build_dataset(
            model,
            args.variant,
            seed=args.seed,
            n_pairs=args.n_pairs,
            allow_fewer=True,
            family=args.family,
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
    except (DatasetError, DiscoveryError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    command = "python -m circuit.training.discover " + shlex.join(argv)
    draft = draft_claims(
        found,
        args.model,
        args.revision,
        args.variant,
        command,
        args.seed,
        args.n_pairs,
        summarise(dataset),
        notes(args.variant),
    )
    print(draft.replace("[dataset]\n", f'[dataset]\nfamily = "{args.family}"\n', 1), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
