"""Logit-difference metrics at the final position, raw and normalised.

Shapes: ``n`` prompts, ``seq`` positions, ``vocab`` logits. ``answers`` is a LongTensor
``[n, 2]`` holding, per prompt, the right and the wrong answer token.
"""

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

MIN_BASELINE_GAP = 1e-3
"""Clean and corrupted baselines closer than this cannot be normalised."""


class MetricError(ValueError):
    """A metric cannot be computed from the given inputs."""


def check_answer_ids(answers: object, name: str = "answers") -> None:
    """``answers`` is an integer ``[n, 2]`` tensor of non-negative token ids."""
    if not isinstance(answers, torch.Tensor):
        raise MetricError(f"{name} must be a torch.Tensor [n, 2], got {type(answers).__name__}")
    if answers.dtype != torch.long:
        raise MetricError(
            f"{name} must be a LongTensor of token ids, got {answers.dtype} (float or bool ids "
            "cannot index the vocabulary)"
        )
    if answers.ndim != 2 or answers.shape[1] != 2:
        raise MetricError(f"{name} must be [n, 2], got {tuple(answers.shape)}")
    if answers.numel() and int(answers.min()) < 0:
        where = [int(i) for i in (answers < 0).nonzero()[0]]
        raise MetricError(
            f"{name} holds token id {int(answers[tuple(where)])} at {where}: token ids must be "
            ">= 0 (a negative id would index from the end of the vocabulary)"
        )


def _check_vocab(answers: torch.Tensor, vocab: int, name: str = "answers") -> None:
    if answers.numel() and int(answers.max()) >= vocab:
        where = [int(i) for i in (answers >= vocab).nonzero()[0]]
        raise MetricError(
            f"{name} holds token id {int(answers[tuple(where)])} at {where}, outside the "
            f"vocabulary of {vocab} logits"
        )


def final_answer_logits(
    logits: Float[torch.Tensor, "n seq vocab"] | Float[torch.Tensor, "n vocab"],
    answers: Int[torch.Tensor, "n 2"],
) -> Float[torch.Tensor, "n 2"]:
    """The logits of the right and wrong answer at the final position."""
    check_answer_ids(answers)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        what = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise MetricError(f"logits must be a floating-point tensor, got {what}")
    if logits.ndim == 3:
        logits = logits[:, -1, :]
    if logits.ndim != 2 or logits.shape[0] != answers.shape[0]:
        raise MetricError(
            f"logits of shape {tuple(logits.shape)} do not match answers of shape "
            f"{tuple(answers.shape)}: expected [n, seq, vocab] or [n, vocab] with n = "
            f"{answers.shape[0]}"
        )
    _check_vocab(answers, logits.shape[-1])
    return logits.gather(1, answers.to(logits.device))


def logit_diff(
    logits: Float[torch.Tensor, "n seq vocab"] | Float[torch.Tensor, "n vocab"],
    answers: Int[torch.Tensor, "n 2"],
) -> Float[torch.Tensor, " n"]:
    """Per-prompt logit difference (right minus wrong) at the final position."""
    answer_logits = final_answer_logits(logits, answers)
    return answer_logits[:, 0] - answer_logits[:, 1]


@dataclass(frozen=True)
class LogitDiffMetric:
    """The study's metric: logit difference at the final position, optionally normalised.

    With both baselines set the value is ``(ld - corrupted) / (clean - corrupted)``, so the
    clean run scores 1 and the corrupted run 0; the baselines are batch means, as in the
    study, so the mean of the per-prompt values equals the study's batch metric.
    ``per_prompt`` selects a ``[n]`` result instead of the batch mean (a scalar).

    Fast routines that compute only the answer logits call :meth:`from_answer_logits`.
    """

    answers: Int[torch.Tensor, "n 2"]
    clean_baseline: float | None = None
    corrupted_baseline: float | None = None
    per_prompt: bool = False

    def __post_init__(self) -> None:
        check_answer_ids(self.answers)
        if (self.clean_baseline is None) != (self.corrupted_baseline is None):
            raise MetricError("give both baselines or neither")
        for name in ("clean_baseline", "corrupted_baseline"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real | torch.Tensor):
                raise MetricError(f"{name} must be a number, got {value!r}")
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                raise MetricError(f"{name} must be a number, got a tensor of {value.numel()}")
            if not math.isfinite(float(value)):
                raise MetricError(f"{name} must be finite, got {float(value)}")
        if not isinstance(self.per_prompt, bool):
            raise MetricError(f"per_prompt must be True or False, got {self.per_prompt!r}")
        if self.normalised:
            gap = abs(float(self.clean_baseline) - float(self.corrupted_baseline))
            if gap < MIN_BASELINE_GAP:
                raise MetricError(
                    f"clean ({self.clean_baseline:.6g}) and corrupted "
                    f"({self.corrupted_baseline:.6g}) baselines are within "
                    f"{MIN_BASELINE_GAP:g}: the normalised metric is undefined"
                )

    @property
    def normalised(self) -> bool:
        """Whether values are scaled so that clean is 1 and corrupted is 0."""
        return self.clean_baseline is not None

    def with_per_prompt(self, per_prompt: bool) -> "LogitDiffMetric":
        """The same metric, returning per-prompt values (or the mean)."""
        return LogitDiffMetric(
            self.answers, self.clean_baseline, self.corrupted_baseline, per_prompt
        )

    def for_prompts(self, count: int) -> "LogitDiffMetric":
        """The same metric on the first ``count`` prompts, per prompt (the proofs re-run those)."""
        return LogitDiffMetric(
            self.answers[:count], self.clean_baseline, self.corrupted_baseline, True
        )

    def from_answer_logits(
        self, answer_logits: Float[torch.Tensor, "... n 2"]
    ) -> Float[torch.Tensor, "... n"] | Float[torch.Tensor, "..."]:
        """The metric from right/wrong answer logits; leading batch dims are kept."""
        diff = answer_logits[..., 0] - answer_logits[..., 1]
        if self.normalised:
            diff = (diff - self.corrupted_baseline) / (
                self.clean_baseline - self.corrupted_baseline
            )
        return diff if self.per_prompt else diff.mean(dim=-1)

    def __call__(
        self, logits: Float[torch.Tensor, "n seq vocab"] | Float[torch.Tensor, "n vocab"]
    ) -> Float[torch.Tensor, " n"] | Float[torch.Tensor, ""]:
        return self.from_answer_logits(final_answer_logits(logits, self.answers))


def normalised_metric(
    clean_logits: Float[torch.Tensor, "n seq vocab"],
    corrupted_logits: Float[torch.Tensor, "n seq vocab"],
    answers: Int[torch.Tensor, "n 2"],
    per_prompt: bool = False,
) -> LogitDiffMetric:
    """The normalised metric with baselines measured from clean and corrupted logits."""
    clean = logit_diff(clean_logits, answers).mean()
    corrupted = logit_diff(corrupted_logits, answers).mean()
    baselines = torch.stack([clean, corrupted]).tolist()
    return LogitDiffMetric(answers, baselines[0], baselines[1], per_prompt)


Metric = LogitDiffMetric | Callable[[torch.Tensor], torch.Tensor]
"""What every patching routine accepts as its metric: a :class:`LogitDiffMetric`, or any
callable from logits ``[n, seq, vocab]`` to a scalar (or ``[n]`` per prompt)."""


def reads_answer_logits_only(metric: Metric) -> bool:
    """Whether ``metric`` is known to read only the right and wrong answers' logits at the
    final position, so that a sweep may compute just those logits (the fast path)."""
    return isinstance(metric, LogitDiffMetric)
