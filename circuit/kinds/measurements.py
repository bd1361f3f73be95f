"""The sweeps claim kinds read, each measured once per subject through the sweep store.

A :class:`Subject` is one model on one dataset. Every function here returns per-prompt data
(first axis ``n`` = prompts) and is computed at most once per run per subject (and
parameters), however many claims read it:

* :func:`clean_run`: direct logit attribution of every head, each head's output projected
  on the right/wrong answer directions, attention from the final position, logit diffs;
* :func:`baselines`: clean and corrupted per-prompt logit differences;
* :func:`value_by_position`: value patching of every head at every position
  (``circuit.patching.patch_heads(..., "v", by_position=True, per_prompt=True)``);
* :func:`path_query`: path patching from every sender into given receivers' queries
  (``circuit.paths.path_patch(..., receiver_input="q", per_prompt=True)``).

Patching sweeps use the study's normalised metric (clean 1, corrupted 0, batch-mean
baselines), so per-prompt effects are fractions of the clean-corrupted gap.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformer_lens.model_bridge import TransformerBridge

from circuit.claims import Head
from circuit.dataset import SyllogismDataset
from circuit.metrics import LogitDiffMetric, logit_diff
from circuit.sweeps import SubjectKey, SweepResult, SweepStore


@dataclass(frozen=True)
class Subject:
    """One model on one dataset, with the store its sweeps are kept in.

    ``fingerprint`` must change whenever the weights, the dataset or the measuring code
    does (see :func:`circuit.sweeps.model_fingerprint` and friends); it keys the disk cache.
    """

    model: TransformerBridge
    dataset: SyllogismDataset
    key: SubjectKey
    store: SweepStore
    fingerprint: str = ""

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.model.cfg.n_heads)

    def sweep(self, name: str, params: object, compute) -> SweepResult:
        """``compute()`` once per run (and cache) for this subject, name and params."""
        return self.store.get(self.key, name, params, compute, self.fingerprint)


def _device_tokens(subject: Subject, tokens: torch.Tensor) -> torch.Tensor:
    return tokens.to(subject.model.cfg.device)


@torch.no_grad()
def clean_run(subject: Subject) -> SweepResult:
    """One clean forward, per prompt and head (``[n, L, H]`` unless noted).

    ``dla``: the head's output at the final position, scaled by the final LayerNorm, dotted
    with the logit-difference direction (right minus wrong answer); with the other
    components it sums to ``logit_diff`` ``[n]``. ``write_right`` / ``write_wrong``: the
    same output dotted with the right / wrong answer's residual direction (the study's
    scatter). ``attention``: ``[n, L, H, pos]`` attention from the final position.
    """

    def compute() -> SweepResult:
        model, data = subject.model, subject.dataset
        tokens = _device_tokens(subject, data.clean_tokens)
        logits, cache = model.run_with_cache(tokens)
        stacked = cache.stack_head_results(layer=-1, pos_slice=-1)
        scaled = cache.apply_ln_to_stack(stacked, layer=-1, pos_slice=-1)  # [L*H, n, d]
        directions = model.tokens_to_residual_directions(data.answers.to(tokens.device))
        directions = directions.reshape(len(data), 2, -1)  # [n, 2, d]
        right = torch.einsum("knd,nd->nk", scaled, directions[:, 0])
        wrong = torch.einsum("knd,nd->nk", scaled, directions[:, 1])
        shape = (len(data), subject.n_layers, subject.n_heads)
        attention = torch.stack(
            [cache["pattern", layer][:, :, -1, :] for layer in range(subject.n_layers)], dim=1
        )  # [n, L, H, pos]
        return {
            "dla": (right - wrong).reshape(shape),
            "write_right": right.reshape(shape),
            "write_wrong": wrong.reshape(shape),
            "attention": attention,
            "logit_diff": logit_diff(logits, data.answers.to(logits.device)),
        }

    return subject.sweep("clean_run", None, compute)


@torch.no_grad()
def baselines(subject: Subject) -> SweepResult:
    """Per-prompt logit differences of the clean and the corrupted prompts (``[n]`` each)."""

    def compute() -> SweepResult:
        model, data = subject.model, subject.dataset
        answers = data.answers.to(model.cfg.device)
        clean = model(_device_tokens(subject, data.clean_tokens))
        corrupted = model(_device_tokens(subject, data.corrupted_tokens))
        return {"clean": logit_diff(clean, answers), "corrupted": logit_diff(corrupted, answers)}

    return subject.sweep("baselines", None, compute)


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
def value_by_position(subject: Subject) -> SweepResult:
    """``patched``: ``[n, L, pos, H]`` normalised metric with one head's clean ``v`` patched
    into the corrupted run at one position (transformer_lens.patching orientation)."""

    def compute() -> SweepResult:
        from circuit import patching

        data = subject.dataset
        patched = patching.patch_heads(
            subject.model,
            _device_tokens(subject, data.clean_tokens),
            _device_tokens(subject, data.corrupted_tokens),
            study_metric(subject),
            "v",
            by_position=True,
            per_prompt=True,
        )
        return {"patched": patched}

    return subject.sweep("value_by_position", None, compute)


@torch.no_grad()
def path_query(subject: Subject, receivers: Sequence[Head]) -> SweepResult:
    """``patched``: ``[n, L, H]`` normalised metric when each sender's path into the
    receivers' queries carries the corrupted run (NaN where no sender exists)."""
    ordered = sorted(set(receivers))

    def compute() -> SweepResult:
        from circuit import paths

        data = subject.dataset
        patched = paths.path_patch(
            subject.model,
            _device_tokens(subject, data.clean_tokens),
            _device_tokens(subject, data.corrupted_tokens),
            study_metric(subject),
            receivers=[(h.layer, h.head) for h in ordered],
            receiver_input="q",
            mode="freeze",
            per_prompt=True,
        )
        return {"patched": patched}

    return subject.sweep("path_query", ",".join(map(str, ordered)), compute)
