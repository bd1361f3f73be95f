"""Head ablation, batched: many head masks per forward through :mod:`circuit.engine`.

A *mask* says which heads to ablate (bool ``[layer, head]``); an :class:`Ablation` says what an
ablated head's output ``z`` (``blocks.{l}.attn.hook_z``) is replaced with, and at which
positions:

* ``zero``: zero;
* ``mean``: the mean over the *source* prompts of that head's ``z`` at that position (the
  prompts share one template, so a position is a role);
* ``resample``: the ``z`` of another prompt of the source: with ``source="corrupted"`` the
  prompt's own corrupted twin (the counterfactual the clean-corrupted gap is measured
  against); with ``source="clean"`` a fixed derangement of the clean prompts (seeded).

The ablated run is the *clean* prompts' run; the result is the metric per mask (and per
prompt). :func:`ablate_heads` runs many masks as one batch (``rows = masks x prompts``), from
the clean run's residual stream at the first layer any mask of the batch ablates and from the
first position where some ablation value differs from the clean ``z`` (before it every
ablation is a no-op, and later positions cannot change earlier ones); only the final
position's two answer logits are unembedded. :func:`reference_ablate_heads` is the plain
version (one bridge forward with ``hook_z`` hooks per mask), which the tests and the benchmark
compare with.

Proof (the :mod:`circuit.guards` pattern): with ``verify=True`` (default) the mask listed
first, the mask with the largest effect and the one that ablates the most heads are re-run
through the bridge's own hooks on the first :data:`circuit.guards.VERIFY_PROMPTS` prompts:
every ablated layer's hook fires exactly once, the ablated sites hold the ablation values and
nothing else changes, the fast forward's ``z`` at those layers equals the hooked model's, and
the two metrics agree. A mask whose fast value
moved the metric but whose hooks changed nothing is a :class:`~circuit.guards.PatchNotApplied`.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

from circuit import guards
from circuit.engine.forward import (
    Edit,
    RunCache,
    answer_logits,
    first_difference,
    forward,
    run,
)
from circuit.engine.memory import DEFAULT_MEMORY_BUDGET, plan_for
from circuit.engine.weights import ForwardWeights, weights_of
from circuit.guards import PatchingError, PatchNotApplied
from circuit.metrics import LogitDiffMetric, reads_answer_logits_only

METHODS: tuple[str, ...] = ("mean", "resample", "zero")
SOURCES: tuple[str, ...] = ("clean", "corrupted")


@dataclass(frozen=True)
class Ablation:
    """What an ablated head's ``z`` becomes: ``method`` over ``source``, at ``positions``.

    ``positions``: token positions (shared by every prompt), or ``None`` for all of them.
    ``seed`` fixes the derangement of a clean-source resample.
    """

    method: str
    source: str = "clean"
    positions: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PatchingError(f"unknown ablation {self.method!r}; expected one of {METHODS}")
        if self.source not in SOURCES:
            raise PatchingError(f"unknown ablation source {self.source!r}; expected {SOURCES}")
        if self.positions is not None and not self.positions:
            raise PatchingError("positions must be None (all) or a non-empty tuple")

    def describe(self) -> str:
        where = "all positions" if self.positions is None else f"positions {list(self.positions)}"
        if self.method == "zero":
            return f"zero ablation at {where}"
        return f"{self.method} ablation from the {self.source} prompts at {where}"


@dataclass
class AblationStats:
    """Work a sweep did: functional forwards and batch rows."""

    forwards: int = 0
    rows: int = 0


def derangement(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation of ``range(n)`` with no fixed point (``n >= 2``)."""
    if n < 2:
        raise PatchingError(f"a clean-source resample needs at least 2 prompts, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    target = torch.empty(n, dtype=torch.long)
    target[order] = order.roll(-1)
    return target


def source_rows(ablation: Ablation, n: int) -> torch.Tensor:
    """Which source prompt each ablated prompt reads (resample only)."""
    if ablation.source == "corrupted":
        return torch.arange(n)
    return derangement(n, ablation.seed)


def _source_tokens(ablation: Ablation, clean_tokens, corrupted_tokens) -> torch.Tensor:
    return clean_tokens if ablation.source == "clean" else corrupted_tokens


def ablation_values(
    w: ForwardWeights,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    ablation: Ablation,
) -> Float[torch.Tensor, "layer rows seq head d_head"]:
    """The values ablated heads take (rows: ``1`` for zero and mean, ``n`` for resample)."""
    n, seq = clean_tokens.shape
    shape = (w.n_layers, 1, seq, w.n_heads, w.d_head)
    if ablation.method == "zero":
        return torch.zeros(shape, dtype=w.dtype, device=w.device)
    z = run(w, _source_tokens(ablation, clean_tokens, corrupted_tokens), keep={"z"}).z
    if ablation.method == "mean":
        return z.mean(dim=1, keepdim=True)
    return z[:, source_rows(ablation, n).to(z.device)]


def _position_mask(ablation: Ablation, seq: int, device) -> torch.Tensor:
    where = torch.zeros(seq, dtype=torch.bool, device=device)
    if ablation.positions is None:
        where[:] = True
    else:
        for pos in ablation.positions:
            if not 0 <= pos < seq:
                raise PatchingError(f"ablation position {pos} outside the {seq} positions")
            where[pos] = True
    return where


def _check_masks(masks: object, n_layers: int, n_heads: int) -> torch.Tensor:
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool:
        raise PatchingError("masks must be a bool tensor [masks, layer, head]")
    if masks.ndim != 3 or tuple(masks.shape[1:]) != (n_layers, n_heads) or not len(masks):
        raise PatchingError(
            f"masks must be [masks, {n_layers}, {n_heads}] with at least one mask, got "
            f"{tuple(masks.shape)}"
        )
    return masks


def _edits(
    masks: Bool[torch.Tensor, "v layer head"],
    values: torch.Tensor,
    where: torch.Tensor,
    n: int,
    start_layer: int,
    stop_layer: int,
) -> list[Edit]:
    """One ``z`` edit per layer some mask ablates (rows ``v x n``, variant-major).

    A layer every mask ablates wholly (all heads, all positions) gets ``mask=None``: the
    forward then skips that layer's attention (the values replace all of ``z``).
    """
    edits = []
    seq = where.shape[0]
    for layer in range(start_layer, stop_layer):
        heads = masks[:, layer]  # [v, H]
        if not bool(heads.any()):
            continue
        if bool(heads.all()) and bool(where.all()):
            edits.append(Edit(layer, "z", values[layer], None))
            continue
        mask = heads[:, None, None, :, None] & where[None, None, :, None, None]  # [v,1,S,H,1]
        mask = mask.expand(-1, n, seq, -1, -1).reshape(-1, seq, heads.shape[1], 1)
        edits.append(Edit(layer, "z", values[layer], mask))
    return edits


def _run_masks(
    w: ForwardWeights,
    masks: torch.Tensor,
    values: torch.Tensor,
    where: torch.Tensor,
    clean: RunCache,
    answers: torch.Tensor,
    start_pos: int,
    record: bool = False,
) -> tuple[Float[torch.Tensor, "v n 2"], dict]:
    """Answer logits of the clean run with each mask's heads ablated.

    Layers from the first ablated one up to the first where the masks differ run once for
    all masks (``n`` rows), and in a parallel-attention model so does that layer
    (:func:`_head_write_layer`); the rest runs as one batch of ``masks x n`` rows.
    """
    n = clean.tokens.shape[0]
    ablated = masks.any(dim=2).any(dim=0)
    if not bool(ablated.any()) or start_pos >= clean.tokens.shape[1]:
        logits = answer_logits(w, clean.resid_final[:, -1], answers)
        return logits.expand(len(masks), -1, -1), {}
    start_layer = int(ablated.nonzero()[0, 0])
    agree = (masks == masks[:1]).all(dim=2).all(dim=0)  # [L]
    shared = start_layer
    while shared < w.n_layers - 1 and bool(agree[shared]):
        shared += 1
    resid = clean.resid_pre[start_layer][:, start_pos:]
    records: dict = {}
    if shared > start_layer:
        edits = _edits(masks[:1], values, where, n, start_layer, shared)
        out = forward(
            w,
            resid,
            start_layer=start_layer,
            stop_layer=shared,
            start_pos=start_pos,
            prefix=clean,
            edits=edits,
            record=[(e.layer, "z") for e in edits] if record else [],
        )
        resid = out.resid
        records.update(out.records)
    if w.parallel and shared < w.n_layers - 1:
        resid, z = _head_write_layer(w, masks, values, where, clean, resid, shared, start_pos)
        if record:
            records[(shared, "z")] = z
        shared += 1
    edits = _edits(masks, values, where, n, shared, w.n_layers)
    out = forward(
        w,
        resid,
        start_layer=shared,
        start_pos=start_pos,
        prefix=clean,
        edits=edits,
        record=[(e.layer, "z") for e in edits] if record else [],
        answers=answers,
        final_only=True,
    )
    records.update(out.records)
    return out.answer_logits.view(len(masks), n, 2), records


def _head_write_layer(
    w: ForwardWeights,
    masks: torch.Tensor,
    values: torch.Tensor,
    where: torch.Tensor,
    clean: RunCache,
    resid: Float[torch.Tensor, "n pos d_model"],
    layer: int,
    start_pos: int,
) -> tuple[Float[torch.Tensor, "rows pos d_model"], torch.Tensor]:
    """The first layer where the masks differ, run once for all of them (parallel blocks).

    Its input is shared, so its ``q/k/v``, ``z`` and MLP are too (a parallel block's MLP reads
    ``resid_pre``); each mask then only changes ``resid_post`` by its ablated heads' output
    difference ``(value - z) @ W_O``. Returns the residual stream ``[masks x n, pos, D]`` and
    each mask's ablated ``z`` (rows ``masks x n``).
    """
    out = forward(
        w,
        resid,
        start_layer=layer,
        stop_layer=layer + 1,
        start_pos=start_pos,
        prefix=clean,
        record=[(layer, "z")],
    )
    z = out.records[(layer, "z")]  # [n, pos, H, dh]
    value = values[layer][:, start_pos:].to(z)
    site = masks[:, layer][:, None, :] & where[start_pos:][None, :, None]  # [v, pos, H]
    written = torch.einsum("nphe,hed->nphd", value - z, w.W_O[layer])  # [n, pos, H, D]
    delta = torch.einsum("vph,nphd->vnpd", site.to(z.dtype), written)
    ablated = torch.where(site[:, None, :, :, None], value[None], z[None]).flatten(0, 1)
    return delta.add_(out.resid[None]).flatten(0, 1), ablated


def ablate_heads(
    model: torch.nn.Module,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    metric: LogitDiffMetric,
    masks: Bool[torch.Tensor, "masks layer head"],
    ablation: Ablation,
    per_prompt: bool = True,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    verify: bool = True,
    stats: AblationStats | None = None,
) -> torch.Tensor:
    """``metric`` of the clean run with each mask's heads ablated: ``[n, masks]`` per prompt,
    else ``[masks]``. ``corrupted_tokens`` are the source of a ``corrupted`` ablation (and
    must be given, aligned with ``clean_tokens``, in any case)."""
    guards.check_model(model, "ablate_heads")
    if not reads_answer_logits_only(metric):
        raise PatchingError("ablate_heads: metric must be a LogitDiffMetric")
    if not isinstance(ablation, Ablation):
        raise PatchingError(f"ablation must be an Ablation, got {type(ablation).__name__}")
    guards.check_flag(per_prompt, "per_prompt")
    guards.check_flag(verify, "verify")
    guards.check_positive_int(memory_budget, "memory_budget")
    stats = stats if stats is not None else AblationStats()
    with torch.inference_mode():
        w = weights_of(model)
        guards.check_tokens(clean_tokens, corrupted_tokens, w.n_ctx, w.d_vocab)
        n, seq = clean_tokens.shape
        guards.check_answers(metric.answers, n, w.d_vocab, "metric answers")
        masks = _check_masks(masks, w.n_layers, w.n_heads).to(w.device)
        clean_tokens, corrupted_tokens = clean_tokens.to(w.device), corrupted_tokens.to(w.device)
        values = ablation_values(w, clean_tokens, corrupted_tokens, ablation)
        where = _position_mask(ablation, seq, w.device)
        plan = plan_for(w, n, seq, len(masks), memory_budget)
        per = metric.with_per_prompt(True)
        parts = []
        for first in range(0, n, plan.prompts):
            rows = slice(first, first + plan.prompts)
            clean = run(w, clean_tokens[rows], keep={"k", "v", "z"})
            chunk_values = values if values.shape[1] == 1 else values[:, rows]
            start_pos = first_difference(chunk_values, clean.z, 2, where)
            answers = metric.answers[rows].to(w.device)
            out = []
            for lo in range(0, len(masks), plan.variants):
                chunk = masks[lo : lo + plan.variants]
                logits, _ = _run_masks(w, chunk, chunk_values, where, clean, answers, start_pos)
                stats.forwards += 1
                stats.rows += logits.shape[0] * logits.shape[1]
                out.append(per.from_answer_logits(logits))
            chunk_result = torch.cat(out)  # [masks, chunk n]
            guards.check_finite(
                chunk_result, lambda i: f"ablation mask {i[0]}", True, first, chunk_result.shape[1]
            )
            if verify and first == 0:
                unablated = per.from_answer_logits(
                    answer_logits(w, clean.resid_final[:, -1], answers)[None]
                )[0]
                _verify(
                    model, w, masks, chunk_values, where, clean, answers, per, chunk_result,
                    unablated, start_pos,
                )  # fmt: skip
            parts.append(chunk_result)
        result = torch.cat(parts, dim=1)
    result = result.clone()
    return result.T.contiguous() if per_prompt else result.mean(dim=1)


def _tolerance(w: ForwardWeights) -> float:
    return 1e-4 if w.bytes_per_element >= 4 else 1e-2


def _metric_scale(metric: LogitDiffMetric) -> float:
    """How much the metric magnifies a logit-level rounding difference: a normalised metric
    divides by the clean-corrupted gap, which is about 0.01 logits on random weights, so a
    float32 difference of 1e-6 logits there reads as 1e-4 of the metric."""
    if not metric.normalised:
        return 1.0
    gap = abs(float(metric.clean_baseline) - float(metric.corrupted_baseline))
    return max(1.0, 1.0 / gap)


def _verify(model, w, masks, values, where, clean, answers, metric, result, unablated, start_pos):
    """Re-run the first mask, the largest-effect mask and the mask that ablates the most
    heads through the bridge's hooks (the last one catches a sweep whose edits all failed)."""
    effect = (result.mean(dim=1) - unablated.mean()).abs().nan_to_num(0)
    widest = int(masks.flatten(1).sum(dim=1).argmax())
    chosen = sorted({0, int(effect.argmax()), widest})
    for index in chosen:
        verify_mask(
            model, w, masks[index], values, where, clean, answers, metric,
            result[index], unablated, start_pos, f"ablation mask {index}",
        )  # fmt: skip


def verify_mask(
    model: torch.nn.Module,
    w: ForwardWeights,
    mask: Bool[torch.Tensor, "layer head"],
    values: torch.Tensor,
    where: torch.Tensor,
    clean: RunCache,
    answers: torch.Tensor,
    metric: LogitDiffMetric,
    fast_value: torch.Tensor,
    unablated: torch.Tensor,
    start_pos: int,
    label: str,
) -> None:
    """Prove one mask's ablation took effect and equals the hooked bridge's; raise otherwise."""
    rows = min(int(clean.tokens.shape[0]), guards.VERIFY_PROMPTS)
    atol = _tolerance(w)
    layers = [int(layer) for layer in mask.any(dim=1).nonzero().flatten()]
    fired: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {layer: [] for layer in layers}

    def hook_for(layer: int):
        site = (mask[layer][None, None, :, None] & where[None, :, None, None]).to(
            clean.tokens.device
        )
        value = values[layer][:rows] if values.shape[1] > 1 else values[layer]

        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
            before = activation.detach().clone()
            after = torch.where(site, value.to(activation), activation)
            fired[layer].append((before, after.detach().clone()))
            return after

        return hook

    hooks = [(f"blocks.{layer}.attn.hook_z", hook_for(layer)) for layer in layers]
    logits = model.run_with_hooks(clean.tokens[:rows], fwd_hooks=hooks)
    changed = False
    for layer in layers:
        name = f"{label}: blocks.{layer}.attn.hook_z"
        if len(fired[layer]) != 1:
            raise PatchNotApplied(f"{name} fired {len(fired[layer])} times, expected once")
        before, after = fired[layer][0]
        site = (mask[layer][None, None, :, None] & where[None, :, None, None]).expand_as(after)
        if not torch.equal(after[~site], before[~site]):
            raise PatchNotApplied(f"{name}: activations outside the ablated heads changed")
        changed |= not torch.equal(after, before)
    value = metric.for_prompts(rows)(logits)
    want = fast_value[:rows].to(value)
    atol = atol * _metric_scale(metric)
    moved = bool((want - unablated[:rows].to(value)).abs().max() > atol) if layers else False
    if moved and not changed:
        raise PatchNotApplied(f"{label}: the hooks changed nothing, yet the metric moved")
    if not torch.allclose(value, want, atol=atol, rtol=1e-4):
        raise PatchNotApplied(
            f"{label}: the fast value {want.tolist()} differs from the hooked model's "
            f"{value.tolist()}"
        )
    if not layers:
        return
    head_rows = RunCache(
        tokens=clean.tokens[:rows],
        resid_pre=clean.resid_pre[:, :rows],
        q=None,
        k=clean.k[:, :rows],
        v=clean.v[:, :rows],
        pattern=None,
        z=clean.z[:, :rows],
        attn_out=None,
        mlp_out=None,
        resid_final=clean.resid_final[:rows],
        scale_final=clean.scale_final[:rows],
    )
    chunk_values = values if values.shape[1] == 1 else values[:, :rows]
    _, records = _run_masks(
        w, mask[None], chunk_values, where, head_rows, answers[:rows], start_pos, record=True
    )
    for layer in layers:
        recorded = records[(layer, "z")]
        _, after = fired[layer][0]
        after = after[:, after.shape[1] - recorded.shape[1] :].to(recorded)
        if not torch.allclose(recorded, after, atol=atol, rtol=0):
            raise PatchNotApplied(
                f"{label}: the fast forward's z at layer {layer} differs from the hooked model's "
                f"(max {float((recorded - after).abs().max()):.3g})"
            )


@torch.no_grad()
def reference_ablate_heads(
    model: torch.nn.Module,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    metric: LogitDiffMetric,
    masks: Sequence[Bool[torch.Tensor, "layer head"]] | torch.Tensor,
    ablation: Ablation,
) -> Float[torch.Tensor, "n masks"]:
    """The plain version: per mask one bridge forward with ``hook_z`` hooks (bridge only).

    Ablation values come from the bridge's own cache of ``hook_z`` on the source prompts.
    """
    n_layers = int(model.cfg.n_layers)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    source = clean_tokens if ablation.source == "clean" else corrupted_tokens
    _, cache = model.run_with_cache(source, names_filter=names.__contains__)
    stacked = torch.stack([cache[name] for name in names])  # [L, n, S, H, dh]
    if ablation.method == "zero":
        values = torch.zeros_like(stacked[:, :1])
    elif ablation.method == "mean":
        values = stacked.mean(dim=1, keepdim=True)
    else:
        values = stacked[:, source_rows(ablation, clean_tokens.shape[0]).to(stacked.device)]
    seq = clean_tokens.shape[1]
    where = _position_mask(ablation, seq, stacked.device)
    per = metric.with_per_prompt(True)
    out = []
    for mask in masks:
        hooks = []
        for layer in range(n_layers):
            if not bool(mask[layer].any()):
                continue
            site = mask[layer].to(stacked.device)[None, None, :, None] & where[None, :, None, None]

            def hook(act, hook, site=site, value=values[layer]):
                return torch.where(site, value.to(act), act)

            hooks.append((names[layer], hook))
        logits = model.run_with_hooks(clean_tokens, fwd_hooks=hooks)
        out.append(per(logits))
    return torch.stack(out, dim=1)
