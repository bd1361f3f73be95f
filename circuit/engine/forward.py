"""The forward driver: one transformer forward with edits, records and proofs.

Patching sweeps spend their time in forward passes. The bridge's own forward runs every layer at
every position, fires dozens of hooks and unembeds the whole vocabulary; a sweep needs much less.
This module runs the forward of the GPT-NeoX family as the bridge computes it in compatibility
mode (folded LayerNorm, rotary on a fraction of each head, parallel or sequential attention +
MLP) from :class:`~circuit.engine.weights.ForwardWeights` with the kernels of
:mod:`circuit.engine.kernels`, and lets a caller

* start at any layer from a given residual stream (earlier layers do not change under a patch);
* recompute only positions ``>= start_pos``, reading the keys and values of earlier positions from
  a base run (:class:`RunCache`), since a patch at position ``p`` cannot change earlier positions;
* edit per-head ``q``, ``k``, ``v``, ``pattern`` or ``z``, whole ``attn_out`` / ``mlp_out``, or
  the residual copy a head's ``q``/``k``/``v`` reads (``q_input``..., as ``hook_q_input``) at any
  layer for any subset of batch rows (:class:`Edit`: replace or add, under a mask);
* freeze attention outputs to given values while MLPs recompute (an ``Edit`` of ``z`` or
  ``attn_out`` with ``mask=None``: the attention of that layer is then not computed at all, and
  recorded ``q``/``k``/``v`` are only projected);
* record activations at chosen ``(layer, site)`` pairs (e.g. receivers' ``q`` in path patching);
* prove every masked edit (``prove=True``): per row, the largest change it made inside its mask,
  and the largest change outside it (which must be 0);
* compute only the final position's answer logits (``ln_final`` then the two answer columns of
  ``W_U`` plus ``b_U``) instead of the full unembedding;
* batch many patched variants of the same prompts into one forward (``rows = variants x prompts``,
  variant-major) and size those batches with :mod:`circuit.engine.memory`.

Conventions (the same as the bridge's hooks):

* ``resid``: ``[batch, pos, d_model]``; ``q``/``k``/``v``/``z``: ``[batch, pos, head, d_head]``
  with ``q``/``k`` *before* rotary, as ``hook_q``/``hook_k``; ``pattern``: ``[batch, head,
  query_pos, key_pos]`` after softmax, as ``hook_pattern``; ``attn_out``/``mlp_out``:
  ``[batch, pos, d_model]``; ``q_input``/``k_input``/``v_input``: ``[batch, pos, head,
  d_model]`` (edits only; their value has a head dim of 1: the same change for every head).
* Batch rows: a forward's batch ``B`` may be a multiple of the base batch ``n`` (``B = V * n``,
  row ``v * n + i`` is variant ``v`` of prompt ``i``). Anything with a leading dim of ``n`` (the
  base run in ``prefix``, edit values and masks, ``answers``) is shared by all variants; a leading
  dim of ``B`` gives each row its own; a leading dim of ``1`` broadcasts.
* Positions: tensors passed in (edit values and masks) begin at position ``Edit.start`` (0: the
  whole prompt; a size-1 position dim broadcasts); tensors returned (recorded activations,
  ``resid``) cover only the positions that were computed, ``start_pos ..`` at every layer, except
  the final layer under ``final_only`` (only the last position).

Typical use::

    weights = weights_of(model)                     # cached per model and dtype
    base = run(weights, corrupted_tokens)           # RunCache of every layer's activations
    clean = run(weights, clean_tokens)
    # patch head 3's z at layer 2 from the clean run, batch of one variant:
    mask = head_mask(weights, heads=[3])            # [1, 1, n_heads, 1]
    out = forward(weights, base.resid_pre[2], start_layer=2,
                  edits=[Edit(2, "z", clean.z[2], mask)], answers=answers, final_only=True)
    out.answer_logits                               # [batch, 2]

Path patching (:mod:`circuit.paths`) is two such forwards per sender layer: step 2 resumes after
the senders' write (:func:`forward_after_write`) with every later layer's ``attn_out`` frozen to
the clean run's and the receivers' ``q``/``k``/``v`` recorded; step 3 runs the clean prompts with
an ``Edit`` of those receiver heads' inputs to the recorded values.
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int

from circuit.engine.kernels import (
    attend as attention,
)
from circuit.engine.kernels import (
    final_query_attention,
    input_projection,
    linear,
    mlp,
    normalise,
    parallel_block_sum,
    project,
    rows,
    untracked,
)
from circuit.engine.weights import ForwardError, ForwardWeights

Site = Literal[
    "q", "k", "v", "pattern", "z", "attn_out", "mlp_out", "q_input", "k_input", "v_input"
]
SITES: tuple[str, ...] = ("q", "k", "v", "pattern", "z", "attn_out", "mlp_out")
"""Sites a run keeps and a forward records and edits."""
INPUT_SITES: tuple[str, ...] = ("q_input", "k_input", "v_input")
"""The residual copies each head's ``q``/``k``/``v`` reads (edits only)."""
HEAD_SITES: tuple[str, ...] = ("q", "k", "v", "z")


@dataclass(frozen=True, eq=False)
class Edit:
    """Change an activation at one layer: ``act = where(mask, value, act)`` (``add``:
    ``where(mask, act + value, act)``).

    ``site`` is one of :data:`SITES` or :data:`INPUT_SITES`. ``value`` and ``mask`` are in the
    site's layout (see the module docstring), their position dims beginning at position
    ``start``, with a leading dim of ``B``, ``n`` (shared by all variants) or ``1``; any dim may
    be 1 to broadcast. ``mask=None`` changes the whole activation; replacing all of ``z`` or
    ``attn_out`` that way skips the layer's attention computation (frozen heads), unless
    ``q``/``k``/``v``/``pattern`` of that layer are edited or the pattern is recorded. Entries at
    positions the forward does not compute (before ``start_pos``; before the last position at
    the last layer under ``final_only``) are ignored: earlier keys and values come from the
    ``prefix`` run unchanged.
    """

    layer: int
    site: str
    value: torch.Tensor
    mask: Bool[torch.Tensor, "..."] | None = None
    add: bool = False
    start: int = 0


@dataclass(frozen=True, eq=False)
class RunCache:
    """Every layer's activations of one plain run, stacked over layers.

    ``resid_pre [L, n, S, D]``, ``q/k/v/z [L, n, S, H, dh]``, ``pattern [L, n, H, S, S]``,
    ``attn_out/mlp_out [L, n, S, D]``, ``resid_final [n, S, D]`` (the last ``resid_post``),
    ``scale_final [n, S, 1]`` (``ln_final``'s scale), ``tokens [n, S]``. Sites not kept
    (see :func:`run`'s ``keep``) are ``None``.
    ``resid_post(l)`` is ``resid_pre[l + 1]`` (or ``resid_final``).
    """

    tokens: Int[torch.Tensor, "n pos"]
    resid_pre: Float[torch.Tensor, "layer n pos d_model"]
    q: Float[torch.Tensor, "layer n pos head d_head"] | None
    k: Float[torch.Tensor, "layer n pos head d_head"] | None
    v: Float[torch.Tensor, "layer n pos head d_head"] | None
    pattern: Float[torch.Tensor, "layer n head qpos kpos"] | None
    z: Float[torch.Tensor, "layer n pos head d_head"] | None
    attn_out: Float[torch.Tensor, "layer n pos d_model"] | None
    mlp_out: Float[torch.Tensor, "layer n pos d_model"] | None
    resid_final: Float[torch.Tensor, "n pos d_model"]
    scale_final: Float[torch.Tensor, "n pos 1"]

    def resid_post(self, layer: int) -> Float[torch.Tensor, "n pos d_model"]:
        """The residual stream after ``layer``."""
        if layer == self.resid_pre.shape[0] - 1 or layer == -1:
            return self.resid_final
        return self.resid_pre[layer + 1]

    def activation(self, site: str, layer: int) -> torch.Tensor:
        """One site's activation at one layer (``resid_pre``/``resid_post`` or a :data:`SITES`)."""
        if site == "resid_post":
            return self.resid_post(layer)
        if site == "resid_pre" or site in SITES:
            stored = getattr(self, site)
            if stored is None:
                raise ForwardError(f"the run did not keep {site!r}")
            return stored[layer]
        raise ForwardError(f"unknown site {site!r}")


@dataclass(frozen=True, eq=False)
class ForwardOutput:
    """What :func:`forward` computed.

    ``resid``: the residual stream after the last layer run (``stop_layer - 1``) at the computed
    positions (``[B, S - start_pos, D]``, or ``[B, 1, D]`` under ``final_only``).
    ``answer_logits``: ``[B, 2]`` when ``answers`` was given; ``logits``: ``[B, S', V]`` when
    ``full_logits`` was asked; ``records``: ``{(layer, site): activation}`` at the computed
    positions; under ``prove``, per masked edit ``{(layer, site): ...}``: ``changes`` ``[B]``
    the largest change inside its mask per row, ``leaks`` the largest change outside it (0).
    """

    resid: Float[torch.Tensor, "batch pos d_model"]
    answer_logits: Float[torch.Tensor, "batch 2"] | None = None
    logits: Float[torch.Tensor, "batch pos vocab"] | None = None
    records: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    changes: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    leaks: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)


@dataclass
class _Trace:
    """What a forward records and proves on its way: the ``record`` sites per layer in; the
    records and (under ``prove``) every masked edit's changes out."""

    record: dict[int, set[str]]
    prove: bool
    records: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    changes: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    leaks: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)

    def sites(self, layer: int) -> set[str]:
        return self.record.get(layer, set())

    def keep(self, layer: int, site: str, act: torch.Tensor) -> None:
        if site in self.sites(layer):
            self.records[(layer, site)] = act

    def witness(
        self, edit: Edit, mask: torch.Tensor, before: torch.Tensor, after: torch.Tensor
    ) -> None:
        """Per row, the largest change inside ``mask`` and the largest anywhere outside it."""
        if not self.prove:
            return
        moved = (after - before).abs()
        inside = torch.where(mask, moved, 0).flatten(1).amax(dim=1)
        outside = torch.where(mask, 0, moved).amax()
        self.changes[(edit.layer, edit.site)] = inside
        self.leaks[(edit.layer, edit.site)] = outside


def _slice(t: torch.Tensor, dim: int, start: int, stop: int) -> torch.Tensor:
    if t.shape[dim] == 1:
        return t
    return t.narrow(dim, start, stop - start)


def _window(
    t: torch.Tensor, edit: Edit, pos_dims: Sequence[int], start: int, stop: int, batch: int
) -> torch.Tensor:
    """An edit's ``t`` (value or mask) at positions ``start:stop``, rows broadcast to ``batch``."""
    if start < edit.start:
        raise ForwardError(
            f"the {edit.site!r} edit at layer {edit.layer} begins at position {edit.start}, "
            f"after the first position computed ({start})"
        )
    for dim in pos_dims:
        t = _slice(t, dim, start - edit.start, stop - edit.start)
    return rows(t, batch)


def _apply(
    act: torch.Tensor,
    edit: Edit | None,
    pos_dims: Sequence[int],
    start: int,
    stop: int,
    trace: _Trace | None = None,
) -> torch.Tensor:
    """Apply an edit to ``act`` whose position dims (``pos_dims``) cover ``start:stop``."""
    if edit is None:
        return act
    value = _window(edit.value.to(act.dtype), edit, pos_dims, start, stop, act.shape[0])
    if edit.mask is None:
        return (act + value) if edit.add else value.expand_as(act)
    mask = _window(edit.mask.to(act.device), edit, pos_dims, start, stop, act.shape[0])
    out = torch.where(mask, act + value if edit.add else value, act)
    if trace is not None:
        trace.witness(edit, mask.expand_as(out), act, out)
    return out


def _forked(
    w: ForwardWeights,
    layer: int,
    x: Float[torch.Tensor, "batch pos d_model"],
    act: Float[torch.Tensor, "batch qpos head d_head"],
    name: str,
    edit: Edit | None,
    start: int,
    stop: int,
    trace: _Trace,
) -> Float[torch.Tensor, "batch qpos head d_head"]:
    """``act`` (``q``, ``k`` or ``v`` at positions ``start:stop``) with the masked heads reading
    the edited residual copy (an ``{name}_input`` edit) instead of ``x``."""
    if edit is None:
        return act
    if edit.value.shape[-2] != 1:
        raise ForwardError(f"a {edit.site!r} edit must be the same for every head (head dim 1)")
    whole = Edit(edit.layer, edit.site, edit.value, None, edit.add, edit.start)
    fork = _apply(x[:, -act.shape[1] :, None], whole, (1,), start, stop).squeeze(2)
    shifted = input_projection(w, layer, fork, name)
    if edit.mask is None:
        return shifted
    mask = _window(edit.mask.to(act.device), edit, (1,), start, stop, act.shape[0])
    out = torch.where(mask, shifted, act)
    trace.witness(edit, mask.expand_as(out), act, out)
    return out


def _attend(
    w: ForwardWeights,
    layer: int,
    x: Float[torch.Tensor, "batch pos d_model"],
    q: Float[torch.Tensor, "batch qpos head d_head"],
    k: Float[torch.Tensor, "batch pos head d_head"],
    v: Float[torch.Tensor, "batch pos head d_head"],
    start_pos: int,
    seq_len: int,
    query_from: int,
    prefix: "RunCache | None",
    edits: dict[str, Edit],
    trace: _Trace,
    private: bool = False,
) -> Float[torch.Tensor, "batch qpos head d_head"]:
    """The layer's attention with its ``q``/``k``/``v``/input/``pattern`` edits and records.

    Projected ``q`` covers positions ``query_from..``, ``k`` and ``v`` ``start_pos..``; earlier
    keys and values come from ``prefix``. Returns ``z`` at the query positions.
    """
    q = _forked(w, layer, x, q, "q", edits.get("q_input"), query_from, seq_len, trace)
    k = _forked(w, layer, x, k, "k", edits.get("k_input"), start_pos, seq_len, trace)
    v = _forked(w, layer, x, v, "v", edits.get("v_input"), start_pos, seq_len, trace)
    q = _apply(q, edits.get("q"), (1,), query_from, seq_len, trace)
    k = _apply(k, edits.get("k"), (1,), start_pos, seq_len, trace)
    v = _apply(v, edits.get("v"), (1,), start_pos, seq_len, trace)
    for name, act in (("q", q), ("k", k), ("v", v)):
        trace.keep(layer, name, act)
    earlier = None
    if start_pos > 0:
        if prefix is None:
            raise ForwardError("start_pos > 0 needs a prefix RunCache for earlier keys")
        earlier = (prefix.k[layer][:, :start_pos], prefix.v[layer][:, :start_pos])
    on_pattern = None
    if "pattern" in edits or "pattern" in trace.sites(layer):

        def on_pattern(pattern: torch.Tensor) -> torch.Tensor:
            pattern = _apply(pattern, edits.get("pattern"), (2,), query_from, seq_len, trace)
            trace.keep(layer, "pattern", pattern)
            return pattern

    return attention(w, q, k, v, query_from, start_pos, earlier, private, on_pattern)


_HEAD_INPUTS = frozenset({"q", "k", "v", "pattern", *INPUT_SITES})


def _layer(
    w: ForwardWeights,
    layer: int,
    x: Float[torch.Tensor, "batch pos d_model"],
    start_pos: int,
    seq_len: int,
    query_from: int,
    prefix: "RunCache | None",
    edits: dict[str, Edit],
    trace: _Trace,
) -> Float[torch.Tensor, "batch qpos d_model"]:
    """One transformer block on positions ``start_pos:seq_len``; outputs ``query_from:``."""
    batch = x.shape[0]
    record = trace.sites(layer)
    x_query = x[:, query_from - start_pos :]
    n_query = seq_len - query_from
    final_query = n_query == 1 and layer == w.n_layers - 1
    attention_needed = bool(_HEAD_INPUTS & edits.keys()) or "pattern" in record
    z_edit, out_edit = edits.get("z"), edits.get("attn_out")
    z_frozen = z_edit is not None and z_edit.mask is None and not z_edit.add
    z_frozen = z_frozen and not attention_needed
    out_frozen = out_edit is not None and out_edit.mask is None and not out_edit.add
    out_frozen = out_frozen and not attention_needed and "z" not in record
    if (z_frozen or out_frozen) and {"q", "k", "v"} & record:
        _record_projections(w, layer, x, n_query, trace)
    if out_frozen:
        placeholder = x_query.new_zeros(()).expand(x_query.shape)
        attn_out = _apply(placeholder, out_edit, (1,), query_from, seq_len)
    else:
        if z_frozen:
            placeholder = x.new_zeros(()).expand(batch, n_query, w.n_heads, w.d_head)
            z = _apply(placeholder, z_edit, (1,), query_from, seq_len)
        elif final_query and not attention_needed and not {"q", "k", "v"} & record:
            earlier = None
            if start_pos > 0:
                if prefix is None:
                    raise ForwardError("start_pos > 0 needs a prefix RunCache for earlier keys")
                earlier = (prefix.k[layer][:, :start_pos], prefix.v[layer][:, :start_pos])
            z = final_query_attention(w, layer, x, start_pos, seq_len, earlier)
            z = _apply(z, z_edit, (1,), query_from, seq_len, trace)
        else:
            xn = normalise(x, w.ln1_w[layer], w.ln1_b[layer], w.eps)
            private = untracked(xn) and not {"q", "k", "v"} & record
            private = private and not INPUT_SITES & edits.keys()
            q, k, v = project(w, layer, xn, n_query, private)
            args = (start_pos, seq_len, query_from, prefix, edits, trace, private)
            z = _attend(w, layer, x, q, k, v, *args)
            z = _apply(z, z_edit, (1,), query_from, seq_len, trace)
        trace.keep(layer, "z", z)
        if w.parallel and not {"attn_out", "mlp_out"} & (edits.keys() | record):
            return parallel_block_sum(w, layer, x_query, z)
        attn_out = linear(z.flatten(2), w.W_O[layer].flatten(0, 1), w.b_O[layer])
        attn_out = _apply(attn_out, out_edit, (1,), query_from, seq_len, trace)
    trace.keep(layer, "attn_out", attn_out)
    mlp_in = x_query if w.parallel else x_query + attn_out
    mlp_x = normalise(mlp_in, w.ln2_w[layer], w.ln2_b[layer], w.eps)
    mlp_out = mlp(w, layer, mlp_x)
    mlp_out = _apply(mlp_out, edits.get("mlp_out"), (1,), query_from, seq_len, trace)
    trace.keep(layer, "mlp_out", mlp_out)
    out = x_query + attn_out
    out += mlp_out
    return out


def _record_projections(
    w: ForwardWeights, layer: int, x: torch.Tensor, n_query: int, trace: _Trace
) -> None:
    """Record ``q``/``k``/``v`` of a layer whose attention output is frozen (projection only)."""
    for site in sorted({"q", "k", "v"} & trace.sites(layer)):
        source = x[:, -n_query:] if site == "q" else x
        trace.keep(layer, site, input_projection(w, layer, source, site))


def final_scale(
    w: ForwardWeights, resid: Float[torch.Tensor, "... d_model"]
) -> Float[torch.Tensor, "... 1"]:
    """``ln_final``'s scale (``hook_scale``) of a residual stream."""
    centred = resid - resid.mean(dim=-1, keepdim=True)
    return (centred.pow(2).mean(dim=-1, keepdim=True) + w.eps).sqrt()


def answer_logits(
    w: ForwardWeights,
    resid_final: Float[torch.Tensor, "batch d_model"],
    answers: Int[torch.Tensor, "n 2"],
) -> Float[torch.Tensor, "batch 2"]:
    """Logits of the two answer tokens from the final position's residual stream."""
    xn = normalise(resid_final, w.ln_final_w, w.ln_final_b, w.eps)
    answers = rows(answers.to(w.device), resid_final.shape[0])
    columns = w.W_U.T[answers]
    return torch.einsum("bd,btd->bt", xn, columns) + w.b_U[answers]


def final_logits(
    w: ForwardWeights,
    resid_final: Float[torch.Tensor, "batch d_model"],
    columns: Int[torch.Tensor, " c"] | None = None,
    out: Float[torch.Tensor, "batch 1 vocab"] | None = None,
    unembed_columns: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Float[torch.Tensor, "batch 1 vocab"]:
    """The final position's logits ``[batch, 1, vocab]``; with ``columns`` only those vocabulary
    columns are unembedded and every other one is NaN (a metric that reads one turns NaN, which
    the sweeps refuse loudly). ``out``: a buffer to write them into (with ``columns``; a reused
    buffer spares the page faults of a fresh vocabulary-wide tensor on CPU);
    ``unembed_columns``: ``W_U[:, columns]`` and ``b_U[columns]``, when already gathered."""
    xn = normalise(resid_final, w.ln_final_w, w.ln_final_b, w.eps)
    if columns is None:
        return (xn @ w.W_U + w.b_U)[:, None]
    if out is None:
        out = xn.new_empty((xn.shape[0], 1, w.d_vocab))
    weight, bias = unembed_columns or (w.W_U[:, columns], w.b_U[columns])
    out.fill_(float("nan"))
    out[:, 0, columns] = torch.addmm(bias, xn, weight)
    return out


def final_logits_of_runs(
    w: ForwardWeights, *runs: "RunCache"
) -> tuple[Float[torch.Tensor, "n 1 vocab"], ...]:
    """Each run's final-position logits ``[n, 1, vocab]`` (runs of ``n`` prompts each), from one
    pass over ``W_U``: a few rows against the whole vocabulary are bound by reading ``W_U``
    from memory, so one product for every run costs what one run's would."""
    resid = torch.cat([run.resid_final[:, -1] for run in runs])
    return final_logits(w, resid).chunk(len(runs))


def unembed(
    w: ForwardWeights, resid: Float[torch.Tensor, "batch pos d_model"]
) -> Float[torch.Tensor, "batch pos vocab"]:
    """Full logits of a final residual stream (``ln_final`` then ``W_U``, ``b_U``)."""
    return normalise(resid, w.ln_final_w, w.ln_final_b, w.eps) @ w.W_U + w.b_U


def forward(
    w: ForwardWeights,
    resid: Float[torch.Tensor, "batch pos d_model"],
    *,
    start_layer: int = 0,
    stop_layer: int | None = None,
    start_pos: int = 0,
    prefix: "RunCache | None" = None,
    edits: Sequence[Edit] = (),
    record: Collection[tuple[int, str]] = (),
    answers: Int[torch.Tensor, "n 2"] | None = None,
    full_logits: bool = False,
    final_only: bool = False,
    prove: bool = False,
) -> "ForwardOutput":
    """Run layers ``start_layer .. stop_layer - 1`` from ``resid`` (that layer's ``resid_pre``).

    The batch ``B`` is the largest leading dim of ``resid`` and the edits' values and masks;
    ``resid`` with a leading dim of ``n`` is shared by all variants.
    ``resid`` covers positions ``start_pos ..`` (``[B, S - start_pos, D]``) or the whole sequence
    (``[B, S, D]``, ``seq_len`` then taken from ``prefix`` if given, else from ``resid``); earlier
    positions' keys and values come from ``prefix`` (a base run whose rows broadcast over ``B``).
    ``final_only`` computes only the last position at the last layer (enough for final-position
    answer logits). ``answers`` ``[n or B, 2]`` gives ``answer_logits``; ``full_logits`` gives the
    whole unembedding at the computed positions (only after the last layer). ``prove`` fills
    the output's ``changes`` and ``leaks`` for every masked edit.
    """
    n_layers = w.n_layers
    stop_layer = n_layers if stop_layer is None else stop_layer
    if not 0 <= start_layer < stop_layer <= n_layers:
        raise ForwardError(
            f"need 0 <= start_layer < stop_layer <= {n_layers}, got {start_layer}, {stop_layer}"
        )
    seq_len = int(prefix.tokens.shape[1]) if prefix is not None else resid.shape[1] + start_pos
    if resid.shape[1] == seq_len and start_pos > 0:
        resid = resid[:, start_pos:]
    if resid.shape[1] != seq_len - start_pos:
        raise ForwardError(
            f"resid covers {resid.shape[1]} positions, expected {seq_len - start_pos}"
        )
    if seq_len > w.n_ctx:
        raise ForwardError(f"sequence length {seq_len} exceeds the context {w.n_ctx}")
    by_layer: dict[int, dict[str, Edit]] = {}
    for edit in edits:
        if edit.site not in SITES + INPUT_SITES:
            raise ForwardError(
                f"unknown edit site {edit.site!r}; expected one of {SITES + INPUT_SITES}"
            )
        if not start_layer <= edit.layer < stop_layer:
            raise ForwardError(
                f"edit at layer {edit.layer} is outside the layers run "
                f"({start_layer}..{stop_layer - 1})"
            )
        if edit.site in by_layer.setdefault(edit.layer, {}):
            raise ForwardError(f"two edits of {edit.site!r} at layer {edit.layer}")
        by_layer[edit.layer][edit.site] = edit
    to_record: dict[int, set[str]] = {}
    for layer, site in record:
        if site not in SITES:
            raise ForwardError(f"unknown record site {site!r}; expected one of {SITES}")
        to_record.setdefault(layer, set()).add(site)
    trace = _Trace(to_record, prove)
    batch = max(
        [resid.shape[0]]
        + [e.value.shape[0] for e in edits]
        + [e.mask.shape[0] for e in edits if e.mask is not None]
    )
    x = rows(resid.to(w.dtype), batch).expand(batch, *resid.shape[1:])
    pos = start_pos
    for layer in range(start_layer, stop_layer):
        last = layer == n_layers - 1
        query_from = seq_len - 1 if (final_only and last) else pos
        edits_here = by_layer.get(layer, {})
        x = _layer(w, layer, x, pos, seq_len, query_from, prefix, edits_here, trace)
        pos = query_from
    return _finish(w, x, stop_layer == n_layers, answers, full_logits, trace, final_only)


def _finish(
    w: ForwardWeights,
    x: torch.Tensor,
    at_end: bool,
    answers: torch.Tensor | None,
    full_logits: bool,
    trace: _Trace,
    final_only: bool = False,
) -> "ForwardOutput":
    if not at_end and (answers is not None or full_logits):
        raise ForwardError("logits need the forward to run to the last layer")
    return ForwardOutput(
        resid=x,
        answer_logits=None if answers is None else answer_logits(w, x[:, -1], answers),
        logits=unembed(w, x[:, -1:] if final_only else x) if full_logits else None,
        records=trace.records,
        changes=trace.changes,
        leaks=trace.leaks,
    )


def forward_after_write(
    w: ForwardWeights,
    base: "RunCache",
    layer: int,
    write: Float[torch.Tensor, "variants n pos d_model"],
    start_pos: int = 0,
    *,
    stop_layer: int | None = None,
    edits: Sequence[Edit] = (),
    record: Collection[tuple[int, str]] = (),
    answers: Int[torch.Tensor, "n 2"] | None = None,
    full_logits: bool = False,
    final_only: bool = False,
    prove: bool = False,
) -> "ForwardOutput":
    """The forward of ``base`` whose attention output at ``layer`` gained ``write`` (variant
    ``v``: ``write[v]``, positions ``start_pos..``), rows ``variants x n``.

    A parallel block's MLP reads ``resid_pre``, which the write does not change, so the run
    resumes at ``layer + 1`` from ``base.resid_post(layer) + write``; a sequential block reruns
    ``layer`` with its ``attn_out`` frozen to ``base.attn_out[layer] + write`` (kept by the base
    run) so that its MLP sees the write. ``edits`` and ``record`` must lie after ``layer``;
    the other arguments are :func:`forward`'s.
    """
    stop_layer = w.n_layers if stop_layer is None else stop_layer
    later = [e.layer for e in edits] + [at for at, _ in record]
    if any(at <= layer for at in later):
        raise ForwardError(f"edits and records must lie after the written layer {layer}")
    options = dict(
        stop_layer=stop_layer,
        start_pos=start_pos,
        prefix=base,
        record=record,
        answers=answers,
        full_logits=full_logits,
        final_only=final_only,
        prove=prove,
    )
    if w.parallel:
        resid = write + base.resid_post(layer)[:, start_pos:]
        resid = resid.flatten(0, 1)
        if layer + 1 == stop_layer:
            at_end = stop_layer == w.n_layers
            trace = _Trace({}, prove)
            return _finish(w, resid, at_end, answers, full_logits, trace, final_only)
        return forward(w, resid, start_layer=layer + 1, edits=edits, **options)
    frozen = (write + base.activation("attn_out", layer)[:, start_pos:]).flatten(0, 1)
    own = Edit(layer, "attn_out", frozen, None, start=start_pos)
    resid = base.resid_pre[layer][:, start_pos:]
    return forward(w, resid, start_layer=layer, edits=[own, *edits], **options)


def run(
    w: ForwardWeights, tokens: Int[torch.Tensor, "n pos"], keep: Collection[str] | None = None
) -> RunCache:
    """A plain forward that keeps every layer's activations (the base of a sweep).

    ``keep`` limits the stored sites (of :data:`SITES`; ``resid_pre``, ``resid_final`` and
    ``scale_final`` are always kept, the others are ``None``) to save memory.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype != torch.long:
        what = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else ""
        raise ForwardError(f"tokens must be a 2-D LongTensor [n, pos], got {what or tokens!r}")
    tokens = tokens.to(w.device)
    seq_len = tokens.shape[1]
    if seq_len > w.n_ctx:
        raise ForwardError(f"sequence length {seq_len} exceeds the context {w.n_ctx}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= w.d_vocab):
        bad = int(tokens[(tokens < 0) | (tokens >= w.d_vocab)][0])
        raise ForwardError(f"tokens hold id {bad}: ids must lie in [0, {w.d_vocab})")
    kept = set(SITES) if keep is None else set(keep) - {"resid_pre"}
    if not kept <= set(SITES):
        raise ForwardError(f"unknown sites to keep: {sorted(kept - set(SITES))}")
    x = w.W_E[tokens]
    stacks: dict[str, torch.Tensor] = {}

    def store(site: str, layer: int, act: torch.Tensor) -> None:
        if site not in stacks:
            stacks[site] = act.new_empty(w.n_layers, *act.shape)
        stacks[site][layer] = act

    trace = _Trace({layer: kept for layer in range(w.n_layers)}, False)
    for layer in range(w.n_layers):
        store("resid_pre", layer, x)
        x = _layer(w, layer, x, 0, seq_len, 0, None, {}, trace)
        for site in kept:
            store(site, layer, trace.records.pop((layer, site)))
    return RunCache(
        tokens=tokens,
        resid_final=x,
        scale_final=final_scale(w, x),
        **{name: stacks.get(name) for name in ("resid_pre", *SITES)},
    )


def run_pair(
    w: ForwardWeights,
    clean_tokens: Int[torch.Tensor, "n pos"],
    corrupted_tokens: Int[torch.Tensor, "n pos"],
    keep_clean: Collection[str],
    keep_corrupted: Collection[str],
) -> tuple[RunCache, RunCache]:
    """:func:`run` of the clean and the corrupted prompts as one batch of their distinct rows.

    Corrupted prompts are often other prompts' clean ones (a swapped pair), so each distinct
    sequence is run once; the two caches are then gathered from that run.
    """
    tokens = torch.cat([clean_tokens, corrupted_tokens]).to(w.device)
    distinct, where = torch.unique(tokens, dim=0, return_inverse=True)
    both = run(w, distinct, set(keep_clean) | set(keep_corrupted))
    n = clean_tokens.shape[0]
    return (
        _gather(both, where[:n], keep_clean, tokens[:n]),
        _gather(both, where[n:], keep_corrupted, tokens[n:]),
    )


def _gather(cache: RunCache, rows: torch.Tensor, keep: Collection[str], tokens) -> RunCache:
    """The rows ``rows`` of ``cache`` (a new cache holding only the ``keep`` sites)."""

    def pick(site: str) -> torch.Tensor | None:
        stacked = getattr(cache, site)
        return None if stacked is None or site not in keep else stacked[:, rows]

    return RunCache(
        tokens=tokens,
        resid_pre=cache.resid_pre[:, rows],
        resid_final=cache.resid_final[rows],
        scale_final=cache.scale_final[rows],
        **{site: pick(site) for site in SITES},
    )


def logits_of(w: ForwardWeights, cache: RunCache) -> Float[torch.Tensor, "n pos vocab"]:
    """Full logits of a plain run."""
    return unembed(w, cache.resid_final)


def head_mask(
    w: ForwardWeights, heads: Sequence[int] | torch.Tensor, n_rows: int = 1
) -> Bool[torch.Tensor, "rows 1 head 1"]:
    """A ``q/k/v/z`` edit mask selecting ``heads`` (all positions) for every row."""
    mask = torch.zeros(n_rows, 1, w.n_heads, 1, dtype=torch.bool, device=w.device)
    mask[:, :, torch.as_tensor(heads, dtype=torch.long), :] = True
    return mask


def first_difference(
    a: torch.Tensor, b: torch.Tensor, dim: int, where: Bool[torch.Tensor, " pos"] | None = None
) -> int:
    """The first index along ``dim`` at which ``a`` and ``b`` (broadcast) differ anywhere, among
    the positions ``where`` allows; the size of ``dim`` when they agree everywhere.

    Before it a patch copying ``a`` over ``b`` is a no-op, and causal attention keeps earlier
    positions unchanged, so a forward may start there. One synchronisation.
    """
    differs = (a != b).movedim(dim, 0).flatten(1).any(dim=1)
    if where is not None:
        differs = differs & where
    hit = differs.nonzero()
    return int(hit[0, 0]) if hit.numel() else int(differs.shape[0])


def head_write(
    w: ForwardWeights,
    base: RunCache,
    layer: int,
    heads: Sequence[int],
    patched: dict[str, torch.Tensor],
    start_pos: int = 0,
) -> Float[torch.Tensor, "variants n pos d_model"]:
    """What ``layer``'s attention output gains when ``heads`` read patched inputs while their
    layer's input residual is still the base run's: ``(z_new - z_base)[heads] @ W_O[heads]``.

    ``patched`` maps ``q``/``k``/``v`` to ``[variants x n, pos - start_pos, len(heads),
    d_head]`` (positions ``start_pos..``); the other inputs are the base run's (which must keep
    ``q``, ``k``, ``v`` and ``z``). Only those heads' attention is computed; feed the result to
    :func:`forward_after_write`.
    """
    index = torch.as_tensor(list(heads), dtype=torch.long, device=w.device)
    n = int(base.tokens.shape[0])
    batch = max(t.shape[0] for t in patched.values())
    acts = {}
    for site in ("q", "k", "v"):
        act = patched.get(site)
        if act is None:
            act = base.activation(site, layer)[:, start_pos:, index]
        acts[site] = rows(act, batch)
    earlier = None
    if start_pos > 0:
        earlier = (base.k[layer][:, :start_pos, index], base.v[layer][:, :start_pos, index])
    z = attention(w, acts["q"], acts["k"], acts["v"], start_pos, start_pos, earlier)
    z_base = base.z[layer][:, start_pos:, index]
    dz = (z.view(-1, n, *z.shape[1:]) - z_base).flatten(0, 1)
    write = torch.einsum("bphe,hed->bpd", dz, w.W_O[layer, index])
    return write.view(-1, n, *write.shape[1:])
