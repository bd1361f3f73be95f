"""``python -m circuit``: summarise a syllogism dataset on a model.

Example: ``python -m circuit --model bundled --variant study``. Claims are judged by
``pytest claims`` (see README).
"""

import argparse
import sys

from circuit.models import ModelSpecError, ModelUnavailableError, load_model
from circuit.summary import baselines, summary_table
from circuit.syllogisms import VARIANTS, DatasetError, build_dataset


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the dataset, print its table; 2 on a usage error."""
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


if __name__ == "__main__":
    sys.exit(main())
