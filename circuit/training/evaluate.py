"""Measure a saved bundled model: accuracy and mean logit difference per template and split.

``python -m circuit.training.evaluate [--revision stepN] [--dir DIR] [--n 200] [--json]``

For each template and word split (``train``: the study nouns and categories, seen in
training; ``heldout``: the held-out nouns and categories, never seen in training), ``n``
prompts with the study descriptor pairs are scored at the final position (the prompt ends
with ``"... {noun} are"``): accuracy is the share of prompts where the descriptor's first
token has a higher logit than the opposite's first token, and the mean logit difference is
their mean difference.
"""

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tabulate import tabulate
from transformers import AutoTokenizer, GPTNeoXForCausalLM

from circuit.training.corpus import TEMPLATES, Split, evaluation_prompts
from circuit.training.layout import DEFAULT_DIR, revision_dir
from circuit.training.metrics import score

SPLITS: tuple[Split, ...] = ("train", "heldout")
DEFAULT_PROMPTS = 200
DEFAULT_SEED = 0


@dataclass(frozen=True)
class EvalRow:
    """Accuracy and mean logit diff of one template on one word split."""

    template: str
    split: str
    prompts: int
    accuracy: float
    mean_logit_diff: float


def evaluate_directory(
    directory: Path, n: int = DEFAULT_PROMPTS, seed: int = DEFAULT_SEED
) -> list[EvalRow]:
    """Score the HF model saved in ``directory`` on every template and split."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = GPTNeoXForCausalLM.from_pretrained(str(directory), dtype="float32")
    model.eval()
    rows = []
    for template in TEMPLATES:
        for split in SPLITS:
            accuracy, diff = score(model, tokenizer, evaluation_prompts(template, split, n, seed))
            rows.append(EvalRow(template, split, n, accuracy, diff))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; prints a table (or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(
        prog="python -m circuit.training.evaluate", description=__doc__
    )
    parser.add_argument("--revision", default=None, help="revision name (stepN); default final")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="model root directory")
    parser.add_argument("--n", type=int, default=DEFAULT_PROMPTS, help="prompts per template/split")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="prompt sampling seed")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    directory = revision_dir(args.revision, args.dir)
    rows = evaluate_directory(directory, args.n, args.seed)
    if args.json:
        print(json.dumps([asdict(row) for row in rows], indent=2))
        return
    print(f"model: {directory}")
    print(
        tabulate(
            [[r.template, r.split, r.prompts, r.accuracy, r.mean_logit_diff] for r in rows],
            headers=["template", "split", "prompts", "accuracy", "mean logit diff"],
            floatfmt=".3f",
        )
    )


if __name__ == "__main__":
    main()
