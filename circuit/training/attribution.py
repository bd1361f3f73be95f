"""Direct logit attribution of the bundled model's heads, through TransformerBridge.

Used to check, before shipping, that a few heads carry most of the logit difference at the
final position (the circuit the claims are about) and to report them in the model card.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerBase

from circuit.attribution import head_writes, logit_attribution
from circuit.training.corpus import Syllogism
from circuit.training.metrics import encode_prompts


@dataclass(frozen=True)
class HeadAttribution:
    """One head's mean direct contribution to the logit difference at the final position.

    ``share`` is ``logit_diff / total`` where ``total`` is the mean logit difference of the
    model; ``attn_descriptor`` / ``attn_opposite`` are the mean attention from the final
    position to the first token of the descriptor / of the opposite.
    """

    layer: int
    head: int
    logit_diff: float
    share: float
    attn_descriptor: float
    attn_opposite: float

    @property
    def name(self) -> str:
        """``L{layer}H{head}``."""
        return f"L{self.layer}H{self.head}"


def load_bridge(directory: Path) -> TransformerBridge:
    """Boot a saved HF directory as a TransformerBridge in compatibility mode, on CPU."""
    bridge = TransformerBridge.boot_transformers(str(directory), device="cpu")
    bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge


def first_position(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per row of ``tokens [n, T]``, the first position holding ``ids[row]``; ``[n]``."""
    hits = tokens == ids.unsqueeze(1)
    return hits.float().argmax(dim=1)


@torch.no_grad()
def head_attributions(
    bridge: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    syllogisms: Sequence[Syllogism],
) -> tuple[float, list[HeadAttribution]]:
    """(mean logit diff, per-head attributions sorted by contribution, largest first).

    Per-head DLA and attention come from :func:`circuit.attribution.head_writes` (the
    project's one routine). All prompts must have the same token length (one template, one
    word split).
    """
    tokens, final, answers = encode_prompts(tokenizer, syllogisms)
    if int(final.min()) != int(final.max()):
        raise ValueError("head_attributions needs prompts of equal token length")
    writes = head_writes(bridge, tokens, answers)
    total = float(writes.logit_diff.mean())
    contributions = writes.dla.mean(0).flatten()  # [L*H]
    attention = writes.attention.flatten(1, 2).cpu()  # [n, L*H, pos]
    rows = torch.arange(tokens.shape[0])
    descriptor = attention[rows, :, first_position(tokens, answers[:, 0])].mean(0)  # [L*H]
    opposite = attention[rows, :, first_position(tokens, answers[:, 1])].mean(0)
    n_heads = int(bridge.cfg.n_heads)
    result = []
    for index, value in enumerate(contributions.tolist()):
        layer, head = divmod(index, n_heads)
        result.append(
            HeadAttribution(
                layer=layer,
                head=head,
                logit_diff=value,
                share=value / total,
                attn_descriptor=float(descriptor[index]),
                attn_opposite=float(opposite[index]),
            )
        )
    result.sort(key=lambda h: h.logit_diff, reverse=True)
    return total, result


@torch.no_grad()
def component_attributions(
    bridge: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    syllogisms: Sequence[Syllogism],
) -> dict[str, float]:
    """Mean direct effect on the logit diff of each residual component (embed, attn, mlp).

    Components are labelled as ``cache.decompose_resid`` labels them (``embed``,
    ``{l}_attn_out``, ``{l}_mlp_out``; attention includes its bias) at the final position,
    final layer norm applied, from :func:`circuit.attribution.logit_attribution`; they sum
    to the mean logit diff up to the unembedding bias.
    """
    tokens, _, answers = encode_prompts(tokenizer, syllogisms)
    attribution = logit_attribution(bridge, tokens, answers)
    values = {"embed": float(attribution.embed.mean())}
    attn, mlp = attribution.attn.mean(0).tolist(), attribution.mlp.mean(0).tolist()
    for layer, (a, m) in enumerate(zip(attn, mlp, strict=True)):
        values[f"{layer}_attn_out"] = a
        values[f"{layer}_mlp_out"] = m
    return values


@torch.no_grad()
def ablated_logit_diff(
    bridge: TransformerBridge,
    tokenizer: PreTrainedTokenizerBase,
    syllogisms: Sequence[Syllogism],
    heads: Sequence[tuple[int, int]],
) -> float:
    """Mean final-position logit diff with the given heads' outputs zero-ablated everywhere.

    This is the heads' total effect (direct plus through later layers), as opposed to
    their direct logit attribution.
    """
    tokens, _, answers = encode_prompts(tokenizer, syllogisms)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def make_hook(indices: list[int]) -> Callable[[torch.Tensor, object], torch.Tensor]:
        def hook(z: torch.Tensor, hook: object) -> torch.Tensor:
            z[:, :, indices] = 0.0
            return z

        return hook

    fwd_hooks = [(f"blocks.{layer}.attn.hook_z", make_hook(h)) for layer, h in by_layer.items()]
    logits = bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks)[:, -1]
    return float((logits.gather(1, answers[:, :1]) - logits.gather(1, answers[:, 1:])).mean())


def main(argv: list[str] | None = None) -> None:
    """``python -m circuit.training.attribution [--revision stepN] [--split heldout]``."""
    import argparse
    import os

    from tabulate import tabulate
    from transformers import AutoTokenizer

    from circuit.training.corpus import evaluation_prompts
    from circuit.training.layout import DEFAULT_DIR, revision_dir

    parser = argparse.ArgumentParser(prog="python -m circuit.training.attribution")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--split", default="heldout", choices=["train", "heldout"])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--template", default="study", help="evaluation template (corpus.py)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    directory = revision_dir(args.revision, args.dir)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    prompts = evaluation_prompts(args.template, args.split, args.n, seed=0)
    bridge = load_bridge(directory)
    total, heads = head_attributions(bridge, tokenizer, prompts)
    print(f"model: {directory}; {args.template} template, {args.split} words, {args.n} prompts")
    heads_total = sum(h.logit_diff for h in heads)
    print(f"mean logit diff {total:.3f}; sum of all heads' direct effects {heads_total:.3f}")
    print(
        tabulate(
            [
                [h.name, h.logit_diff, h.share, h.attn_descriptor, h.attn_opposite]
                for h in heads[: args.top]
            ],
            headers=["head", "DLA logit diff", "share", "attn->descriptor", "attn->opposite"],
            floatfmt=".3f",
        )
    )
    components = component_attributions(bridge, tokenizer, prompts)
    print(tabulate(list(components.items()), headers=["component", "DLA"], floatfmt=".3f"))
    for k in (1, 2, 3):
        top = [(h.layer, h.head) for h in heads[:k]]
        left = ablated_logit_diff(bridge, tokenizer, prompts, top)
        names = ", ".join(h.name for h in heads[:k])
        print(f"zero-ablating {names}: logit diff {left:.3f} ({1 - left / total:.0%} removed)")


if __name__ == "__main__":
    main()
