"""Logit-difference metrics at the final position, raw and normalised.

Shapes: ``n`` prompts, ``seq`` positions, ``vocab`` logits. ``answers`` is a LongTensor
``[n, 2]`` holding, per prompt, the right and the wrong answer token.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

MIN_BASELINE_GAP = 1e-3
"""Clean and corrupted baselines closer than this cannot be normalised."""


class MetricError(ValueError):
    """A metric cannot be computed from the given inputs."""


def final_answer_logits(
    logits: Float[torch.Tensor, "n seq vocab"] | Float[torch.Tensor, "n vocab"],
    answers: Int[torch.Tensor, "n 2"],
) -> Float[torch.Tensor, "n 2"]:
    """The logits of the right and wrong answer at the final position."""
    if logits.ndim == 3:
        logits = logits[:, -1, :]
    if logits.ndim != 2 or logits.shape[0] != answers.shape[0]:
        raise MetricError(
            f"logits of shape {tuple(logits.shape)} do not match answers of shape "
            f"{tuple(answers.shape)}: expected [n, seq, vocab] or [n, vocab] with n = "
            f"{answers.shape[0]}"
        )
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
        if self.answers.ndim != 2 or self.answers.shape[1] != 2:
            raise MetricError(f"answers must be [n, 2], got {tuple(self.answers.shape)}")
        if (self.clean_baseline is None) != (self.corrupted_baseline is None):
            raise MetricError("give both baselines or neither")
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
