"""Input checks and proofs that a patch took effect.

Every check raises :class:`PatchingError` with a one-line message. The ``verify_*`` functions
re-run one sample cell of a sweep through the model's own hooked forward (``run_with_hooks``),
independent of :mod:`circuit.forward`, and prove that

* the patching hook fired, exactly once;
* the activation entering the hook equals the corrupted run's (earlier layers and, for a
  by-position patch, earlier positions are unchanged);
* the activation leaving the hook equals the clean run's at the intended site and the corrupted
  run's everywhere else (other heads, other positions, other query rows);
* the site actually changed when clean and corrupted differ there;
* the bridge's patched metric equals the fast routine's value for that cell.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

HEAD_COMPONENTS: tuple[str, ...] = ("z", "q", "k", "v", "pattern")

VERIFY_PROMPTS = 4
"""Prompts a proof re-runs through the model's own forward when the metric is per-prompt (a
:class:`circuit.metrics.LogitDiffMetric`): the hook firing, the site changing and the values
agreeing need no more, and a bridge forward of every prompt would cost a large share of a sweep."""

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


def check_tokens(
    clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, n_ctx: int | None = None
) -> None:
    """Clean and corrupted tokens are equal-shape, non-empty 2-D LongTensors."""
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
    if clean_tokens.shape != corrupted_tokens.shape:
        raise PatchingError(
            f"clean tokens {tuple(clean_tokens.shape)} and corrupted tokens "
            f"{tuple(corrupted_tokens.shape)} differ in shape"
        )
    if n_ctx is not None and clean_tokens.shape[1] > n_ctx:
        raise PatchingError(
            f"sequence length {clean_tokens.shape[1]} exceeds the model's context {n_ctx}"
        )


def check_component(component: str, allowed: Sequence[str] = HEAD_COMPONENTS) -> None:
    """``component`` is one of ``allowed``."""
    if component not in allowed:
        raise PatchingError(f"unknown component {component!r}; expected one of {tuple(allowed)}")


def check_layer(layer: int, n_layers: int) -> None:
    """``layer`` indexes one of ``n_layers`` layers (no negative indices)."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise PatchingError(f"layer {layer!r} out of range: the model has {n_layers} layers")


def check_heads(heads: Sequence[tuple[int, int]], n_layers: int, n_heads: int) -> None:
    """``heads`` is a non-empty list of in-range ``(layer, head)`` pairs without repeats."""
    if len(heads) == 0:
        raise PatchingError("the head list is empty")
    for item in heads:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise PatchingError(f"head {item!r} is not a (layer, head) pair")
        layer, head = item
        check_layer(layer, n_layers)
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n_heads:
            raise PatchingError(
                f"head {head!r} of layer {layer} out of range: the model has {n_heads} heads"
            )
    if len({tuple(h) for h in heads}) != len(heads):
        raise PatchingError(f"repeated heads in {list(heads)}")


def check_metric_output(value: torch.Tensor, per_prompt: bool, n: int) -> torch.Tensor:
    """A metric returned a scalar (or ``[n]`` when ``per_prompt``); raise otherwise."""
    value = torch.as_tensor(value)
    expected: tuple[int, ...] = (n,) if per_prompt else ()
    if tuple(value.shape) != expected:
        want = f"a [n] = [{n}] tensor" if per_prompt else "a scalar"
        raise PatchingError(
            f"the metric returned shape {tuple(value.shape)}; expected {want}"
            + (" (per_prompt=True needs per-prompt values)" if per_prompt else "")
        )
    return value


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
) -> None:
    """Prove one cell's patch took effect and matches the fast routine; raise otherwise.

    ``clean_activation``/``corrupted_activation``: the site's activation in the clean and the
    corrupted run (hook layout). ``logits_to_value`` maps the bridge's logits to the value the
    fast routine reported (``fast_value``) for this cell.
    """
    fired: list[tuple[torch.Tensor, torch.Tensor]] = []
    mask = cell.site_mask(clean_activation.shape).to(clean_activation.device)

    def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
        before = activation.detach().clone()
        patched = torch.where(mask, clean_activation.to(activation.dtype), activation)
        fired.append((before, patched.detach().clone()))
        return patched

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
