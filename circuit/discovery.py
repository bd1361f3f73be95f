"""Discover a model's circuit from the project's own sweeps and draft its claim file.

Discovery runs on the data a circuit is found on (the ``study`` variant), never on the data
it is judged on: :func:`check_variant` refuses ``heldout`` unless asked explicitly. From the
same sweeps the claim kinds read (:mod:`circuit.kinds.measurements`) it measures

* each head's share of the logit difference by direct logit attribution (DLA);
* the top heads' attention from the final position to every role, and its Spearman
  correlation over prompts with their DLA;
* value patching by position for the top heads;
* path patching into the queries of the chosen word movers,

and :func:`draft_claims` writes a DRAFT claim file from them: claims of kinds ``word-movers``,
``value-position`` and ``query-influencers``, the measured numbers as comments above each.
Thresholds are the study's, stated on principle (``claims/pythia-410m.toml``), never the
measured numbers: the draft is judged on ``heldout`` and ``unfiltered``, not on the data it
was discovered on.

Shapes: ``n`` prompts, ``L`` layers, ``H`` heads, ``K = L * H`` heads flattened
(``layer * H + head``), ``pos`` tokens.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from circuit.heads import Head
from circuit.kinds.common import spearman_per_column
from circuit.kinds.measurements import (
    Subject,
    clean_run,
    normalised_baselines,
    path_query,
    value_by_position,
)

# The study's thresholds, on principle (claims/pythia-410m.toml): a majority of the logit
# difference and of the value-patching effect; a moderate monotone relation between attention
# and writing (Spearman >= 0.3, Cohen's "medium"); the top-2 query influencers, each moving at
# least 1% of the clean-corrupted gap. ``top_k`` of word movers = the number of claimed heads.
WORD_MOVER_SHARE = 0.5
ATTENTION_SPEARMAN = 0.3
VALUE_SHARE = 0.5
QUERY_TOP_K = 2
QUERY_EFFECT = 0.01

JUDGED_ON = ("heldout", "unfiltered")
"""The variants a drafted claim is judged on (never the discovery data)."""

NOT_MOVED = ("bos", "final")
"""Roles a word mover is not said to attend to: the attention sink and the query itself."""


class DiscoveryError(ValueError):
    """Discovery cannot run as asked (held-out data, a bad head count)."""


def check_variant(variant: str, allow_heldout: bool = False) -> None:
    """Refuse discovery on ``heldout`` (it would spoil the data claims are judged on)."""
    if variant == "heldout" and not allow_heldout:
        raise DiscoveryError(
            "discovery on --variant heldout spoils the held-out data the claims are judged on; "
            "discover on --variant study (pass --allow-heldout only if you mean to give up "
            "heldout as a test set)"
        )


@dataclass(frozen=True)
class Discovery:
    """The numbers a draft is written from (see the module docstring).

    ``share [K]``: each head's mean DLA over the mean logit difference; ``order [K]``: heads
    by share, largest first; ``logit_diff``: the mean logit difference; ``attention``:
    ``{head: {role: mean attention from the final position}}`` for the top heads;
    ``spearman``: ``{head: {role: Spearman rho(attention to role, DLA) over prompts}}``;
    ``value [K, pos]``: mean value-patching effect (patched minus corrupted, normalised metric)
    of each head at each position; ``roles``: role -> position; ``movers``: the chosen word
    movers; ``path [K]``: mean drop of the normalised metric from clean when each sender's path
    into the movers' queries carries the corrupted run (NaN: no path or a mover), or ``None``
    when every mover is in layer 0; ``n_prompts``: prompts measured.
    """

    n_heads: int
    share: np.ndarray
    order: np.ndarray
    logit_diff: float
    attention: dict[Head, dict[str, float]]
    spearman: dict[Head, dict[str, float]]
    value: np.ndarray
    roles: dict[str, int]
    movers: tuple[Head, ...]
    path: np.ndarray | None
    n_prompts: int

    def head(self, index: int) -> Head:
        """The head at flat index ``index``."""
        return Head.from_flat(int(index), self.n_heads)

    def top(self, k: int) -> list[Head]:
        """The ``k`` heads with the largest DLA share."""
        return [self.head(i) for i in self.order[:k]]


def dla_shares(subject: Subject) -> tuple[np.ndarray, float, np.ndarray]:
    """(share ``[K]``, mean logit difference, per-prompt DLA ``[n, K]``) from ``clean_run``."""
    run = clean_run(subject)
    logit_diff = float(run["logit_diff"].double().mean())
    dla = run["dla"].double().flatten(1).cpu().numpy()  # [n, K]
    return dla.mean(0) / logit_diff, logit_diff, dla


def attention_profile(
    subject: Subject, heads: Sequence[Head], dla: np.ndarray
) -> tuple[dict[Head, dict[str, float]], dict[Head, dict[str, float]]]:
    """Per head, mean attention from the final position to every role, and the Spearman
    correlation over prompts of that attention with the head's DLA (``dla [n, K]``)."""
    attention = clean_run(subject)["attention"].double().flatten(1, 2).cpu().numpy()
    roles = subject.dataset.roles
    means: dict[Head, dict[str, float]] = {}
    rhos: dict[Head, dict[str, float]] = {}
    for head in heads:
        index = head.flat(subject.n_heads)
        per_role = attention[:, index][:, list(roles.values())]  # [n, roles]
        rho = spearman_per_column(per_role, np.repeat(dla[:, index, None], len(roles), axis=1))
        means[head] = {r: float(per_role[:, i].mean()) for i, r in enumerate(roles)}
        rhos[head] = {r: float(rho[i]) for i, r in enumerate(roles)}
    return means, rhos


def value_effects(subject: Subject) -> np.ndarray:
    """``[K, pos]``: mean value-patching effect of each head at each position (the patched
    normalised metric minus the corrupted one, as the value-position kind reads it)."""
    patched = value_by_position(subject)["patched"].double()  # [n, L, pos, H]
    _, corrupted = normalised_baselines(subject)
    effect = patched - corrupted.double()[:, None, None, None]
    return effect.mean(0).permute(0, 2, 1).flatten(0, 1).cpu().numpy()  # [K, pos]


def query_effects(subject: Subject, receivers: Sequence[Head]) -> np.ndarray | None:
    """``[K]``: mean drop of the normalised metric when each sender's path into the
    receivers' queries carries the corrupted run (NaN for receivers and heads with no path);
    ``None`` when every receiver is in layer 0 (no sender exists)."""
    if max(h.layer for h in receivers) == 0:
        return None
    patched = path_query(subject, receivers)["patched"].double().flatten(1)  # [n, K]
    clean, _ = normalised_baselines(subject)
    drop = (clean.double()[:, None] - patched).mean(0).cpu().numpy()
    drop[[h.flat(subject.n_heads) for h in receivers]] = np.nan
    return drop


def discover(subject: Subject, movers: int = 1, top: int = 6) -> Discovery:
    """Run the sweeps: DLA of every head, attention and value patching of the ``top`` heads,
    path patching into the queries of the ``movers`` heads with the largest DLA share."""
    n_total = subject.n_layers * subject.n_heads
    if not 1 <= movers <= n_total:
        raise DiscoveryError(f"--movers must be in [1, {n_total}], got {movers}")
    top = max(top, movers)
    share, logit_diff, dla = dla_shares(subject)
    order = np.argsort(-share, kind="stable")
    top_heads = [Head.from_flat(int(i), subject.n_heads) for i in order[:top]]
    attention, spearman = attention_profile(subject, top_heads, dla)
    chosen = tuple(top_heads[:movers])
    return Discovery(
        n_heads=subject.n_heads,
        share=share,
        order=order,
        logit_diff=logit_diff,
        attention=attention,
        spearman=spearman,
        value=value_effects(subject),
        roles=dict(subject.dataset.roles),
        movers=chosen,
        path=query_effects(subject, chosen),
        n_prompts=len(subject.dataset),
    )


def attended_role(found: Discovery) -> str:
    """The role the movers attend to most from the final position (their summed attention),
    leaving out :data:`NOT_MOVED`."""
    roles = [r for r in found.roles if r not in NOT_MOVED]
    return max(roles, key=lambda r: sum(found.attention[h][r] for h in found.movers))


def value_role(found: Discovery) -> str:
    """The role where the movers' summed value-patching effect is largest."""
    rows = [h.flat(found.n_heads) for h in found.movers]
    effect = found.value[rows].sum(0)  # [pos]
    return max(found.roles, key=lambda r: effect[found.roles[r]])


def top_senders(found: Discovery, k: int = QUERY_TOP_K) -> list[Head]:
    """The ``k`` senders with the largest path-patching effect into the movers' queries
    (heads with a path, before the last mover's layer, not movers)."""
    if found.path is None:
        return []
    last = max(h.layer for h in found.movers)
    candidates = [
        i
        for i in np.argsort(-np.nan_to_num(found.path, nan=-np.inf), kind="stable")
        if not np.isnan(found.path[i]) and found.head(i).layer < last
    ]
    return [found.head(i) for i in candidates[:k]]


def notes(variant: str, no_logit_diff_filter: bool = False) -> list[str]:
    """Header warnings for a draft discovered on a judged variant or without the study's
    logit-diff filter."""
    lines = []
    if variant in JUDGED_ON:
        lines.append(
            f"{variant} is also a variant these claims are judged on: its verdicts no longer "
            "test this draft"
        )
    if no_logit_diff_filter:
        lines.append("discovered without the logit-diff filter (prompts the model gets wrong)")
    return lines


def _heads(heads: Sequence[Head]) -> str:
    return "[" + ", ".join(json.dumps(str(h)) for h in heads) + "]"


def _names(heads: Sequence[Head]) -> str:
    return ", ".join(map(str, heads))


def _word_movers(found: Discovery) -> list[str]:
    movers = found.movers
    role = attended_role(found)
    shares = ", ".join(f"{h} {found.share[h.flat(found.n_heads)]:.3f}" for h in movers)
    total = sum(found.share[h.flat(found.n_heads)] for h in movers)
    ranked = ", ".join(f"{h} {found.share[h.flat(found.n_heads)]:+.3f}" for h in found.top(10))
    lines = [
        f"# measured on discovery data: share {total:.3f} ({shares}); mean logit diff "
        f"{found.logit_diff:.3f}; all heads {found.share.sum():.3f}",
        f"# DLA share, top 10: {ranked}",
    ]
    for head in found.attention:
        attention = ", ".join(f"{r} {v:.3f}" for r, v in found.attention[head].items())
        lines.append(f"# {head} attention from final: {attention}")
    rhos = ", ".join(f"{h} {found.spearman[h][role]:+.3f}" for h in movers)
    mean_rho = float(np.mean([found.spearman[h][role] for h in movers]))
    lines.append(f"# Spearman(attention to {role}, DLA): mean {mean_rho:+.3f} ({rhos})")
    lines += [
        "[[claims]]",
        'id = "word-movers"',
        'kind = "word-movers"',
        "description = "
        + json.dumps(
            f"{_names(movers)} {'moves' if len(movers) == 1 else 'move'} the {role}'s token to "
            "the final position."
        ),
        f"heads = {_heads(movers)}",
        f'roles = {{ attends_to = "{role}" }}',
        f"thresholds = {{ share = {WORD_MOVER_SHARE}, top_k = {len(movers)}, "
        f"spearman = {ATTENTION_SPEARMAN} }}",
    ]
    return lines


def _value_position(found: Discovery) -> list[str]:
    movers = found.movers
    role = value_role(found)
    rows = found.value[[h.flat(found.n_heads) for h in movers]]  # [m, pos]
    summed = rows.sum(0)
    total = float(np.abs(summed).sum())
    at = found.roles[role]
    share = float(summed[at]) / total if total > 0 else float("nan")
    by_role = ", ".join(f"{r} {summed[p]:+.4f}" for r, p in found.roles.items())
    own = ", ".join(f"{h} {rows[i, at]:+.4f}" for i, h in enumerate(movers))
    lines = [
        f"# measured on discovery data: share at {role} (position {at}) {share:.3f} of the "
        f"movers' total |effect| {total:.4f}",
        f"# value-patching effect by role (movers summed): {by_role}",
        f"# each mover's own effect at {role}: {own}",
    ]
    for head in found.attention:
        row = found.value[head.flat(found.n_heads)]
        scale = float(np.abs(row).sum())
        best = np.argsort(-row, kind="stable")[:3]
        parts = ", ".join(f"pos {p} {row[p] / scale if scale else 0.0:.3f}" for p in best)
        lines.append(f"# {head} value patching: total |effect| {scale:.4f}; top {parts}")
    lines += [
        "[[claims]]",
        'id = "value-position"',
        'kind = "value-position"',
        "description = " + json.dumps(f"The word movers' values matter most at the {role}."),
        f"heads = {_heads(movers)}",
        f'roles = {{ position = "{role}" }}',
        f"thresholds = {{ share = {VALUE_SHARE} }}",
    ]
    return lines


def _query_influencers(found: Discovery) -> list[str]:
    movers = found.movers
    senders = top_senders(found)
    if not senders:
        why = "every mover is in layer 0" if found.path is None else "no head has a path"
        return [f"# query-influencers: not drafted ({why}: no sender into their queries)"]
    assert found.path is not None
    ranked = top_senders(found, 5)
    effects = ", ".join(f"{h} {found.path[h.flat(found.n_heads)]:+.4f}" for h in ranked)
    return [
        f"# measured on discovery data: path patching into q of {_names(movers)}, top 5 "
        f"senders: {effects}",
        "[[claims]]",
        'id = "query-influencers"',
        'kind = "query-influencers"',
        "description = " + json.dumps(f"{_names(senders)} steer the word movers' queries."),
        f"heads = {_heads(senders)}",
        f"receivers = {_heads(movers)}",
        f"thresholds = {{ top_k = {QUERY_TOP_K}, effect = {QUERY_EFFECT} }}",
    ]


def draft_claims(
    found: Discovery,
    model: str,
    revision: str | None,
    variant: str,
    command: str,
    seed: int,
    n_pairs: int,
    summary: str = "",
    warnings: Sequence[str] = (),
    family: str = "study",
) -> str:
    """The DRAFT claim file (TOML for :func:`circuit.claims.parse_claim_text`), the measured
    numbers as comments above each claim; ``summary`` (the dataset's filters and roles) and
    ``warnings`` (see :func:`notes`) go in its header; ``family`` (the prompt family discovered
    on) goes in its ``[dataset]`` table unless it is the default ``study``."""
    header = [
        f"# DRAFT claim file for {model}: discovered on --variant {variant} "
        f"({found.n_prompts} prompts) with",
        f"#     {command}",
        "# Thresholds were not tuned: they are the study's, stated on principle",
        f"# (claims/pythia-410m.toml: share >= {WORD_MOVER_SHARE}, top_k = number of heads, "
        f"Spearman >= {ATTENTION_SPEARMAN},",
        f"# value share >= {VALUE_SHARE}, top-{QUERY_TOP_K} query influencers each >= "
        f"{QUERY_EFFECT} of the gap), not from the numbers measured here.",
        f"# The measured numbers below are from --variant {variant}; the claims are judged on "
        f"{' and '.join(JUDGED_ON)}.",
        "# Review every claim before keeping it: this file is a draft, not a finding.",
        *(f"# WARNING: {line}" for line in warnings),
        *(f"# {line}" for line in summary.splitlines()),
        "",
        f"model = {json.dumps(model)}",
        *([f"revision = {json.dumps(revision)}"] if revision else []),
        "description = "
        + json.dumps(f"DRAFT: word movers {_names(found.movers)}, discovered on {variant}."),
        "",
        "[dataset]",
        *([f"family = {json.dumps(family)}"] if family != "study" else []),
        f"variants = {json.dumps(list(JUDGED_ON))}",
        f"seed = {seed}",
        f"n_pairs = {n_pairs}",
        "",
    ]
    body = [*_word_movers(found), "", *_value_position(found), "", *_query_influencers(found)]
    return "\n".join([*header, *body]) + "\n"
