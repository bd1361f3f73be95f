"""Plain, slow references for path patching, written with bridge hooks only.

``study_path_patch`` transcribes the study's ``get_path_patch_head_to_heads`` (IOI paper,
appendix B; the notebook's ``patch_or_freeze_head_vectors`` and ``patch_head_input``): one
sender at a time, two full forwards per sender, one ``metric(logits)`` call per sender.
``direct_path_patch`` is the direct-edge variant with the pre-Q/K/V fork hooks that
``transformer_lens.patching.get_act_patch_direct_path`` uses, generalised to a set of receivers,
and ``tl_direct_path_patch`` is a thin wrapper around that library function (one receiver).

Everything here is deliberately unoptimised: the fast routines in ``circuit.paths`` are tested
for equality against these.
"""

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float, Int
from transformer_lens import patching
from transformer_lens.model_bridge import TransformerBridge

from circuit.heads import Head
from circuit.metrics import Metric


class HookDidNotFireError(RuntimeError):
    """A reference hook did not fire the expected number of times."""


def _receiver_names(receivers: Sequence[Head], receiver_input: str) -> list[str]:
    layers = sorted({layer for layer, _ in receivers})
    return [f"blocks.{layer}.attn.hook_{receiver_input}" for layer in layers]


def _layer_of(name: str) -> int:
    return int(name.split(".")[1])


def _nan_results(model: TransformerBridge, n_prompts: int, per_prompt: bool) -> torch.Tensor:
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    if per_prompt:
        shape = (n_prompts, *shape)
    return torch.full(shape, float("nan"))


def _store(results: torch.Tensor, layer: int, head: int, value: torch.Tensor, per_prompt: bool):
    if per_prompt:
        results[:, layer, head] = value.detach().float().cpu()
    else:
        results[layer, head] = value.detach().float().cpu()


@torch.no_grad()
def study_path_patch(
    model: TransformerBridge,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    metric: Metric,
    receivers: Sequence[Head],
    receiver_input: str,
    per_prompt: bool = False,
) -> Float[torch.Tensor, "n_layers n_heads"] | Float[torch.Tensor, "n n_layers n_heads"]:
    """The study's path patching, one sender at a time.

    Step 1 caches every head's ``hook_z`` on both datasets. Per sender (all heads in layers
    below the last receiver layer): step 2 runs the clean prompts with every ``hook_z`` frozen to
    its clean value except the sender's, taken from the corrupted run (MLPs recompute), and
    records the receiver layers' ``hook_{q,k,v}``; step 3 runs the clean prompts again with only
    the receiver heads' inputs replaced by those records, and evaluates ``metric(logits)``.
    Rows at or after the last receiver layer are NaN. ``metric`` must return a scalar, or ``[n]``
    when ``per_prompt``.
    """
    assert receiver_input in ("q", "k", "v")
    names = _receiver_names(receivers, receiver_input)
    last_layer = max(layer for layer, _ in receivers)
    n_layers = model.cfg.n_layers

    def is_z(name: str) -> bool:
        return name.endswith("attn.hook_z")

    _, corrupted_cache = model.run_with_cache(corrupted_tokens, names_filter=is_z)
    _, clean_cache = model.run_with_cache(clean_tokens, names_filter=is_z)
    results = _nan_results(model, clean_tokens.shape[0], per_prompt)

    for sender_layer in range(last_layer):
        for sender_head in range(model.cfg.n_heads):
            fired: dict[str, int] = {}

            def freeze(
                z: torch.Tensor, hook, sender=(sender_layer, sender_head), fired=fired
            ) -> torch.Tensor:
                fired[hook.name] = fired.get(hook.name, 0) + 1
                frozen = clean_cache[hook.name].clone()
                if _layer_of(hook.name) == sender[0]:
                    frozen[:, :, sender[1]] = corrupted_cache[hook.name][:, :, sender[1]]
                return frozen

            recorded: dict[str, torch.Tensor] = {}

            def record(act: torch.Tensor, hook, recorded=recorded) -> None:
                recorded[hook.name] = act.clone()

            model.run_with_hooks(
                clean_tokens,
                fwd_hooks=[(is_z, freeze), *[(name, record) for name in names]],
            )
            if len(fired) != n_layers or set(recorded) != set(names):
                raise HookDidNotFireError(
                    f"step 2: froze {len(fired)}/{n_layers} layers, recorded {sorted(recorded)}"
                )

            patched: list[str] = []

            def patch_input(
                act: torch.Tensor, hook, recorded=recorded, patched=patched
            ) -> torch.Tensor:
                heads = [head for layer, head in receivers if layer == _layer_of(hook.name)]
                out = act.clone()
                out[:, :, heads] = recorded[hook.name][:, :, heads]
                patched.append(hook.name)
                return out

            logits = model.run_with_hooks(
                clean_tokens, fwd_hooks=[(name, patch_input) for name in names]
            )
            if sorted(patched) != sorted(names):
                raise HookDidNotFireError(f"step 3: patched {patched}, expected {names}")
            _store(results, sender_layer, sender_head, metric(logits), per_prompt)
    return results


@contextmanager
def _split_qkv(model: TransformerBridge):
    saved = bool(getattr(model.cfg, "use_split_qkv_input", False))
    model.set_use_split_qkv_input(True)
    try:
        yield
    finally:
        model.set_use_split_qkv_input(saved)


@torch.no_grad()
def direct_path_patch(
    model: TransformerBridge,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    metric: Metric,
    receivers: Sequence[Head],
    receiver_input: str,
    per_prompt: bool = False,
) -> Float[torch.Tensor, "n_layers n_heads"] | Float[torch.Tensor, "n n_layers n_heads"]:
    """Direct-edge path patching into a set of receivers, as transformer_lens defines it.

    transformer_lens's orientation: run the *corrupted* prompts and add the sender's
    clean-minus-corrupted write ``(z_clean - z_corrupted) @ W_O`` to each receiver head's own
    pre-``ln1`` copy of the residual (``blocks.{l}.hook_{q,k,v}_input``), only for receivers in
    layers after the sender; every other reader sees the corrupted run. One forward per sender.
    """
    assert receiver_input in ("q", "k", "v")
    last_layer = max(layer for layer, _ in receivers)

    def is_z(name: str) -> bool:
        return name.endswith("attn.hook_z")

    _, clean_cache = model.run_with_cache(clean_tokens, names_filter=is_z)
    _, corrupted_cache = model.run_with_cache(corrupted_tokens, names_filter=is_z)
    results = _nan_results(model, clean_tokens.shape[0], per_prompt)
    with _split_qkv(model):
        for sender_layer in range(last_layer):
            for sender_head in range(model.cfg.n_heads):
                name = f"blocks.{sender_layer}.attn.hook_z"
                w_o = model.blocks[sender_layer].attn.W_O[sender_head]
                delta = (
                    clean_cache[name][:, :, sender_head] - corrupted_cache[name][:, :, sender_head]
                ) @ w_o
                targets = [(lay, head) for lay, head in receivers if lay > sender_layer]
                fired: list[int] = []

                def add_edge(
                    fork: torch.Tensor, hook, delta=delta, targets=targets, fired=fired
                ) -> torch.Tensor:
                    heads = [head for lay, head in targets if lay == _layer_of(hook.name)]
                    out = fork.clone()
                    out[:, :, heads] += delta[:, :, None]
                    fired.append(_layer_of(hook.name))
                    return out

                hook_names = sorted(
                    {f"blocks.{lay}.attn.hook_{receiver_input}_input" for lay, _ in targets}
                )
                logits = model.run_with_hooks(
                    corrupted_tokens, fwd_hooks=[(hook, add_edge) for hook in hook_names]
                )
                if sorted(fired) != sorted({lay for lay, _ in targets}):
                    raise HookDidNotFireError(f"direct: fired at {fired}, expected {hook_names}")
                _store(results, sender_layer, sender_head, metric(logits), per_prompt)
    return results


@torch.no_grad()
def tl_direct_path_patch(
    model: TransformerBridge,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    metric: Metric,
    receiver: Head,
    receiver_input: str,
) -> Float[torch.Tensor, "n_layers n_heads"]:
    """``get_act_patch_direct_path`` read the other way round: senders into one receiver.

    The library fixes one source and sweeps every later destination; this calls it once per
    sender and keeps the receiver's cell, giving ``[n_layers, n_heads]`` indexed by sender
    (NaN from the receiver's layer on). Costs ``senders x later heads`` forwards: small models.
    """
    _, clean_cache = model.run_with_cache(clean_tokens)
    _, corrupted_cache = model.run_with_cache(corrupted_tokens)
    layer, head = receiver
    results = torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    for sender_layer in range(layer):
        for sender_head in range(model.cfg.n_heads):
            sweep = patching.get_act_patch_direct_path(
                model,
                corrupted_tokens,
                clean_cache,
                corrupted_cache,
                metric,
                sender_layer,
                sender_head,
                component=receiver_input,
                verbose=False,
            )
            results[sender_layer, sender_head] = sweep[layer, head].float().cpu()
    return results
