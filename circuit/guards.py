"""Input checks and proofs that a patch took effect.

Every check raises :class:`PatchingError` with a one-line message. The ``verify_*`` functions
re-run one sample cell of a sweep through the model's own hooked forward (``run_with_hooks``),
independent of :mod:`circuit.engine`, and prove that

* the patching hook fired, exactly once;
* the activation entering the hook equals the corrupted run's (earlier layers and, for a
  by-position patch, earlier positions are unchanged);
* the activation leaving the hook equals the clean run's at the intended site and the corrupted
  run's everywhere else (other heads, other positions, other query rows);
* the site actually changed when clean and corrupted differ there;
* the bridge's patched metric equals the fast routine's value for that cell.
"""

import contextlib
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from circuit.heads import Head
from circuit.metrics import MetricError

HEAD_COMPONENTS: tuple[str, ...] = ("z", "q", "k", "v", "pattern")

VERIFY_PROMPTS = 4
"""Prompts a proof re-runs through the model's own forward when the metric is per-prompt (a
:class:`circuit.metrics.LogitDiffMetric`): the hook firing, the site changing and the values
agreeing need no more, and a bridge forward of every prompt would cost a large share of a sweep."""

UNEMBED_INPUT = "unembed.hook_in"
"""The bridge's hook on its unembedding's input: ``[n, seq, d_model]``, ``ln_final``'s output."""

_HOOK_NAMES = {
    "z": "blocks.{layer}.attn.hook_z",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
}


class PatchingError(ValueError):
    """Bad inputs to a patching routine, or a patch that did not take effect."""


class PatchNotApplied(PatchingError):
    """A patch's proof failed: the hook did not fire or changed the wrong activations."""


def _describe(value: object) -> str:
    """A short ``repr`` for messages (tensors by dtype and shape, long values cut)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_model(model: object, routine: str) -> None:
    """``model`` is a loaded model (a ``TransformerBridge`` from ``circuit.models.load_model``)."""
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "cfg"):
        raise PatchingError(
            f"{routine}: model must be a TransformerBridge (circuit.models.load_model), got "
            f"{type(model).__name__}"
        )


def check_flag(value: object, name: str) -> None:
    """``value`` is a bool (``per_prompt``, ``by_position``, ``verify``)."""
    if not isinstance(value, bool):
        raise PatchingError(f"{name} must be True or False, got {_describe(value)}")


def check_positive_int(value: object, name: str, unit: str = "bytes") -> int:
    """``value`` is an integer >= 1 (a memory budget, a chunk size); returns it as an int."""
    number = _index(value)
    if number is None or number < 1:
        raise PatchingError(f"{name} must be a positive integer ({unit}), got {_describe(value)}")
    return number


def _index(value: object) -> int | None:
    """``value`` as an int when it is an integer (not a bool, not a float), else None."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.is_floating_point()):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_tokens(
    clean_tokens: torch.Tensor,
    corrupted_tokens: torch.Tensor,
    n_ctx: int | None = None,
    d_vocab: int | None = None,
) -> None:
    """Clean and corrupted tokens are equal-shape, non-empty 2-D LongTensors of ids in
    ``[0, d_vocab)`` (when ``d_vocab`` is given)."""
    for name, tokens in (("clean_tokens", clean_tokens), ("corrupted_tokens", corrupted_tokens)):
        if not isinstance(tokens, torch.Tensor):
            raise PatchingError(f"{name} must be a torch.Tensor, got {type(tokens).__name__}")
        if tokens.ndim != 2 or tokens.dtype != torch.long:
            raise PatchingError(
                f"{name} must be a 2-D LongTensor [n, seq], got {tokens.dtype} of shape "
                f"{tuple(tokens.shape)}"
            )
        if tokens.numel() == 0:
            raise PatchingError(f"{name} is empty: shape {tuple(tokens.shape)}")
        if d_vocab is not None:
            check_token_ids(tokens, d_vocab, name)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise PatchingError(
            f"clean tokens {tuple(clean_tokens.shape)} and corrupted tokens "
            f"{tuple(corrupted_tokens.shape)} differ in shape"
        )
    if n_ctx is not None and clean_tokens.shape[1] > n_ctx:
        raise PatchingError(
            f"sequence length {clean_tokens.shape[1]} exceeds the model's context {n_ctx}"
        )


def check_token_ids(tokens: torch.Tensor, d_vocab: int, name: str) -> None:
    """Every id of an integer tensor lies in ``[0, d_vocab)`` (no negative ids: they would
    index from the end of the vocabulary)."""
    bad = (tokens < 0) | (tokens >= d_vocab)
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        value = int(tokens[where])
        raise PatchingError(
            f"{name} holds token id {value} at {list(where)}: ids must lie in [0, {d_vocab}) "
            f"(the model's vocabulary)"
        )


def check_answers(answers: object, n: int, d_vocab: int | None, name: str = "answers") -> None:
    """``answers`` is an integer ``[n, 2]`` tensor of (right, wrong) token ids in the vocabulary."""
    if not isinstance(answers, torch.Tensor):
        raise PatchingError(f"{name} must be a torch.Tensor [n, 2], got {type(answers).__name__}")
    if answers.dtype != torch.long:
        raise PatchingError(
            f"{name} must be a LongTensor of token ids, got {answers.dtype} (float or bool ids "
            "cannot index the vocabulary)"
        )
    if tuple(answers.shape) != (n, 2):
        raise PatchingError(f"{name} must be [n, 2] = [{n}, 2], got {tuple(answers.shape)}")
    if d_vocab is not None:
        check_token_ids(answers, d_vocab, name)


def as_head(item: object) -> Head:
    """One head in any of the project's notations as a :class:`~circuit.heads.Head`: a pair
    of ints, an object with ``layer`` and ``head``, or ``"L3H6"``."""
    if isinstance(item, str):
        head = Head.parse(item)
        if head is None:
            raise PatchingError(f"head {item!r} is not of the form 'L<layer>H<head>' (e.g. 'L3H6')")
        return head
    if isinstance(item, Head):
        pair = (_index(item.layer), _index(item.head))
    elif hasattr(item, "layer") and hasattr(item, "head") and not isinstance(item, tuple | list):
        pair = (_index(item.layer), _index(item.head))  # type: ignore[attr-defined]
    elif isinstance(item, tuple | list) and len(item) == 2:
        pair = (_index(item[0]), _index(item[1]))
    else:
        raise PatchingError(
            f"head {item!r} is not a (layer, head) pair, a Head or a string like 'L3H6'"
        )
    if pair[0] is None or pair[1] is None:
        raise PatchingError(f"head {item!r}: layer and head must be integers")
    return Head(pair[0], pair[1])


def as_heads(heads: object, n_layers: int, n_heads: int, name: str = "heads") -> list[Head]:
    """A non-empty list of in-range, distinct heads, from any of the
    project's notations (see :func:`as_head`); a lone ``Head`` or ``"L3H6"`` is one head."""
    if isinstance(heads, str | Head) or (hasattr(heads, "layer") and hasattr(heads, "head")):
        heads = [heads]
    if isinstance(heads, torch.Tensor):
        heads = heads.tolist()
    try:
        items = list(heads)  # type: ignore[call-overload]
    except TypeError:
        raise PatchingError(
            f"{name} must be a list of heads like [(3, 6)], ['L3H6'] or [Head(3, 6)], got "
            f"{_describe(heads)}"
        ) from None
    if not items:
        raise PatchingError(f"the head list is empty ({name} is empty): name at least one head")
    parsed = [as_head(item) for item in items]
    for layer, head in parsed:
        check_layer(layer, n_layers)
        if not 0 <= head < n_heads:
            raise PatchingError(
                f"head {head!r} of layer {layer} out of range: the model has {n_heads} heads"
            )
    if len(set(parsed)) != len(parsed):
        raise PatchingError(f"repeated heads in {name}: {[f'L{a}H{b}' for a, b in parsed]}")
    return parsed


def check_component(component: str, allowed: Sequence[str] = HEAD_COMPONENTS) -> None:
    """``component`` is one of ``allowed``."""
    if not isinstance(component, str) or component not in allowed:
        raise PatchingError(f"unknown component {component!r}; expected one of {tuple(allowed)}")


def check_cell_mask(cells: object, shape: Sequence[int]) -> None:
    """``cells`` is a boolean tensor of ``shape`` marking at least one cell."""
    if not isinstance(cells, torch.Tensor) or cells.dtype != torch.bool:
        raise PatchingError(f"cells must be a boolean tensor, got {type(cells).__name__}")
    if tuple(cells.shape) != tuple(shape):
        raise PatchingError(
            f"cells has shape {tuple(cells.shape)}; the sweep's result (without the prompt "
            f"dim) has shape {tuple(shape)}"
        )
    if not bool(cells.any()):
        raise PatchingError("cells marks no cell: there is nothing to patch")


def check_layer(layer: int, n_layers: int) -> None:
    """``layer`` indexes one of ``n_layers`` layers (no negative indices)."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise PatchingError(f"layer {layer!r} out of range: the model has {n_layers} layers")


def check_heads(
    heads: Sequence[object], n_layers: int, n_heads: int, name: str = "heads"
) -> list[tuple[int, int]]:
    """:func:`as_heads`: the heads as in-range, distinct ``(layer, head)`` pairs."""
    return as_heads(heads, n_layers, n_heads, name)


def check_metric_output(value: torch.Tensor, per_prompt: bool, n: int) -> torch.Tensor:
    """A metric returned a scalar (or ``[n]`` when ``per_prompt``); raise otherwise."""
    if value is None:
        raise PatchingError("the metric returned None; expected a tensor")
    try:
        value = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise PatchingError(
            f"the metric returned {type(value).__name__}; expected a tensor"
        ) from None
    expected: tuple[int, ...] = (n,) if per_prompt else ()
    if tuple(value.shape) != expected:
        want = f"a [n] = [{n}] tensor" if per_prompt else "a scalar"
        raise PatchingError(
            f"the metric returned shape {tuple(value.shape)}; expected {want}"
            + (" (per_prompt=True needs per-prompt values)" if per_prompt else "")
        )
    return value


def check_finite(
    values: torch.Tensor,
    describe_cell: Callable[[tuple[int, ...]], str],
    prompt_axis: bool,
    first_prompt: int = 0,
    n_prompts: int | None = None,
) -> None:
    """Every metric value of a sweep is finite; else a :class:`circuit.metrics.MetricError`
    naming the first bad cell and its prompts.

    ``values`` is ``[*cells, n]`` when ``prompt_axis`` (prompt ``first_prompt + i`` at
    ``[..., i]``), else ``[*cells]`` (a batch-mean metric of ``n_prompts`` prompts);
    ``describe_cell`` names a cell from its index.
    """
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero()[0].tolist()
    if prompt_axis:
        cell = tuple(bad[:-1])
        row = (~finite)[cell]
        prompts = [first_prompt + int(i) for i in row.nonzero().flatten()[:8]]
        more = int(row.sum()) - len(prompts)
        where = f"prompt(s) {prompts}" + (f" and {more} more" if more > 0 else "")
    else:
        cell = tuple(bad)
        span = "" if n_prompts is None else f" {first_prompt}..{first_prompt + n_prompts - 1}"
        where = f"the batch of prompts{span} (a batch-mean metric)"
    value = float(values[tuple(bad)])
    raise MetricError(
        f"the metric returned {value} for {describe_cell(cell)} on {where}: metric values "
        "must be finite (check the metric and the model's weights)"
    )


@dataclass(frozen=True)
class Cell:
    """One patched site: ``component`` at ``layer``, ``head`` (None for resid), ``pos``."""

    component: str
    layer: int
    head: int | None = None
    pos: int | None = None

    @property
    def hook_name(self) -> str:
        return _HOOK_NAMES[self.component].format(layer=self.layer)

    def site_mask(self, shape: torch.Size) -> torch.Tensor:
        """Boolean mask of the patched entries of the hook's activation (batch dim included)."""
        mask = torch.zeros(shape, dtype=torch.bool)
        if self.component == "resid_pre":
            mask[:, self.pos] = True
        elif self.component == "pattern":
            pos = slice(None) if self.pos is None else self.pos
            mask[:, self.head, pos] = True
        else:
            pos = slice(None) if self.pos is None else self.pos
            mask[:, pos, self.head] = True
        return mask

    def describe(self) -> str:
        where = f"L{self.layer}" + ("" if self.head is None else f"H{self.head}")
        return where + ("" if self.pos is None else f" pos {self.pos}")


def verify_cell(
    model: torch.nn.Module,
    cell: Cell,
    corrupted_tokens: torch.Tensor,
    clean_activation: torch.Tensor,
    corrupted_activation: torch.Tensor,
    logits_to_value: Callable[[torch.Tensor], torch.Tensor],
    fast_value: torch.Tensor,
    atol: float,
    final_only: bool = False,
) -> torch.Tensor:
    """Prove one cell's patch took effect and matches the fast routine; raise otherwise.

    ``clean_activation``/``corrupted_activation``: the site's activation in the clean and the
    corrupted run (hook layout). ``logits_to_value`` maps the bridge's logits to the value the
    fast routine reported (``fast_value``) for this cell. Returns the bridge's patched logits
    ``[n, seq, vocab]``, or with ``final_only`` (a metric that reads the final position only)
    ``[n, 1, vocab]`` from :func:`hooked_final_logits`.
    """
    fired: list[tuple[torch.Tensor, torch.Tensor]] = []
    mask = cell.site_mask(clean_activation.shape).to(clean_activation.device)

    def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
        before = activation.detach().clone()
        patched = torch.where(mask, clean_activation.to(activation.dtype), activation)
        fired.append((before, patched.detach().clone()))
        return patched

    if final_only:
        logits = hooked_final_logits(model, corrupted_tokens, [(cell.hook_name, hook)])
    else:
        logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(cell.hook_name, hook)])
    where = f"{cell.component} patch at {cell.describe()}"
    if len(fired) != 1:
        raise PatchNotApplied(f"{where}: the hook {cell.hook_name} fired {len(fired)} times")
    before, after = fired[0]
    corrupted_activation = corrupted_activation.to(before)
    clean_activation = clean_activation.to(before)
    if not torch.allclose(before, corrupted_activation, atol=atol, rtol=0):
        raise PatchNotApplied(
            f"{where}: the activation entering the hook differs from the corrupted run's "
            f"(max {float((before - corrupted_activation).abs().max()):.3g}): earlier layers "
            "changed"
        )
    if not torch.allclose(after[mask], clean_activation[mask], atol=atol, rtol=0):
        raise PatchNotApplied(f"{where}: the patched site does not hold the clean activation")
    if not torch.equal(after[~mask], before[~mask]):
        raise PatchNotApplied(f"{where}: activations outside the patched site changed")
    site_differs = bool((clean_activation[mask] != corrupted_activation[mask]).any())
    if site_differs and torch.equal(after, before):
        raise PatchNotApplied(
            f"{where}: clean and corrupted differ at the site but nothing changed"
        )
    bridge_value = torch.as_tensor(logits_to_value(logits)).to(fast_value)
    if not torch.allclose(bridge_value, fast_value, atol=atol, rtol=1e-4):
        raise PatchNotApplied(
            f"{where}: the fast routine's value {fast_value.flatten()[:4].tolist()} differs from "
            f"the hooked model's {bridge_value.flatten()[:4].tolist()}"
        )
    return logits


class _Stop(Exception):
    """Raised by the hook of :func:`hooked_final_logits` to end the bridge's forward there."""


def hooked_final_logits(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    fwd_hooks: Sequence[tuple[object, Callable[..., object]]] = (),
) -> torch.Tensor:
    """``[n, 1, vocab]``: the bridge's own logits at the final position of a (hooked) run.

    The bridge runs with ``fwd_hooks`` up to its unembedding, whose input at the final position
    is then put through the bridge's own ``unembed``: the full forward's last-position logits
    (the unembedding is a per-position linear map; a matmul of another shape may round
    differently, by float32 rounding only), without
    unembedding the ``seq - 1`` positions a final-position metric never reads. Hooks are
    removed whether or not the forward ends early. Raises :class:`PatchNotApplied` when the
    unembedding's input was never reached.
    """
    final: list[torch.Tensor] = []

    def stop(activation: torch.Tensor, hook: object) -> None:
        final.append(activation[:, -1:].detach().clone())
        raise _Stop

    with contextlib.suppress(_Stop):
        model.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, (UNEMBED_INPUT, stop)])
    if len(final) != 1:
        raise PatchNotApplied(f"the bridge's {UNEMBED_INPUT} hook fired {len(final)} times")
    return model.unembed(final[0])


def verify_forward_site(
    cell: Cell,
    recorded: torch.Tensor,
    clean_activation: torch.Tensor,
    corrupted_activation: torch.Tensor,
    atol: float,
) -> None:
    """Prove the functional forward's edit hit exactly the cell's site (hook layout tensors).

    ``recorded`` is the site's activation inside the fast forward for that one cell, at the
    positions the forward computed (the trailing positions of the full activation).
    """
    mask = cell.site_mask(clean_activation.shape).to(recorded.device)
    pos_dim = 2 if cell.component == "pattern" else 1
    computed = recorded.shape[pos_dim]
    start = clean_activation.shape[pos_dim] - computed
    mask = mask.narrow(pos_dim, start, computed)
    clean = clean_activation.narrow(pos_dim, start, computed).to(recorded)
    corrupted = corrupted_activation.narrow(pos_dim, start, computed).to(recorded)
    where = f"{cell.component} patch at {cell.describe()} (fast forward)"
    if not mask.any():
        raise PatchNotApplied(f"{where}: the patched site lies outside the computed positions")
    if not torch.allclose(recorded[mask], clean[mask], atol=atol, rtol=0):
        raise PatchNotApplied(f"{where}: the patched site does not hold the clean activation")
    if not torch.allclose(recorded[~mask], corrupted[~mask], atol=atol, rtol=0):
        raise PatchNotApplied(f"{where}: activations outside the patched site changed")
