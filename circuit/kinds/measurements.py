"""The measurements claim kinds read, each computed once per subject through the measurement store.

A :class:`Subject` is one model on one dataset. Every function here returns per-prompt data
(first axis ``n`` = prompts) and is computed at most once per run per subject (and
parameters), however many claims read it:

* :func:`clean_run`: direct logit attribution of every head, each head's output projected
  on the right/wrong answer directions, attention from the final position, logit diffs;
* :func:`baselines`: clean and corrupted per-prompt logit differences;
* :func:`value_differences`: where the clean and corrupted value vectors differ;
* :func:`value_by_position`: value patching of every head at every position
  (``circuit.patching.patch_heads(..., "v", by_position=True, per_prompt=True)``);
* :func:`path_query`: path patching from every sender into given receivers' queries
  (``circuit.paths.path_patch(..., receiver_input="q", per_prompt=True)``);
* :func:`head_ablation`: the clean run with given head sets ablated, many masks batched
  (``circuit.ablation.ablate_heads``), for the faithfulness kinds.

Patching sweeps use the study's normalised metric (clean 1, corrupted 0, batch-mean
baselines), so per-prompt effects are fractions of the clean-corrupted gap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from circuit.dataset import SyllogismDataset
from circuit.heads import Head
from circuit.measurement_store import MeasurementResult, MeasurementStore, SubjectKey
from circuit.metrics import LogitDiffMetric, logit_diff
from circuit.statistics import Clusters

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from circuit.ablation import Ablation


@dataclass(frozen=True)
class Subject:
    """One model on one dataset, with the store its measurements are kept in.

    ``fingerprint`` must change whenever the weights, the dataset or the measuring code
    does (see :func:`circuit.measurement_store.model_fingerprint` and friends); it keys the
    disk cache.
    """

    model: TransformerBridge
    dataset: SyllogismDataset
    key: SubjectKey
    store: MeasurementStore
    fingerprint: str = ""

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.model.cfg.n_heads)

    @property
    def clusters(self) -> Clusters:
        """The dataset's factor levels (every prompt its own cluster if it declares none)."""
        if not self.dataset.factors:
            return Clusters.independent(len(self.dataset))
        return Clusters.from_labels(self.dataset.factors)

    def measure(self, name: str, params: object, compute) -> MeasurementResult:
        """``compute()`` once per run (and cache) for this subject, name and params."""
        return self.store.get(self.key, name, params, compute, self.fingerprint)

    def stored(self, name: str, params: object = None) -> MeasurementResult | None:
        """The measurement if this run has it already (None otherwise; never computes)."""
        return self.store.stored(self.key, name, params, self.fingerprint)


def _device_tokens(subject: Subject, tokens: torch.Tensor) -> torch.Tensor:
    return tokens.to(subject.model.cfg.device)


@torch.no_grad()
def clean_run(subject: Subject) -> MeasurementResult:
    """One clean forward, per prompt and head (``[n, L, H]`` unless noted), from
    :func:`circuit.attribution.head_writes` (the project's one direct logit attribution).

    ``dla``: the head's output at the final position, scaled by the final LayerNorm, dotted
    with the logit-difference direction (right minus wrong answer); with the other
    components it sums to ``logit_diff`` ``[n]``. ``write_right`` / ``write_wrong``: the
    same output dotted with the right / wrong answer's residual direction (the study's
    scatter). ``attention``: ``[n, L, H, pos]`` attention from the final position.
    """

    def compute() -> MeasurementResult:
        from circuit.attribution import head_writes

        data = subject.dataset
        writes = head_writes(
            subject.model, _device_tokens(subject, data.clean_tokens), data.answers
        )
        return {
            "dla": writes.dla,
            "write_right": writes.right,
            "write_wrong": writes.wrong,
            "attention": writes.attention,
            "logit_diff": writes.logit_diff,
        }

    return subject.measure("clean_run", None, compute)


@torch.no_grad()
def baselines(subject: Subject) -> MeasurementResult:
    """Per-prompt logit differences of the clean and the corrupted prompts (``[n]`` each)."""

    def compute() -> MeasurementResult:
        model, data = subject.model, subject.dataset
        answers = data.answers.to(model.cfg.device)
        clean = model(_device_tokens(subject, data.clean_tokens))
        corrupted = model(_device_tokens(subject, data.corrupted_tokens))
        return {"clean": logit_diff(clean, answers), "corrupted": logit_diff(corrupted, answers)}

    return subject.measure("baselines", None, compute)


def study_metric(subject: Subject) -> LogitDiffMetric:
    """The normalised, per-prompt metric (batch-mean baselines from :func:`baselines`)."""
    base = baselines(subject)
    clean, corrupted = torch.stack([base["clean"].mean(), base["corrupted"].mean()]).tolist()
    return LogitDiffMetric(subject.dataset.answers, clean, corrupted, per_prompt=True)


def normalised_baselines(subject: Subject) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt clean and corrupted values of the normalised metric (``[n]`` each)."""
    base = baselines(subject)
    metric = study_metric(subject)
    gap = metric.clean_baseline - metric.corrupted_baseline
    return (
        (base["clean"] - metric.corrupted_baseline) / gap,
        (base["corrupted"] - metric.corrupted_baseline) / gap,
    )


@torch.no_grad()
def value_differences(subject: Subject) -> MeasurementResult:
    """``largest``: ``[L, pos, H]``, the largest |clean v - corrupted v| over prompts and
    head dimensions: where value patching can have an effect at all (zero elsewhere)."""

    def compute() -> MeasurementResult:
        data = subject.dataset
        names = [f"blocks.{layer}.attn.hook_v" for layer in range(subject.n_layers)]
        _, clean = subject.model.run_with_cache(
            _device_tokens(subject, data.clean_tokens), names_filter=names.__contains__
        )
        _, corrupted = subject.model.run_with_cache(
            _device_tokens(subject, data.corrupted_tokens), names_filter=names.__contains__
        )
        largest = torch.stack(
            [(clean[n] - corrupted[n]).abs().amax(dim=(0, 3)) for n in names]
        )  # [L, pos, H]
        return {"largest": largest}

    return subject.measure("value_differences", None, compute)


@torch.no_grad()
def value_by_position(
    subject: Subject, heads: Sequence[Head] | None = None, position: int | None = None
) -> MeasurementResult:
    """``patched``: ``[n, L, pos, H]`` normalised metric with one head's clean ``v`` patched
    into the corrupted run at one position (transformer_lens.patching orientation).

    Every cell by default. Given ``heads`` and ``position``, only the cells a value-position
    claim reads: those heads at every position, and every head at ``position`` (for the
    ranking); the other cells are NaN (unless this run already swept every cell: then that).
    """
    restricted = heads is not None and position is not None

    def compute() -> MeasurementResult:
        from circuit import patching

        data = subject.dataset
        cells = None
        if restricted:
            seq = int(data.clean_tokens.shape[1])
            cells = torch.zeros(subject.n_layers, seq, subject.n_heads, dtype=torch.bool)
            for head in heads:
                cells[head.layer, :, head.head] = True
            cells[:, position, :] = True
        patched = patching.patch_heads(
            subject.model,
            _device_tokens(subject, data.clean_tokens),
            _device_tokens(subject, data.corrupted_tokens),
            study_metric(subject),
            "v",
            by_position=True,
            per_prompt=True,
            cells=cells,
        )
        return {"patched": patched}

    if restricted:
        full = subject.stored("value_by_position")  # every cell, if this run swept them
        if full is not None:
            return full
    params = value_by_position_params(heads, position) if restricted else None
    return subject.measure("value_by_position", params, compute)


def value_by_position_params(heads: Sequence[Head], position: int) -> str:
    """The store's parameter of :func:`value_by_position` restricted to ``heads`` (order does
    not matter) and every head at ``position``."""
    return ",".join(map(str, sorted(set(heads)))) + f"@pos{position}"


@torch.no_grad()
def path_query(
    subject: Subject, receivers: Sequence[Head], receiver_input: str = "q"
) -> MeasurementResult:
    """``patched``: ``[n, L, H]`` normalised metric when each sender's path into the
    receivers' ``receiver_input`` (``"q"``, the queries, by default; or ``"k"`` / ``"v"``)
    carries the corrupted run (NaN where no sender exists)."""
    ordered = sorted(set(receivers))

    def compute() -> MeasurementResult:
        from circuit import paths

        data = subject.dataset
        patched = paths.path_patch(
            subject.model,
            _device_tokens(subject, data.clean_tokens),
            _device_tokens(subject, data.corrupted_tokens),
            study_metric(subject),
            receivers=[(h.layer, h.head) for h in ordered],
            receiver_input=receiver_input,
            mode="freeze",
            per_prompt=True,
        )
        return {"patched": patched}

    return subject.measure("path_query", path_query_params(receivers, receiver_input), compute)


def path_query_params(receivers: Sequence[Head], receiver_input: str = "q") -> str:
    """The store's parameter of :func:`path_query` for ``receivers`` (order does not matter)
    and the receiver input (unchanged for ``"q"``, suffixed ``@k`` / ``@v`` otherwise)."""
    heads = ",".join(map(str, sorted(set(receivers))))
    return heads if receiver_input == "q" else f"{heads}@{receiver_input}"


def ablation_of(subject: Subject, options: Mapping[str, object]) -> "Ablation":
    """The :class:`~circuit.ablation.Ablation` a faithfulness claim's options state, with its
    roles resolved to this dataset's positions (``positions`` absent or ``"all"``: all)."""
    from circuit.ablation import Ablation

    positions = options.get("positions", "all")
    if positions == "all":
        where = None
    else:
        roles = (positions,) if isinstance(positions, str) else tuple(positions)
        where = tuple(sorted({subject.dataset.roles[role] for role in roles}))
    return Ablation(
        method=str(options["ablation"]),
        source=str(options.get("ablation_source", "clean")),
        positions=where,
    )


@torch.no_grad()
def head_ablation(subject: Subject, ablation: "Ablation", masks: np.ndarray) -> MeasurementResult:
    """``metric``: ``[n, masks]`` the normalised metric of the clean prompts with each mask's
    heads (bool ``masks[v, layer, head]``) ablated as ``ablation`` says
    (:func:`circuit.ablation.ablate_heads`; clean 1, corrupted 0, batch-mean baselines)."""
    masks = np.ascontiguousarray(masks, dtype=bool)
    digest = hashlib.sha256(masks.tobytes() + str(masks.shape).encode()).hexdigest()[:16]
    params = f"{ablation.describe()} seed {ablation.seed}, masks {masks.shape[0]}:{digest}"
    # circuit.ablation is not among the engine modules the disk cache's fingerprint reads
    params += f", code {_ablation_code()}"

    def compute() -> MeasurementResult:
        from circuit.ablation import ablate_heads

        data = subject.dataset
        metric = ablate_heads(
            subject.model,
            _device_tokens(subject, data.clean_tokens),
            _device_tokens(subject, data.corrupted_tokens),
            study_metric(subject),
            torch.from_numpy(masks),
            ablation,
        )
        return {"metric": metric}

    return subject.measure("head_ablation", params, compute)


def _ablation_code() -> str:
    """Digest of :mod:`circuit.ablation`'s source (keys the disk cache of ablation sweeps)."""
    from circuit import ablation
    from circuit.measurement_store import source_digest

    return source_digest([ablation])[:16]
