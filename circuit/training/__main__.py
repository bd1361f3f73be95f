"""Retrain the bundled model from scratch and write the shipped layout.

``python -m circuit.training [--out DIR] [--seed 0] [--steps N] [--revisions 100,150,400]``

Writes the final model, its revisions, ``revisions.json``, ``training_log.json`` and the
model card (``README.md``, with freshly measured evaluation and attribution numbers) to
``--out`` (default: ``circuit/data/syllogism-neox``).
"""

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

from transformers import GPTNeoXForCausalLM

from circuit.training.card import write_card
from circuit.training.layout import (
    DEFAULT_DIR,
    Revision,
    revision_name,
    save_hf_dir,
    write_manifest,
)
from circuit.training.model_config import ModelShape, TrainConfig
from circuit.training.supervision import Supervision
from circuit.training.tokenizer import to_hf_tokenizer, train_tokenizer
from circuit.training.train import train


def _heads_text(supervision: Supervision | None) -> str:
    if supervision is None:
        return "none"
    heads = (supervision.key, supervision.query, supervision.mover)
    return ",".join("none" if head is None else "L{}H{}".format(*head) for head in heads)


def parse_supervision(text: str, weight: float) -> Supervision | None:
    """``"L0H0,L1H0,L2H0"`` (key, query, mover heads), ``"L0H0,L1H0,none"`` (no mover
    term) or ``"none"``."""
    if text.strip().lower() == "none":
        return None
    parts = [part.strip().upper() for part in text.split(",")]
    match = [re.fullmatch(r"L(\d+)H(\d+)", part) for part in parts]
    if len(parts) != 3 or not (match[0] and match[1] and (match[2] or parts[2] == "NONE")):
        raise SystemExit(
            "--supervise: expected three heads KEY,QUERY,MOVER like L0H0,L1H0,L2H0 (MOVER may "
            f"be 'none'), or 'none', got {text!r}"
        )
    key, query, mover = ((int(m.group(1)), int(m.group(2))) if m else None for m in match)
    assert key is not None
    assert query is not None
    return Supervision(key=key, query=query, mover=mover, weight=weight)


def parse_mover_steps(
    text: str | None, supervision: Supervision | None, default: int | None
) -> int | None:
    """``--mover-supervision-steps``: ``"N"``, ``"all"`` (``None``: every step), or not given:
    ``default`` when ``supervision`` has a mover term, else ``None`` (nothing to schedule)."""
    if text is None:
        return default if supervision is not None and supervision.mover is not None else None
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise SystemExit(
            f"--mover-supervision-steps: expected a number of steps or 'all', got {text!r}"
        ) from None


def parse_ints(text: str) -> tuple[int, ...]:
    """``"10,30,100"`` -> ``(10, 30, 100)``; empty items (and ``""``) are skipped."""
    return tuple(int(item) for item in text.split(",") if item.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; defaults reproduce the shipped model."""
    defaults = TrainConfig()
    shape = ModelShape()
    parser = argparse.ArgumentParser(prog="python -m circuit.training", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="output directory")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=defaults.weight_decay,
        help="AdamW weight decay on every trained weight matrix (biases and norms: none)",
    )
    parser.add_argument(
        "--qk-decay",
        type=float,
        default=defaults.qk_decay,
        help="decoupled decay of the query and key projections only (weights and biases; "
        "scaled by the learning rate, as AdamW's) in --qk-decay-layers",
    )
    parser.add_argument(
        "--qk-decay-layers",
        default=",".join(str(layer) for layer in defaults.qk_decay_layers),
        help="comma-separated layers whose queries and keys --qk-decay shrinks",
    )
    parser.add_argument(
        "--revisions",
        default=",".join(str(step) for step in defaults.revision_steps),
        help="comma-separated checkpoint steps saved under revisions/stepN",
    )
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--d-model", type=int, default=shape.d_model)
    parser.add_argument("--layers", type=int, default=shape.n_layers)
    parser.add_argument("--heads", type=int, default=shape.n_heads)
    parser.add_argument("--d-mlp", type=int, default=shape.d_mlp)
    parser.add_argument(
        "--random-opposite-rate",
        type=float,
        default=defaults.random_opposite_rate,
        help="share of training syllogisms whose opposite is another pair's descriptor",
    )
    parser.add_argument(
        "--no-extra-descriptors",
        action="store_true",
        help="train on the study descriptor pairs only",
    )
    parser.add_argument(
        "--corpus",
        default=defaults.corpus,
        choices=["v3", "v4", "v5", "v6", "v7"],
        help="v3: single-premise templates; v4, v5: mostly multi-premise prompts",
    )
    parser.add_argument(
        "--answer-weight",
        type=float,
        default=defaults.answer_weight,
        help="loss weight of each conclusion's answer token (others: 1)",
    )
    parser.add_argument("--max-positions", type=int, default=shape.max_positions)
    parser.add_argument(
        "--rotary-pct", type=float, default=shape.rotary_pct, help="share of head dims rotated"
    )
    parser.add_argument(
        "--supervise",
        metavar="KEY,QUERY,MOVER",
        default=_heads_text(defaults.supervision),
        help="supervise these three heads' attention, e.g. L0H0,L1H0,L2H0 "
        "(circuit.training.supervision); 'none': no supervision",
    )
    parser.add_argument(
        "--mover-supervision-steps",
        metavar="N|all",
        default=None,
        help="apply the supervised mover's attention term in the first N steps only, or "
        f"'all' (default: {defaults.mover_supervision_steps or 'all'} when --supervise names "
        "a mover)",
    )
    parser.add_argument(
        "--supervision-weight",
        type=float,
        default=(defaults.supervision or Supervision()).weight,
        help="weight of each supervised head's attention term in the loss",
    )
    parser.add_argument(
        "--freeze-embeddings",
        action=argparse.BooleanOptionalAction,
        default=defaults.freeze_embeddings,
        help="keep token embeddings at their random initialisation",
    )
    parser.add_argument(
        "--fresh-categories",
        action=argparse.BooleanOptionalAction,
        default=defaults.fresh_categories,
        help="in training, give each category token a fresh random embedding per sequence "
        "(needs --freeze-embeddings)",
    )
    parser.add_argument("--no-card", action="store_true", help="skip evaluation and the card")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train, save every revision and the final model, then measure and write the card."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    args = parse_args(argv)
    supervision = parse_supervision(args.supervise, args.supervision_weight)
    defaults = TrainConfig()
    revision_steps = parse_ints(args.revisions)
    try:
        shape = ModelShape(
            d_model=args.d_model,
            n_layers=args.layers,
            n_heads=args.heads,
            d_mlp=args.d_mlp,
            max_positions=args.max_positions,
            rotary_pct=args.rotary_pct,
        )
        config = TrainConfig(
            seed=args.seed,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            qk_decay=args.qk_decay,
            qk_decay_layers=parse_ints(args.qk_decay_layers),
            revision_steps=tuple(step for step in revision_steps if step < args.steps),
            eval_every=args.eval_every,
            threads=args.threads,
            random_opposite_rate=args.random_opposite_rate,
            extra_descriptors=not args.no_extra_descriptors,
            corpus=args.corpus,
            answer_weight=args.answer_weight,
            supervision=supervision,
            mover_supervision_steps=parse_mover_steps(
                args.mover_supervision_steps, supervision, defaults.mover_supervision_steps
            ),
            freeze_embeddings=args.freeze_embeddings,
            fresh_categories=args.fresh_categories,
            shape=shape,
        )
    except ValueError as error:  # a configuration the model or trainer cannot take
        raise SystemExit(f"python -m circuit.training: {error}") from None
    out: Path = args.out
    if (out / "revisions").exists():
        shutil.rmtree(out / "revisions")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = to_hf_tokenizer(train_tokenizer(config.vocab_size), shape.max_positions)
    revisions: list[Revision] = []

    def save_revision(step: int, model: GPTNeoXForCausalLM) -> None:
        name = revision_name(step)
        save_hf_dir(model, tokenizer, out / "revisions" / name)
        revisions.append(Revision(name, step, f"revisions/{name}"))

    result = train(config, tokenizer, on_revision=save_revision)
    final = revision_name(config.steps)
    save_hf_dir(result.model, tokenizer, out)
    revisions.append(Revision(final, config.steps, "."))
    write_manifest(out, revisions, final)
    log = {
        "config": config.to_dict(),
        "train_wall_seconds": result.wall_seconds,
        "total_wall_seconds": time.perf_counter() - started,
        "losses": result.losses,
        "evals": result.evals,
        "attention_losses": result.attention_losses,
    }
    (out / "training_log.json").write_text(json.dumps(log) + "\n")
    print(f"trained {config.steps} steps in {result.wall_seconds:.1f}s; wrote {out}")
    if not args.no_card:
        write_card(out)
        print(f"wrote {out / 'README.md'}")


if __name__ == "__main__":
    main()
