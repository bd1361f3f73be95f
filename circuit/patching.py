"""Activation patching, equal to ``transformer_lens.patching`` and much faster.

Semantics, shapes and orientation follow ``transformer_lens.patching``: run the *corrupted*
prompts, patch in the *clean* activation at one site, report the metric of the patched logits.

=========================  ==============================================  =====================
call                       reference                                       result shape
=========================  ==============================================  =====================
``patch_heads(.., "z")``   ``get_act_patch_attn_head_out_all_pos``         ``[layer, head]``
``.., "q"/"k"/"v"``        ``get_act_patch_attn_head_{q,k,v}_all_pos``     ``[layer, head]``
``.., "pattern"``          ``get_act_patch_attn_head_pattern_all_pos``     ``[layer, head]``
``by_position=True``       ``get_act_patch_attn_head_{out,q,k,v}_by_pos``  ``[layer, pos, head]``
``"pattern"``, by position ``get_act_patch_attn_head_pattern_by_pos``      ``[layer, head, pos]``
``patch_resid``            ``get_act_patch_resid_pre``                     ``[layer, pos]``
=========================  ==============================================  =====================

(the library's pattern-by-position sweep is indexed ``(layer, head_index, dest_pos)``, so its
result is ``[layer, head, pos]``; we keep that orientation.) ``per_prompt=True`` adds a leading
``[n]`` dim of per-prompt values (the library's ``reduce="none"``, moved to the front).

``metric`` is a :class:`circuit.metrics.LogitDiffMetric` (only the final position's two answer
logits are computed, and the metric is applied to all cells at once) or any callable from logits
``[n, seq, vocab]`` to a scalar (``[n]`` when ``per_prompt``). A callable that reads only the
final position (:func:`circuit.metrics.metric_access` probes it on the clean and corrupted runs)
is called with that position's logits alone, ``[n, 1, vocab]``, and takes the same fast path;
any other callable gets full logits. Callables run once per batch of cells (``vmap`` over the
cells, else a loop; :class:`circuit.metrics.VariantCalls`). See
:data:`circuit.metrics.FINAL_ONLY_CONTRACT`.

Speed: the patched cells of one layer (and one position) run as one batched
forward of :mod:`circuit.engine` (``rows = heads x prompts``, chunked by ``memory_budget``),
starting from the corrupted run's residual stream at the patched layer; by-position patches
recompute only positions ``>= pos`` (earlier keys and values come from the corrupted run); the
last layer computes only the final position; head-output (``z``) patches of a parallel-attention
model skip the patched layer (its MLP reads the unchanged ``resid_pre``) and add the head's
output difference to the residual stream directly; ``q``/``k``/``v``/``pattern`` patches of such a
model recompute only the patched head at the patched layer (only query row ``pos`` for ``q`` and
``pattern`` by position) and add its output difference the same way. All-position patches start
at the first position where the clean activation differs from the corrupted one (before it the
patch is a no-op). Nothing synchronises per cell (one check per layer finds that position).

Proof: with ``verify=True`` (default) the cell with the largest effect is
re-run through the model's own hooks and :func:`circuit.guards.verify_cell` proves the hook fired,
changed exactly the intended site, and gives the value the fast routine reported.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

from circuit import guards
from circuit.engine.forward import (
    Edit,
    ForwardOutput,
    RunCache,
    answer_logits,
    final_logits,
    first_difference,
    forward,
    forward_after_write,
    logits_of,
    run_pair,
)
from circuit.engine.kernels import attend
from circuit.engine.lowrank import NextBlock, block_after_head_write, prepare_next_block
from circuit.engine.memory import DEFAULT_MEMORY_BUDGET, plan_for
from circuit.engine.weights import ForwardWeights, weights_of
from circuit.guards import Cell, PatchingError
from circuit.metrics import (
    LogitDiffMetric,
    Metric,
    MetricError,
    VariantCalls,
    metric_access,
    reads_answer_logits_only,
    wrong_guess,
)

LIBRARY_EQUIVALENTS: dict[tuple[str, bool], str] = {
    ("z", False): "get_act_patch_attn_head_out_all_pos",
    ("q", False): "get_act_patch_attn_head_q_all_pos",
    ("k", False): "get_act_patch_attn_head_k_all_pos",
    ("v", False): "get_act_patch_attn_head_v_all_pos",
    ("pattern", False): "get_act_patch_attn_head_pattern_all_pos",
    ("z", True): "get_act_patch_attn_head_out_by_pos",
    ("q", True): "get_act_patch_attn_head_q_by_pos",
    ("k", True): "get_act_patch_attn_head_k_by_pos",
    ("v", True): "get_act_patch_attn_head_v_by_pos",
    ("pattern", True): "get_act_patch_attn_head_pattern_by_pos",
}
"""``(component, by_position)`` -> the ``transformer_lens.patching`` function ``patch_heads``
equals (the references of the tests and benchmarks)."""


def library_equivalent(component: str, by_position: bool) -> Callable:
    """The ``transformer_lens.patching`` function equal to ``patch_heads(.., component,
    by_position)`` (arguments ``model, corrupted_tokens, clean_cache, metric``)."""
    from transformer_lens import patching as library

    return getattr(library, LIBRARY_EQUIVALENTS[(component, by_position)])


@dataclass
class SweepStats:
    """Work a sweep did: functional forwards, batch rows and rows x layers x positions run."""

    forwards: int = 0
    rows: int = 0
    row_layer_positions: int = 0
    metric_reads: str = ""
    """What the metric was judged to read (:func:`circuit.metrics.metric_access`) and why."""
    metric_reason: str = ""
    metric_calls: str = ""
    """How a callable metric ran: ``vmap`` over the variants, or a loop and why."""

    def count(self, rows: int, layers: int, positions: int) -> None:
        self.forwards += 1
        self.rows += rows
        self.row_layer_positions += rows * layers * positions


class _Evaluator:
    """Turns chunks of patched forwards into metric values ``[variants, n]`` or ``[variants]``.

    What the forwards compute follows :func:`circuit.metrics.metric_access` (the one decision):
    a :class:`LogitDiffMetric` gets the answer logits and is always evaluated per prompt
    (``per_prompt`` is then True; the sweep takes the mean at the end), so that the guards can
    check a few prompts' values; a callable that reads only the final position gets the final
    position's logits ``[n, 1, vocab]`` (the last layer computes that position alone); any other
    callable gets full logits. Callables run once per chunk of variants
    (:class:`circuit.metrics.VariantCalls`: ``vmap`` over the variant axis, else a loop).
    """

    def __init__(
        self, w: ForwardWeights, metric: Metric, per_prompt: bool, base: RunCache, clean: RunCache
    ) -> None:
        self.n = int(base.tokens.shape[0])
        self.w = w
        self.base_logits = None
        if reads_answer_logits_only(metric):
            self.access = metric_access(metric)
            if metric.answers.shape[0] != self.n:
                raise PatchingError(
                    f"the metric's answers are for {metric.answers.shape[0]} prompts, the tokens "
                    f"hold {self.n}"
                )
            self.metric = metric.with_per_prompt(True)
            self.answers = metric.answers.to(w.device)
        elif callable(metric):
            finals = tuple(final_logits(w, run.resid_final[:, -1]) for run in (clean, base))
            self.access = metric_access(metric, finals, int(base.tokens.shape[1]))
            del finals
            if not self.access.final_only:
                self.base_logits = logits_of(w, base)
            self.metric = metric
            self.answers = None
        else:
            raise PatchingError(f"metric must be callable, got {type(metric).__name__}")
        self.fast = self.access.answers_only
        self.final_only = self.access.final_only
        self.per_prompt = per_prompt or self.fast
        self.calls = None if self.fast else VariantCalls(self.metric, self._check)

    def _check(self, value: object) -> torch.Tensor:
        return guards.check_metric_output(value, self.per_prompt, self.n)

    def forward_kwargs(self) -> dict:
        if self.fast:
            return {"answers": self.answers, "final_only": True}
        if self.final_only:
            return {"final_only": True}  # the readout is :meth:`final_logits` of ``out.resid``
        return {"full_logits": True}

    def finish(self, resid_final: Float[torch.Tensor, "rows pos d_model"]) -> ForwardOutput:
        """The output of a run that ended at the last layer with ``resid_final`` (final-position
        metrics only: the last position is read)."""
        if self.fast:
            return ForwardOutput(
                resid=resid_final,
                answer_logits=answer_logits(self.w, resid_final[:, -1], self.answers),
            )
        return ForwardOutput(resid=resid_final)

    def final_logits(self, resid: Float[torch.Tensor, "rows pos d_model"]) -> torch.Tensor:
        """The final position's logits ``[rows, 1, vocab]`` (only the columns the metric reads,
        the others NaN, when :func:`circuit.metrics.metric_access` found them)."""
        return final_logits(self.w, resid[:, -1], self.access.columns)

    def values(self, out: ForwardOutput, start_pos: int) -> torch.Tensor:
        """Metric values of ``out`` (rows ``variants x n``)."""
        if self.fast:
            return self.from_answer_logits(out.answer_logits)
        if self.final_only:
            return self.calls(self.final_logits(out.resid).view(-1, self.n, 1, self.w.d_vocab))
        logits = out.logits.view(-1, self.n, *out.logits.shape[1:])
        if start_pos > 0:
            prefix = self.base_logits[:, :start_pos].to(logits.dtype)
            prefix = prefix.expand(logits.shape[0], *prefix.shape)
            logits = torch.cat([prefix, logits], dim=2)
        return self.calls(logits)

    def from_answer_logits(self, logits: Float[torch.Tensor, "rows 2"]) -> torch.Tensor:
        return self.metric.from_answer_logits(logits.view(-1, self.n, 2))

    def call(self, logits: Float[torch.Tensor, "n seq vocab"]) -> torch.Tensor:
        return self._check(self.metric(logits))

    @property
    def verify_prompts(self) -> int:
        """How many (leading) prompts the guards re-run through the hooked model.

        :data:`circuit.guards.VERIFY_PROMPTS` with a per-prompt metric; every prompt with a
        generic callable, whose value need not decompose over prompts.
        """
        return min(self.n, guards.VERIFY_PROMPTS) if self.fast else self.n

    def bridge_value(self, logits: Float[torch.Tensor, "m seq vocab"]) -> torch.Tensor:
        """The metric of the hooked model's full logits for the leading ``m`` prompts (a
        callable always gets full logits here: this is what proves a final-only guess)."""
        if self.fast:
            return self.metric.for_prompts(logits.shape[0])(logits)
        return self.call(logits)

    def unpatched(self, w: ForwardWeights, base: RunCache) -> torch.Tensor:
        """The metric of the unpatched base run, ``[1, n]`` or ``[1]``."""
        if self.fast:
            return self.from_answer_logits(answer_logits(w, base.resid_final[:, -1], self.answers))
        if self.final_only:
            return self.call(self.final_logits(base.resid_final))[None]
        return self.call(logits_of(w, base))[None]


def _head_edit(
    component: str,
    layer: int,
    heads: Int[torch.Tensor, " variants"],
    pos: int | None,
    clean: RunCache,
    n: int,
) -> Edit:
    """One edit patching, in variant ``v``, head ``heads[v]`` (at ``pos`` or everywhere)."""
    value = clean.activation(component, layer)
    n_heads = value.shape[1] if component == "pattern" else value.shape[2]
    one_hot = torch.nn.functional.one_hot(heads, n_heads).bool().repeat_interleave(n, dim=0)
    seq = value.shape[2] if component == "pattern" else value.shape[1]
    if component == "pattern":
        mask = one_hot[:, :, None, None].expand(-1, -1, seq, 1).clone()
        if pos is not None:
            mask[:, :, torch.arange(seq) != pos] = False
    else:
        mask = one_hot[:, None, :, None].expand(-1, seq, -1, 1).clone()
        if pos is not None:
            mask[:, torch.arange(seq) != pos] = False
    return Edit(layer, component, value, mask.to(value.device))


def _sweep_layer(
    w: ForwardWeights,
    component: str,
    layer: int,
    pos: int | None,
    clean: RunCache,
    base: RunCache,
    evaluator: _Evaluator,
    chunk: int,
    stats: SweepStats,
    first_diff: int = 0,
    next_block: NextBlock | None = None,
    wanted: list[int] | None = None,
) -> torch.Tensor:
    """Values of patching every head at ``layer`` (and ``pos``): ``[head, n]`` or ``[head]``.

    ``chunk`` heads (variants) run per forward. ``first_diff``: the first (query) position at
    which the clean activation differs from the corrupted one
    (:func:`circuit.engine.forward.first_difference`); the head shortcuts recompute nothing
    before it. ``wanted``: patch only these heads (the others' values are NaN).
    """
    n, seq = base.tokens.shape
    start_pos = 0 if pos is None else pos
    shortcut = _shortcut(w, component, evaluator, base)
    first_diff = min(first_diff, seq - 1)
    swept = list(range(w.n_heads)) if wanted is None else wanted
    parts = []
    for first in range(0, len(swept), chunk):
        heads = torch.tensor(swept[first : first + chunk], dtype=torch.long, device=w.device)
        rows = len(heads) * n
        if shortcut and component == "z":
            out = _z_shortcut(w, layer, heads, pos, clean, base, evaluator, first_diff, next_block)
            layers = w.n_layers - layer - 1
            start_pos = first_diff if pos is None else pos
        elif shortcut:
            out = _head_shortcut(
                w, component, layer, heads, pos, clean, base, evaluator, first_diff, next_block
            )
            layers = w.n_layers - layer - 1
            start_pos = first_diff if pos is None else pos
        else:
            resid = base.resid_pre[layer][:, start_pos:]
            edit = _head_edit(component, layer, heads, pos, clean, n)
            out = forward(
                w,
                resid,
                start_layer=layer,
                start_pos=start_pos,
                prefix=base,
                edits=[edit],
                **evaluator.forward_kwargs(),
            )
            layers = w.n_layers - layer
        stats.count(rows, layers, seq - start_pos)
        parts.append(evaluator.values(out, start_pos))
    if wanted is None:
        return torch.cat(parts)
    tail = (n,) if evaluator.per_prompt else ()
    full = torch.full((w.n_heads, *tail), float("nan"), dtype=w.dtype, device=w.device)
    if parts:
        values = torch.cat(parts)
        full = full.to(values.dtype)
        full[torch.tensor(wanted, dtype=torch.long, device=full.device)] = values
    return full


def _shortcut(w: ForwardWeights, component: str, evaluator: _Evaluator, base: RunCache) -> bool:
    """Whether head patches skip the patched block (parallel model, final-position metric)."""
    return w.parallel and evaluator.final_only and (component == "z" or base.q is not None)


def _z_shortcut(
    w: ForwardWeights,
    layer: int,
    heads: Int[torch.Tensor, " variants"],
    pos: int | None,
    clean: RunCache,
    base: RunCache,
    evaluator: _Evaluator,
    first_diff: int = 0,
    next_block: NextBlock | None = None,
) -> ForwardOutput:
    """Patch head outputs by adding ``(z_clean - z_corrupted) @ W_O`` to ``resid_post``.

    In a parallel block the MLP reads ``resid_pre``, which a head patch does not change, so the
    patched layer's output differs from the corrupted run's by the head's output difference only.
    ``pos`` patches that one position (by-position sweep); ``None`` patches every position.
    """
    start_pos = first_diff if pos is None else pos
    z_diff = clean.z[layer][:, start_pos:, heads] - base.z[layer][:, start_pos:, heads]
    if pos is not None:
        z_diff[:, 1:] = 0
    return _continue_after(w, base, layer, heads, z_diff, start_pos, evaluator, next_block)


def _continue_after(
    w: ForwardWeights,
    base: RunCache,
    layer: int,
    heads: Int[torch.Tensor, " variants"],
    z_diff: Float[torch.Tensor, "n pos variants d_head"],
    start_pos: int,
    evaluator: _Evaluator,
    next_block: NextBlock | None,
) -> ForwardOutput:
    """Answer logits of variants whose ``resid_post(layer)`` gains ``z_diff_v @ W_O[heads[v]]``.

    ``z_diff`` covers positions ``start_pos..``. With ``next_block`` (see
    :func:`circuit.engine.lowrank.prepare_next_block`) the next block runs at rank ``d_head``;
    the rest runs as a plain forward (:func:`circuit.engine.forward.forward_after_write`);
    after the last layer the logits are read straight from the residual stream.
    """
    if next_block is None:
        write = torch.einsum("npve,ved->vnpd", z_diff, w.W_O[layer][heads])
        return forward_after_write(w, base, layer, write, start_pos, **evaluator.forward_kwargs())
    resid = block_after_head_write(w, base, next_block, heads, z_diff, start_pos)
    next_layer = layer + 2
    if next_layer == w.n_layers:
        return evaluator.finish(resid)
    return forward(
        w,
        resid,
        start_layer=next_layer,
        start_pos=start_pos,
        prefix=base,
        **evaluator.forward_kwargs(),
    )


def _head_shortcut(
    w: ForwardWeights,
    component: str,
    layer: int,
    heads: Int[torch.Tensor, " variants"],
    pos: int | None,
    clean: RunCache,
    base: RunCache,
    evaluator: _Evaluator,
    first_diff: int = 0,
    next_block: NextBlock | None = None,
) -> ForwardOutput:
    """Patch one head's ``q``/``k``/``v``/``pattern`` by recomputing that head only.

    Variant ``v`` patches head ``heads[v]``; the variants take the place of the head dim, so the
    patched heads' new ``z`` is one small attention over the base run's other inputs. In a
    parallel block the MLP reads the unchanged ``resid_pre``, so ``resid_post`` changes by
    ``(z_new - z_corrupted) @ W_O`` of the head only, at the query positions whose ``z`` can
    change: every position (``pos is None``), ``pos`` only (``q``, ``pattern``) or ``pos ..``
    (``k``, ``v``). The layers after it then run from ``pos`` on.
    """
    n, seq = base.tokens.shape
    start_pos = first_diff if pos is None else pos
    query_to = pos + 1 if pos is not None and component in ("q", "pattern") else seq

    def head_act(run: RunCache, site: str) -> torch.Tensor:  # [n, seq, variants, d_head]
        return run.activation(site, layer)[:, :, heads]

    if component == "pattern":
        # by position only the query row ``pos`` is patched, and only it changes
        pattern = clean.pattern[layer][:, heads, start_pos:query_to]
        z_new = torch.einsum("bhqk,bkhe->bqhe", pattern, head_act(base, "v"))
    else:
        acts = {}
        for site in ("q", "k", "v"):
            act = head_act(base, site)
            if site == component:
                patched = head_act(clean, site)
                if pos is None:
                    act = patched
                else:
                    act = act.clone()
                    act[:, pos] = patched[:, pos]
            acts[site] = act
        q = acts["q"][:, start_pos:query_to]
        z_new = attend(w, q, acts["k"], acts["v"], start_pos)
    z_diff = z_new - base.z[layer][:, start_pos:query_to, heads]
    if query_to < seq:
        z_diff = torch.cat([z_diff, z_diff.new_zeros(n, seq - query_to, *z_diff.shape[2:])], 1)
    return _continue_after(w, base, layer, heads, z_diff, start_pos, evaluator, next_block)


def _sweep(
    model: torch.nn.Module,
    clean_tokens: torch.Tensor,
    corrupted_tokens: torch.Tensor,
    metric: Metric,
    per_prompt: bool,
    n_variants: int,
    keep_clean: set[str],
    keep_base: set[str],
    memory_budget: int,
    body: Callable[[ForwardWeights, RunCache, RunCache, _Evaluator, int], torch.Tensor],
    verify: Callable[[ForwardWeights, RunCache, RunCache, _Evaluator, torch.Tensor], None] | None,
    describe_cell: Callable[[tuple[int, ...]], str],
    stats: SweepStats | None = None,
    skipped: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``body(w, clean, base, evaluator, variants_per_forward)`` over prompt chunks.

    With a :class:`LogitDiffMetric` the prompts are split as
    :func:`circuit.engine.memory.plan_sweep` says (per-prompt values are independent; their
    mean is the batch metric); a generic metric
    sees all prompts at once. Values come back with the prompt axis last (or reduced).
    ``describe_cell`` names a cell of ``body``'s result (for an error on a non-finite value);
    ``skipped`` marks the cells ``body`` left NaN on purpose (not swept).
    """
    w = weights_of(model)
    guards.check_tokens(clean_tokens, corrupted_tokens, w.n_ctx, w.d_vocab)
    n, seq = clean_tokens.shape
    fast = reads_answer_logits_only(metric)
    if fast and metric.answers.shape[0] != n:
        raise PatchingError(
            f"the metric's answers are for {metric.answers.shape[0]} prompts, the tokens hold {n}"
        )
    plan = plan_for(w, n, seq, n_variants, memory_budget)
    size = plan.prompts if fast else n
    chunked = size < n
    parts = []
    for first in range(0, n, size):
        rows = slice(first, first + size)
        chunk_metric = metric
        if chunked:
            chunk_metric = LogitDiffMetric(
                metric.answers[rows], metric.clean_baseline, metric.corrupted_baseline
            )
        clean, base = run_pair(w, clean_tokens[rows], corrupted_tokens[rows], keep_clean, keep_base)
        evaluator = _Evaluator(w, chunk_metric, per_prompt, base, clean)
        variants = plan.variants
        if not fast:
            width = w.d_vocab * (1 if evaluator.final_only else seq)  # the metric's input
            variants = plan_for(w, n, seq, n_variants, memory_budget, width).variants
        values = body(w, clean, base, evaluator, variants)
        checked = values
        if skipped is not None:
            mask = skipped.to(values.device)
            checked = values.masked_fill(mask[..., None] if evaluator.per_prompt else mask, 0.0)
        try:
            guards.check_finite(checked, describe_cell, evaluator.per_prompt, first, evaluator.n)
        except MetricError as error:
            if evaluator.fast or not evaluator.final_only:
                raise
            raise MetricError(f"{error}. {wrong_guess(evaluator.access)}") from error
        if verify is not None and first == 0:
            verify(w, clean, base, evaluator, values)
        parts.append(values)
        if stats is not None:
            stats.metric_reads = evaluator.access.reads
            stats.metric_reason = evaluator.access.reason
            if evaluator.calls is not None:
                stats.metric_calls = evaluator.calls.fallback or "vmap"
    values = torch.cat(parts, dim=-1) if chunked else parts[0]
    if fast and not per_prompt:
        values = values.mean(dim=-1)
    return values.movedim(-1, 0) if per_prompt else values


def _check_arguments(
    routine: str, model: object, metric: object, memory_budget: object, **flags: object
) -> None:
    """One-line errors for a patching call's model, metric, budget and flags (before any work);
    the tokens are checked against the model's vocabulary and context in :func:`_sweep`."""
    guards.check_model(model, routine)
    if reads_answer_logits_only(metric):
        d_vocab = getattr(model.cfg, "d_vocab", None)  # type: ignore[attr-defined]
        guards.check_answers(metric.answers, metric.answers.shape[0], d_vocab, "metric answers")
    elif not callable(metric):
        raise PatchingError(
            f"{routine}: metric must be a LogitDiffMetric or a callable on logits, got "
            f"{type(metric).__name__}"
        )
    guards.check_positive_int(memory_budget, "memory_budget")
    for name, value in flags.items():
        guards.check_flag(value, name)


def patch_heads(
    model: torch.nn.Module,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    metric: Metric,
    component: str,
    by_position: bool = False,
    per_prompt: bool = False,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    verify: bool = True,
    stats: SweepStats | None = None,
    cells: Bool[torch.Tensor, "..."] | None = None,
) -> torch.Tensor:
    """Patch each head's ``component`` (``z``, ``q``, ``k``, ``v``, ``pattern``) from clean.

    Returns ``[layer, head]``; by position ``[layer, pos, head]`` (``pattern``:
    ``[layer, head, pos]``, as the library); with ``per_prompt`` a leading ``[n]`` dim.
    ``memory_budget`` bounds the activation bytes of one prompt chunk (caches and a forward).
    ``verify`` proves the largest-effect cell's patch through the model's hooks.
    ``cells``: a boolean mask of the result's shape (without the prompt dim); only the cells it
    marks are patched, the others are NaN (a sweep restricted to the cells a claim reads).
    """
    _check_arguments(
        "patch_heads", model, metric, memory_budget, per_prompt=per_prompt, verify=verify
    )
    guards.check_component(component)
    guards.check_flag(by_position, "by_position")
    if cells is not None:
        shape = _result_shape(model, clean_tokens.shape[1], component, by_position)
        guards.check_cell_mask(cells, shape)
    stats = stats if stats is not None else SweepStats()

    def wanted_heads(layer: int, index: int) -> list[int] | None:
        if cells is None:
            return None
        if not by_position:
            row = cells[layer]
        elif component == "pattern":
            row = cells[layer, :, index]
        else:
            row = cells[layer, index]
        return [int(h) for h in row.nonzero().flatten()]

    def body(w, clean, base, evaluator, chunk):
        seq = base.tokens.shape[1]
        positions: list[int | None] = list(range(seq)) if by_position else [None]
        layers = []
        for layer in range(w.n_layers):
            pos_dim = 2 if component == "pattern" else 1
            first_diff = first_difference(
                clean.activation(component, layer), base.activation(component, layer), pos_dim
            )
            next_block = None
            if _shortcut(w, component, evaluator, base) and layer + 2 < w.n_layers:
                next_block = prepare_next_block(w, base, layer)
            cells = [
                _sweep_layer(
                    w,
                    component,
                    layer,
                    pos,
                    clean,
                    base,
                    evaluator,
                    chunk,
                    stats,
                    first_diff,
                    next_block,
                    wanted_heads(layer, index),
                )
                for index, pos in enumerate(positions)
            ]
            layers.append(torch.stack(cells))
        values = torch.stack(layers)
        if not by_position:
            return values[:, 0]
        return values.transpose(1, 2) if component == "pattern" else values

    def check(w, clean, base, evaluator, values):
        _verify_heads(model, w, component, by_position, values, clean, base, evaluator)

    def describe(index: tuple[int, ...]) -> str:
        if by_position and component == "pattern":
            layer, head, pos = index
        elif by_position:
            layer, pos, head = index
        else:
            (layer, head), pos = index, None
        return f"the {component} patch at {Cell(component, layer, head, pos).describe()}"

    with torch.inference_mode():
        return _sweep(
            model,
            clean_tokens,
            corrupted_tokens,
            metric,
            per_prompt,
            model.cfg.n_heads,
            {component},
            {"q", "k", "v", "z", component},
            memory_budget,
            body,
            check if verify else None,
            describe,
            stats,
            None if cells is None else ~cells.cpu(),
        ).clone()


def _result_shape(
    model: torch.nn.Module, seq: int, component: str, by_position: bool
) -> tuple[int, ...]:
    """The shape of :func:`patch_heads`' result without the prompt dim."""
    layers, heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    if not by_position:
        return (layers, heads)
    return (layers, heads, seq) if component == "pattern" else (layers, seq, heads)


def _largest_effect(values: torch.Tensor, unpatched: torch.Tensor, per_prompt: bool) -> tuple:
    """Index of the cell whose (prompt-mean) value differs most from the unpatched run."""
    mean = values.mean(dim=-1) if per_prompt else values
    base = unpatched.mean() if per_prompt else unpatched.reshape(())
    flat = int((mean - base).abs().flatten().nan_to_num(0).argmax())
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), mean.shape))


def _tolerance(w: ForwardWeights) -> float:
    return 1e-4 if w.dtype in (torch.float32, torch.float64) and w.bytes_per_element >= 4 else 1e-2


def _verify_on_bridge(
    model: torch.nn.Module,
    w: ForwardWeights,
    cell: Cell,
    clean_act: torch.Tensor,
    base_act: torch.Tensor,
    base: RunCache,
    evaluator: _Evaluator,
    value: torch.Tensor,
) -> None:
    """:func:`circuit.guards.verify_cell` on the evaluator's leading ``verify_prompts`` prompts.

    ``clean_act``/``base_act`` have the prompt dim first; ``value`` is the cell's ``[n]``
    per-prompt values (or its scalar, when every prompt is verified).
    """
    rows = evaluator.verify_prompts
    try:
        guards.verify_cell(
            model,
            cell,
            base.tokens[:rows],
            clean_act[:rows],
            base_act[:rows],
            evaluator.bridge_value,
            value[:rows] if evaluator.per_prompt else value,
            _tolerance(w),
        )
    except guards.PatchNotApplied as error:
        if evaluator.fast or not evaluator.final_only:
            raise
        raise guards.PatchNotApplied(f"{error}. {wrong_guess(evaluator.access)}") from error


def _verify_heads(model, w, component, by_position, values, clean, base, evaluator) -> None:
    index = _largest_effect(values, evaluator.unpatched(w, base), evaluator.per_prompt)
    if by_position and component == "pattern":
        layer, head, pos = index
    elif by_position:
        layer, pos, head = index
    else:
        (layer, head), pos = index, None
    cell = Cell(component, layer, head, pos)
    clean_act = clean.activation(component, layer)
    base_act = base.activation(component, layer)
    _verify_on_bridge(model, w, cell, clean_act, base_act, base, evaluator, values[index])
    start_pos = 0 if pos is None else pos
    edit = _head_edit(
        component, layer, torch.tensor([head], device=w.device), pos, clean, base.tokens.shape[0]
    )
    out = forward(
        w,
        base.resid_pre[layer][:, start_pos:],
        start_layer=layer,
        stop_layer=layer + 1,
        start_pos=start_pos,
        prefix=base,
        edits=[edit],
        record=[(layer, component)],
    )
    guards.verify_forward_site(
        cell, out.records[(layer, component)], clean_act, base_act, _tolerance(w)
    )


def patch_resid(
    model: torch.nn.Module,
    clean_tokens: Int[torch.Tensor, "n seq"],
    corrupted_tokens: Int[torch.Tensor, "n seq"],
    metric: Metric,
    per_prompt: bool = False,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    verify: bool = True,
    stats: SweepStats | None = None,
) -> torch.Tensor:
    """Patch ``resid_pre`` at each layer and position from clean: ``[layer, pos]``.

    With ``per_prompt`` a leading ``[n]`` dim. Equal to ``get_act_patch_resid_pre``.
    """
    _check_arguments(
        "patch_resid", model, metric, memory_budget, per_prompt=per_prompt, verify=verify
    )
    stats = stats if stats is not None else SweepStats()

    def body(w, clean, base, evaluator, chunk):
        n, seq = base.tokens.shape
        rows = []
        for layer in range(w.n_layers):
            cells = []
            for pos in range(seq):
                resid = base.resid_pre[layer][:, pos:].clone()
                resid[:, 0] = clean.resid_pre[layer][:, pos]
                out = forward(
                    w,
                    resid,
                    start_layer=layer,
                    start_pos=pos,
                    prefix=base,
                    **evaluator.forward_kwargs(),
                )
                stats.count(n, w.n_layers - layer, seq - pos)
                cells.append(evaluator.values(out, pos)[0])
            rows.append(torch.stack(cells))
        return torch.stack(rows)

    def check(w, clean, base, evaluator, values):
        layer, pos = _largest_effect(values, evaluator.unpatched(w, base), evaluator.per_prompt)
        cell = Cell("resid_pre", layer, None, pos)
        clean_act, base_act = clean.resid_pre[layer], base.resid_pre[layer]
        _verify_on_bridge(model, w, cell, clean_act, base_act, base, evaluator, values[layer, pos])

    with torch.inference_mode():
        return _sweep(
            model,
            clean_tokens,
            corrupted_tokens,
            metric,
            per_prompt,
            1,
            set(),
            {"k", "v"},
            memory_budget,
            body,
            check if verify else None,
            lambda index: f"the resid_pre patch at L{index[0]} pos {index[1]}",
            stats,
        ).clone()
