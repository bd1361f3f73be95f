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

READS_ANSWERS, READS_FINAL, READS_ALL = "answers", "final", "all"
"""What a metric reads (:class:`MetricAccess`): the two answer logits at the final position, the
final position's logits, or every position's."""

FINAL_ONLY_CONTRACT = (
    "a callable metric that reads only the final position is called with the final position's "
    "logits alone, [n, 1, vocab] (index it as logits[:, -1]); one that reads earlier positions "
    "gets full logits [n, seq, vocab] (slow: the whole vocabulary unembedded at every position "
    "of every cell); wrap it in circuit.metrics.EveryPosition(metric) to force full logits"
)
"""The contract of the callable fast path, quoted in the docs and in error messages."""


def wrong_guess(access: "MetricAccess") -> str:
    """What to tell a user whose final-position metric misbehaved on the fast path."""
    return (
        f"The metric was judged to read only the final position ({access.reason}), but it "
        f"reads more on some inputs (a logit it was not seen to read reaches it as NaN; full "
        f"logits give another value). Contract: {FINAL_ONLY_CONTRACT}"
    )


@dataclass(frozen=True)
class EveryPosition:
    """A callable metric that must be given full logits ``[n, seq, vocab]`` (no probe, no fast
    path): for a metric that reads earlier positions only on some inputs."""

    metric: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.metric(logits)


@dataclass(frozen=True)
class MetricAccess:
    """What a metric reads (``reads``: :data:`READS_ANSWERS`, :data:`READS_FINAL` or
    :data:`READS_ALL`) and why it was judged so (``reason``)."""

    reads: str
    reason: str
    columns: torch.Tensor | None = None
    """With :data:`READS_FINAL`: the vocabulary ids the metric reads at the final position
    (found by autograd and checked with NaN elsewhere); None for every column. Only those
    columns are unembedded; the others reach the metric as NaN."""

    @property
    def answers_only(self) -> bool:
        """Only the two answer logits are computed, per prompt (:class:`LogitDiffMetric`)."""
        return self.reads == READS_ANSWERS

    @property
    def final_only(self) -> bool:
        """The last layer computes the final position only (answers, or its full logits)."""
        return self.reads in (READS_ANSWERS, READS_FINAL)


def reads_answer_logits_only(metric: Metric) -> bool:
    """Whether ``metric`` is known to read only the right and wrong answers' logits at the
    final position, so that a sweep may compute just those logits (the fastest path)."""
    return isinstance(metric, LogitDiffMetric)


def _same(got: object, want: torch.Tensor) -> bool:
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return False
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    return bool(torch.allclose(got.to(want), want, rtol=0, atol=1e-6 * scale))


def _probe(
    metric: Callable, final: torch.Tensor, other: torch.Tensor, probe: torch.Tensor
) -> str | None:
    """None when ``metric`` gives the same finite value on ``final`` (``[n, 1, vocab]``, what the
    fast path passes) as on ``[n, seq_len, vocab]`` logits ending with ``final`` whose earlier
    positions are all NaN, or all the other run's final logits ``other``; else why not.
    ``probe``: an ``[n, seq_len, vocab]`` buffer the probes are written into (one allocation
    for every probe: a fresh tensor of that size costs its page faults each time on CPU)."""
    want = metric(final)
    if not isinstance(want, torch.Tensor) or not bool(torch.isfinite(want).all()):
        return "its value on the final position's logits [n, 1, vocab] is not a finite tensor"
    want = want.clone()
    probe[:, :-1] = other
    probe[:, -1:] = final
    if not _same(metric(probe), want):
        return "it changes when the earlier positions hold the other run's logits"
    probe[:, :-1] = float("nan")
    if not _same(metric(probe), want):
        return "it reads the earlier positions (NaN there changes its value)"
    return None


def metric_access(
    metric: Metric,
    finals: tuple[torch.Tensor, torch.Tensor] | None = None,
    seq_len: int | None = None,
    probe: torch.Tensor | None = None,
) -> MetricAccess:
    """THE decision: what a sweep must compute for ``metric``.

    A :class:`LogitDiffMetric` reads the answer logits only. Any other callable is probed on
    ``finals``, the clean and the corrupted run's final-position logits ``[n, 1, vocab]``, for
    prompts of ``seq_len`` positions: it reads the final position only when, on each run, its
    value on the final position alone (what the fast path passes) is finite and equals its value
    on ``[n, seq_len, vocab]`` logits ending with that position whose earlier positions are all
    NaN, and all the other run's final logits. Then the vocabulary columns it reads are found
    (:func:`_read_columns`). ``probe``: an ``[n, seq_len, vocab]`` buffer to write the probes
    into (else one is allocated). A metric that reads earlier positions only on some inputs can pass
    the probe; the sweeps' runtime proof (the largest cell re-run through the model's hooks with
    full logits) then fails loudly. :class:`EveryPosition` skips the probe. See
    :data:`FINAL_ONLY_CONTRACT`.
    """
    if reads_answer_logits_only(metric):
        return MetricAccess(READS_ANSWERS, "a LogitDiffMetric reads the answer logits only")
    if isinstance(metric, EveryPosition):
        return MetricAccess(READS_ALL, "wrapped in EveryPosition")
    if finals is None or seq_len is None:
        return MetricAccess(READS_ALL, "no baseline logits to probe it on")
    clean, corrupted = finals
    if seq_len > 1:
        shape = (clean.shape[0], seq_len, clean.shape[2])
        if probe is None or tuple(probe.shape) != shape:
            probe = clean.new_empty(shape)
        for name, final, other in (("clean", clean, corrupted), ("corrupted", corrupted, clean)):
            try:
                why = _probe(metric, final, other, probe)
            except Exception as error:  # a metric that cannot take the probe reads everything
                why = f"it raised {type(error).__name__}: {str(error)[:120]}"
            if why is not None:
                return MetricAccess(READS_ALL, f"on the {name} run {why}")
    columns = _read_columns(metric, finals)
    reason = "its value on both runs depends on the final position only"
    if columns is not None:
        reason += f", and on {len(columns)} of its {clean.shape[-1]} logits"
    return MetricAccess(READS_FINAL, reason, columns)


def _read_columns(metric: Callable, finals: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """The vocabulary columns ``metric`` reads from final-position logits ``[n, 1, vocab]``:
    those with a non-zero gradient on either baseline, accepted only when the metric gives the
    same finite value with every other column NaN, or holding the other baseline's logits. None
    (read every column) for a metric autograd cannot differentiate, one that fails the check,
    or one that reads more than a quarter of the vocabulary."""
    vocab = finals[0].shape[-1]
    used = torch.zeros(vocab, dtype=torch.bool, device=finals[0].device)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for final in finals:
                x = final.detach().clone().requires_grad_(True)
                value = metric(x)
                if not isinstance(value, torch.Tensor) or not value.requires_grad:
                    return None
                (grad,) = torch.autograd.grad(value.sum(), x)
                used = used | (grad != 0).flatten(0, 1).any(dim=0)
        if not bool(used.any()) or int(used.sum()) * 4 > vocab:
            return None
        for final, other in ((finals[0], finals[1]), (finals[1], finals[0])):
            want = metric(final)
            for fill in (torch.full_like(final, float("nan")), other):
                probe = torch.where(used, final, fill)
                if not _same(metric(probe), want):
                    return None
    except Exception:  # a metric autograd or the probe cannot run reads every column
        return None
    return used.nonzero().flatten()


class VariantCalls:
    """Calls a callable metric on many patched variants at once.

    ``__call__`` takes logits ``[variants, n, pos, vocab]`` and returns ``[variants]`` (or
    ``[variants, n]`` per prompt): one ``torch.func.vmap`` call over the variant axis, checked
    once against a plain call of the first variant; when the metric cannot be vectorised
    (data-dependent control flow, ``.item()``, in-place writes to its input) or the check fails,
    one call per variant, and ``fallback`` says why. ``check`` validates one call's output.
    """

    def __init__(self, metric: Callable, check: Callable[[object], torch.Tensor]) -> None:
        self.metric = metric
        self.check = check
        self.fallback: str | None = None
        self._checked = False

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.fallback is None:
            try:
                values = torch.func.vmap(self.metric)(logits)
            except Exception as error:
                self.fallback = f"vmap failed ({type(error).__name__}: {str(error)[:100]})"
            else:
                if not self._checked:
                    first = self.check(self.metric(logits[0]))
                    if not isinstance(values, torch.Tensor) or not _same(values[0], first):
                        self.fallback = "vmap gave another value than a plain call"
                    self._checked = True
                if self.fallback is None:
                    return values
        return torch.stack([self.check(self.metric(variant)) for variant in logits])
