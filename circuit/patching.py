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

``patch_resid`` batches the positions of a layer into groups (:func:`_position_groups`): each
group's variants run from its first position, at most :data:`RESID_GROUP_WASTE` times the work
of one forward per position; positions before the first that differs are the unpatched value.

Proof: with ``verify=True`` (default) the cell with the largest effect is
re-run through the model's own hooks and :func:`circuit.guards.verify_cell` proves the hook fired,
changed exactly the intended site, and gives the value the fast routine reported, on the first
:data:`circuit.guards.VERIFY_PROMPTS` prompts (a per-prompt or final-position metric; a
final-position callable then also sees every prompt once,
:func:`_check_metric_on_every_prompt`) or on all of them (a metric that reads every position).
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
    final_logits_of_runs,
    first_difference,
    forward,
    forward_after_write,
    logits_of,
    run_pair,
)
from circuit.engine.kernels import attend
from circuit.engine.lowrank import NextBlock, block_after_head_write, prepare_next_block
from circuit.engine.memory import DEFAULT_MEMORY_BUDGET, plan_for, scratch
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


REMEMBER_BYTES = 64 * 2**20
"""The most bytes a sweep with a final-position callable keeps of its cells' final residual
streams for the proof (a cell beyond it is re-run once, if it is the one proved)."""


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
        self.remembered: dict[tuple, torch.Tensor] = {}
        """Per cell, its final residual stream at the last position ``[n, d_model]`` as the
        sweep computed it (final-position callables only, while :data:`REMEMBER_BYTES`
        allows): what :func:`_verify_on_bridge` proves, without re-running the cell."""
        self.remembered_bytes = 0
        self.unembed_columns: tuple[torch.Tensor, torch.Tensor] | None = None
        self.full_logits_buffer: torch.Tensor | None = None
        """``[n, seq, vocab]``: the probes' buffer (a final-position callable), kept for its
        proof (:func:`_check_metric_on_every_prompt`): one vocabulary-wide allocation, not two."""
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
            finals = final_logits_of_runs(w, clean, base)
            seq = int(base.tokens.shape[1])
            self.full_logits_buffer = finals[0].new_empty((self.n, seq, w.d_vocab))
            self.access = metric_access(metric, finals, seq, self.full_logits_buffer)
            del finals
            if not self.access.final_only:
                self.full_logits_buffer = None
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

    def remember(self, cells: list[tuple], resid: Float[torch.Tensor, "rows pos d_model"]) -> None:
        """Keep each cell's last-position residual stream (``resid``'s rows: ``cells`` x ``n``,
        cell-major) for the proof, while the kept bytes stay under :data:`REMEMBER_BYTES`."""
        if self.fast or not self.final_only:
            return
        size = resid.shape[0] * resid.shape[-1] * resid.element_size()
        if self.remembered_bytes + size > REMEMBER_BYTES:
            return
        finals = resid[:, -1].reshape(len(cells), self.n, resid.shape[-1]).clone()
        self.remembered.update(zip(cells, finals, strict=True))
        self.remembered_bytes += size

    @property
    def held_bytes(self) -> int:
        """Bytes the evaluator keeps for the whole sweep (the probes' buffer)."""
        buffer = self.full_logits_buffer
        return 0 if buffer is None else buffer.numel() * buffer.element_size()

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
        the others NaN, when :func:`circuit.metrics.metric_access` found them). With the columns
        found they are written into a reused buffer (:func:`circuit.engine.memory.scratch`),
        valid until the next call: metric values computed from it are cloned at once."""
        columns = self.access.columns
        if columns is None:
            return final_logits(self.w, resid[:, -1], None)
        buffer = scratch("final_logits", (resid.shape[0], 1, self.w.d_vocab), resid)
        if self.unembed_columns is None:
            self.unembed_columns = (self.w.W_U[:, columns], self.w.b_U[columns])
        return final_logits(self.w, resid[:, -1], columns, buffer, self.unembed_columns)

    def values(self, out: ForwardOutput, start_pos: int) -> torch.Tensor:
        """Metric values of ``out`` (rows ``variants x n``)."""
        if self.fast:
            return self.from_answer_logits(out.answer_logits)
        if self.final_only:
            logits = self.final_logits(out.resid).view(-1, self.n, 1, self.w.d_vocab)
            return self.calls(logits).clone()
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

        :data:`circuit.guards.VERIFY_PROMPTS` for a per-prompt metric and for a callable that
        reads the final position only (its proof compares those prompts' logits, then calls the
        metric once on every prompt: :func:`_verify_on_bridge`); every prompt for a callable that
        reads earlier positions, whose value need not decompose over prompts.
        """
        return min(self.n, guards.VERIFY_PROMPTS) if self.final_only else self.n

    def bridge_value(self, logits: Float[torch.Tensor, "m seq vocab"]) -> torch.Tensor:
        """What the proof compares for the hooked model's full logits of the leading ``m``
        prompts: per-prompt values (:class:`LogitDiffMetric`); the final position's logits at
        the columns the metric reads (a final-position callable); the metric's value (any
        other callable, which then sees every prompt)."""
        if self.fast:
            return self.metric.for_prompts(logits.shape[0])(logits)
        if self.final_only:
            return self.read_columns(logits[:, -1])
        return self.call(logits)

    def read_columns(self, logits: Float[torch.Tensor, "m vocab"]) -> torch.Tensor:
        """The vocabulary columns the metric reads (all, when they were not found)."""
        columns = self.access.columns
        return logits if columns is None else logits[:, columns.to(logits.device)]

    def unpatched(self, w: ForwardWeights, base: RunCache) -> torch.Tensor:
        """The metric of the unpatched base run, ``[1, n]`` or ``[1]``."""
        if self.fast:
            return self.from_answer_logits(answer_logits(w, base.resid_final[:, -1], self.answers))
        if self.final_only:
            return self.call(self.final_logits(base.resid_final)).clone()[None]
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
    first_diff = min(first_diff, seq - 1)
    swept = list(range(w.n_heads)) if wanted is None else wanted
    parts = []
    for first in range(0, len(swept), chunk):
        heads = torch.tensor(swept[first : first + chunk], dtype=torch.long, device=w.device)
        out, layers, start = _patched_output(
            w, component, layer, heads, pos, clean, base, evaluator, first_diff, next_block
        )
        stats.count(len(heads) * n, layers, seq - start)
        cells = [(layer, pos, head) for head in swept[first : first + chunk]]
        evaluator.remember(cells, out.resid)
        parts.append(evaluator.values(out, start))
    if wanted is None:
        return torch.cat(parts)
    tail = (n,) if evaluator.per_prompt else ()
    full = torch.full((w.n_heads, *tail), float("nan"), dtype=w.dtype, device=w.device)
    if parts:
        values = torch.cat(parts)
        full = full.to(values.dtype)
        full[torch.tensor(wanted, dtype=torch.long, device=full.device)] = values
    return full


def _patched_output(
    w: ForwardWeights,
    component: str,
    layer: int,
    heads: Int[torch.Tensor, " variants"],
    pos: int | None,
    clean: RunCache,
    base: RunCache,
    evaluator: _Evaluator,
    first_diff: int,
    next_block: NextBlock | None,
) -> tuple[ForwardOutput, int, int]:
    """The forward of variants patching ``heads[v]``'s ``component`` at ``layer`` (and ``pos``),
    by the shortcut when it applies (:func:`_shortcut`), else as a plain edited forward; with
    the layers it ran and the position it recomputed from (for :class:`SweepStats`)."""
    if _shortcut(w, component, evaluator, base):
        start_pos = first_diff if pos is None else pos
        if component == "z":
            out = _z_shortcut(w, layer, heads, pos, clean, base, evaluator, first_diff, next_block)
        else:
            out = _head_shortcut(
                w, component, layer, heads, pos, clean, base, evaluator, first_diff, next_block
            )
        return out, w.n_layers - layer - 1, start_pos
    start_pos = 0 if pos is None else pos
    out = forward(
        w,
        base.resid_pre[layer][:, start_pos:],
        start_layer=layer,
        start_pos=start_pos,
        prefix=base,
        edits=[_head_edit(component, layer, heads, pos, clean, int(base.tokens.shape[0]))],
        **evaluator.forward_kwargs(),
    )
    return out, w.n_layers - layer, start_pos


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
            reused = evaluator.final_only and evaluator.access.columns is not None
            held = evaluator.held_bytes
            budget = max(1, memory_budget - held)
            variants = plan_for(w, n, seq, n_variants, budget, width, reused).variants
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
    patched_final: Callable[[], Float[torch.Tensor, "n d_model"]],
) -> None:
    """:func:`circuit.guards.verify_cell` on the evaluator's leading ``verify_prompts`` prompts.

    ``clean_act``/``base_act`` have the prompt dim first; ``value`` is the cell's ``[n]``
    per-prompt values (or its scalar). What the hooked run must reproduce: the per-prompt
    values (a :class:`LogitDiffMetric`), the metric's value (a callable that reads every
    position, on every prompt), or, for a callable that reads the final position only, the
    final-position logits at the columns it reads as the sweep computed them
    (``patched_final``: the cell's last-position residual after the last layer, kept while the
    sweep ran, else re-run by its code path; prompts are independent rows of the engine's
    forward), followed by :func:`_check_metric_on_every_prompt`.
    """
    rows = evaluator.verify_prompts
    final_callable = evaluator.final_only and not evaluator.fast
    if final_callable:
        finals = evaluator.final_logits(patched_final()[:, None])  # [n, 1, vocab]
        expected = evaluator.read_columns(finals[:rows, 0])
    else:
        expected = value[:rows] if evaluator.per_prompt else value
    bridge_final = guards.verify_cell(
        model,
        cell,
        base.tokens[:rows],
        clean_act[:rows],
        base_act[:rows],
        evaluator.bridge_value,
        expected,
        _tolerance(w),
        final_only=evaluator.final_only,
    )
    if final_callable:
        seq = base.tokens.shape[1]
        _check_metric_on_every_prompt(w, cell, evaluator, bridge_final, finals, value, seq)


def _check_metric_on_every_prompt(
    w: ForwardWeights,
    cell: Cell,
    evaluator: _Evaluator,
    bridge_final: Float[torch.Tensor, "rows 1 vocab"],
    finals: Float[torch.Tensor, "n 1 vocab"],
    value: torch.Tensor,
    seq: int,
) -> None:
    """Step 2 of the proof of a callable that reads the final position only: the metric is
    called once on ``[n, seq, vocab]`` logits whose final position is the hooked model's
    (``bridge_final``) for the prompts it re-ran and the sweep's (``finals``) for every other
    prompt, every earlier position NaN. It must give the value the sweep reported from
    final-only logits: a metric that reads an earlier position on this input (a wrong
    final-only guess) sees NaN and fails here. Together with the hooked re-run (stopped at the
    unembedding's input) this costs a hooked forward of ``verify_prompts`` prompts, not of every
    prompt."""
    rows = bridge_final.shape[0]
    n = finals.shape[0]
    logits = evaluator.full_logits_buffer
    if logits is None or tuple(logits.shape) != (n, seq, w.d_vocab):
        logits = finals.new_empty((n, seq, w.d_vocab))
    logits[:, :-1] = float("nan")
    logits[:, -1] = finals[:, 0]
    logits[:rows, -1] = bridge_final[:, -1].to(logits)
    where = f"{cell.component} patch at {cell.describe()}"
    try:
        proved = evaluator.call(logits)
    except MetricError as error:
        raise guards.PatchNotApplied(
            f"{where}: {error}. {wrong_guess(evaluator.access)}"
        ) from error
    if not torch.allclose(proved, value.to(proved), atol=_tolerance(w), rtol=1e-4):
        raise guards.PatchNotApplied(
            f"{where}: the metric gives {proved.flatten()[:4].tolist()} on the hooked model's "
            f"final logits (and the sweep's, earlier positions NaN), the sweep "
            f"reported {value.flatten()[:4].tolist()} from final-position logits. "
            f"{wrong_guess(evaluator.access)}"
        )


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
    start_pos = 0 if pos is None else pos
    edit = _head_edit(
        component, layer, torch.tensor([head], device=w.device), pos, clean, base.tokens.shape[0]
    )

    def patched_final() -> torch.Tensor:  # the sweep's own result or code path, for this cell
        if (layer, pos, head) in evaluator.remembered:
            return evaluator.remembered[(layer, pos, head)]
        pos_dim = 2 if component == "pattern" else 1
        first_diff = min(first_difference(clean_act, base_act, pos_dim), base.tokens.shape[1] - 1)
        heads = torch.tensor([head], device=w.device)
        args = (w, component, layer, heads, pos, clean, base, evaluator, first_diff, None)
        return _patched_output(*args)[0].resid[:, -1]

    _verify_on_bridge(
        model, w, cell, clean_act, base_act, base, evaluator, values[index], patched_final
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


RESID_GROUP_WASTE = 1.25
"""The most recomputation a group of ``resid_pre`` patches may cost against one forward per
position: a group of positions ``p0 .. p1 - 1`` runs every variant from ``p0``."""


def _position_groups(first: int, seq: int, most: int) -> list[tuple[int, int]]:
    """Consecutive positions ``first .. seq - 1`` in groups ``(start, stop)`` of at most
    ``most``, each as wide as :data:`RESID_GROUP_WASTE` allows: a group costs ``(stop - start)
    x (seq - start)`` recomputed positions per layer, one forward per position would cost
    ``sum(seq - p)``. Fewer, wider forwards; the wasted work stays bounded."""
    groups = []
    start = first
    while start < seq:
        stop = start + 1
        while stop < seq and stop - start < most:
            wider = stop + 1 - start
            needed = sum(seq - p for p in range(start, stop + 1))
            if wider * (seq - start) > RESID_GROUP_WASTE * needed:
                break
            stop += 1
        groups.append((start, stop))
        start = stop
    return groups


def _resid_forward(
    w: ForwardWeights,
    layer: int,
    start: int,
    stop: int,
    clean: RunCache,
    base: RunCache,
    evaluator: _Evaluator,
) -> ForwardOutput:
    """One batched forward of the variants patching ``resid_pre`` at ``layer`` and each
    position ``start .. stop - 1`` (rows ``variants x n``, variant-major), from ``start``:
    variant ``v`` is the corrupted residual stream with position ``start + v`` clean (the
    positions between ``start`` and its own are recomputed unchanged, the price of one batch)."""
    if w.parallel and evaluator.final_only:
        return _resid_shortcut(w, layer, start, stop, clean, base, evaluator)
    n = int(base.tokens.shape[0])
    variants = stop - start
    resid = base.resid_pre[layer][:, start:].expand(variants, -1, -1, -1).clone()
    offsets = torch.arange(variants, device=resid.device)
    resid[offsets, :, offsets] = clean.resid_pre[layer][:, start:stop].transpose(0, 1)
    return forward(
        w,
        resid.view(variants * n, *resid.shape[2:]),
        start_layer=layer,
        start_pos=start,
        prefix=base,
        **evaluator.forward_kwargs(),
    )


def _resid_shortcut(
    w: ForwardWeights,
    layer: int,
    start: int,
    stop: int,
    clean: RunCache,
    base: RunCache,
    evaluator: _Evaluator,
) -> ForwardOutput:
    """:func:`_resid_forward` of a parallel-attention model without running ``layer``'s block.

    With ``resid_pre`` clean at position ``p`` only, that position's ``q``, ``k``, ``v`` and
    MLP output are the clean run's, every other position's inputs are the corrupted run's, and a
    parallel block's MLP reads ``resid_pre``: ``resid_post`` changes at ``p`` by the residual,
    MLP and attention differences, after ``p`` by the attention difference only (later queries
    see the clean key and value at ``p``), before ``p`` not at all. Only the attention of the
    positions from ``start`` is recomputed (every head, the variants as batch rows); the run
    resumes after the layer (:func:`circuit.engine.forward.forward_after_write`).
    """
    n, seq = base.tokens.shape
    variants = stop - start
    offsets = torch.arange(variants, device=w.device)
    inputs = {}
    for site in ("q", "k", "v"):
        act = base.activation(site, layer)[:, start:].expand(variants, -1, -1, -1, -1).clone()
        act[offsets, :, offsets] = clean.activation(site, layer)[:, start:stop].transpose(0, 1)
        inputs[site] = act.flatten(0, 1)  # [variants x n, seq - start, head, d_head]
    earlier = (base.k[layer][:, :start], base.v[layer][:, :start])
    z = attend(w, inputs["q"], inputs["k"], inputs["v"], start, start, earlier, private=True)
    z_diff = z.view(variants, n, seq - start, w.n_heads, w.d_head) - base.z[layer][:, start:]
    before = torch.arange(seq - start, device=w.device)[None, :] < offsets[:, None]
    z_diff.masked_fill_(before[:, None, :, None, None], 0.0)  # before p: the corrupted run
    write = torch.einsum("vnphe,hed->vnpd", z_diff, w.W_O[layer])
    own = (
        clean.resid_pre[layer] - base.resid_pre[layer] + clean.mlp_out[layer] - base.mlp_out[layer]
    )
    write[offsets, :, offsets] += own[:, start:stop].transpose(0, 1)
    return forward_after_write(w, base, layer, write, start, **evaluator.forward_kwargs())


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
        unpatched = evaluator.unpatched(w, base)[0]
        rows = []
        for layer in range(w.n_layers):
            clean_resid, base_resid = clean.resid_pre[layer], base.resid_pre[layer]
            first = first_difference(clean_resid, base_resid, 1)
            cells = [unpatched.expand(min(first, seq), *unpatched.shape)]
            for start, stop in _position_groups(first, seq, chunk):
                out = _resid_forward(w, layer, start, stop, clean, base, evaluator)
                evaluator.remember([(layer, pos) for pos in range(start, stop)], out.resid)
                stats.count((stop - start) * n, w.n_layers - layer, seq - start)
                cells.append(evaluator.values(out, start))
            rows.append(torch.cat(cells))
        return torch.stack(rows)

    positions = clean_tokens.shape[-1] if isinstance(clean_tokens, torch.Tensor) else 1  # variants

    def check(w, clean, base, evaluator, values):
        layer, pos = _largest_effect(values, evaluator.unpatched(w, base), evaluator.per_prompt)
        cell = Cell("resid_pre", layer, None, pos)
        clean_act, base_act = clean.resid_pre[layer], base.resid_pre[layer]

        def patched_final() -> torch.Tensor:  # the sweep's own result or code path
            if (layer, pos) in evaluator.remembered:
                return evaluator.remembered[(layer, pos)]
            return _resid_forward(w, layer, pos, pos + 1, clean, base, evaluator).resid[:, -1]

        value = values[layer, pos]
        _verify_on_bridge(
            model, w, cell, clean_act, base_act, base, evaluator, value, patched_final
        )

    with torch.inference_mode():
        return _sweep(
            model,
            clean_tokens,
            corrupted_tokens,
            metric,
            per_prompt,
            positions,
            {"q", "k", "v", "mlp_out"},
            {"q", "k", "v", "z", "mlp_out"},
            memory_budget,
            body,
            check if verify else None,
            lambda index: f"the resid_pre patch at L{index[0]} pos {index[1]}",
            stats,
        ).clone()
