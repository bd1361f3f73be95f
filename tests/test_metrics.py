import pytest
import torch

from circuit.metrics import (
    READS_ALL,
    READS_FINAL,
    EveryPosition,
    LogitDiffMetric,
    MetricError,
    VariantCalls,
    logit_diff,
    metric_access,
    normalised_metric,
)


def _logits(values: list[list[float]], seq: int = 3) -> torch.Tensor:
    final = torch.tensor(values)
    return torch.cat([torch.zeros(len(values), seq - 1, final.shape[1]), final[:, None]], dim=1)


def test_logit_diff_reads_the_final_position_per_prompt():
    logits = _logits([[1.0, 4.0, 0.0], [2.0, 0.0, 5.0]])
    logits[:, 0] = 100.0
    answers = torch.tensor([[1, 0], [0, 2]])
    assert torch.equal(logit_diff(logits, answers), torch.tensor([3.0, -3.0]))


def test_normalised_metric_is_one_on_clean_and_zero_on_corrupted():
    answers = torch.tensor([[0, 1], [1, 0]])
    clean = _logits([[3.0, 0.0], [0.0, 1.0]])
    corrupted = _logits([[0.0, 2.0], [1.0, 0.5]])
    metric = normalised_metric(clean, corrupted, answers)
    assert metric(clean).item() == pytest.approx(1.0)
    assert metric(corrupted).item() == pytest.approx(0.0)
    per_prompt = metric.with_per_prompt(True)(clean)
    assert per_prompt.shape == (2,)
    assert per_prompt.mean().item() == pytest.approx(1.0)


def test_per_prompt_mean_equals_the_batch_metric():
    answers = torch.tensor([[0, 1], [1, 0], [0, 1]])
    metric = LogitDiffMetric(answers, clean_baseline=2.0, corrupted_baseline=-1.0)
    logits = _logits([[1.0, 0.0], [0.3, 2.0], [4.0, -1.0]])
    assert metric.with_per_prompt(True)(logits).mean().item() == pytest.approx(
        metric(logits).item()
    )


def test_from_answer_logits_keeps_leading_dims():
    metric = LogitDiffMetric(torch.tensor([[0, 1], [1, 0]]), per_prompt=True)
    answer_logits = torch.randn(5, 7, 2, 2)
    assert metric.from_answer_logits(answer_logits).shape == (5, 7, 2)
    assert metric.with_per_prompt(False).from_answer_logits(answer_logits).shape == (5, 7)


def test_baselines_too_close_to_normalise_raise():
    answers = torch.tensor([[0, 1]])
    same = _logits([[1.0, 0.0]])
    with pytest.raises(MetricError, match="normalised metric is undefined"):
        normalised_metric(same, same, answers)


def test_mismatched_shapes_raise():
    with pytest.raises(MetricError, match="do not match answers"):
        logit_diff(torch.zeros(3, 4, 5), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(MetricError, match=r"\[n, 2\]"):
        LogitDiffMetric(torch.zeros(3, dtype=torch.long))
    with pytest.raises(MetricError, match="both baselines"):
        LogitDiffMetric(torch.zeros(3, 2, dtype=torch.long), clean_baseline=1.0)


# --- what a callable metric reads (the one decision) -------------------------------------


SEQ = 5


def _access(metric, n: int = 3, vocab: int = 40):
    """:func:`metric_access` on random final-position logits of a clean and a corrupted run."""
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(n, 1, vocab, generator=generator)
    corrupted = torch.randn(n, 1, vocab, generator=generator)
    return metric_access(metric, (clean, corrupted), SEQ)


RIGHT, WRONG = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])


def _final_metric(logits):
    return (logits[:, -1, RIGHT] - logits[:, -1, WRONG]).mean()


def test_a_logit_diff_metric_reads_the_answers_only():
    access = metric_access(LogitDiffMetric(torch.tensor([[0, 1]])))
    assert access.answers_only
    assert access.final_only


@pytest.mark.parametrize(
    "metric",
    [
        _final_metric,
        lambda logits: logits[:, -1, RIGHT] - logits[:, -1, WRONG],  # per prompt
        lambda logits: logits[:, -1].log_softmax(-1)[:, 3].mean(),  # the whole vocabulary
        lambda logits: logits[:, -1:].max(),  # a reduction over the (one) position
    ],
)
def test_final_position_metrics_are_recognised(metric):
    access = _access(metric)
    assert access.reads == READS_FINAL, access.reason
    assert not access.answers_only


@pytest.mark.parametrize(
    "metric",
    [
        lambda logits: logits[:, 0, 3].mean(),  # position 0
        lambda logits: logits.mean(),  # every position
        lambda logits: logits[:, -2, 3].mean() * 0 + logits[:, -1, 3].mean(),  # 0 * NaN
        lambda logits: logits.nan_to_num()[:, 1, 3].mean(),  # NaN-proof, caught by the swap
        lambda logits: logits[:, SEQ - 1, 3].mean(),  # an absolute index: fails on [n, 1, vocab]
        lambda logits: logits[:, :, 3].amax(),  # the largest over positions
    ],
)
def test_metrics_reading_earlier_positions_are_detected(metric):
    access = _access(metric)
    assert access.reads == READS_ALL, access.reason


def test_no_baselines_or_every_position_means_full_logits():
    assert metric_access(_final_metric).reads == READS_ALL
    assert _access(EveryPosition(_final_metric)).reads == READS_ALL


def test_variant_calls_vectorise_or_fall_back_with_a_reason():
    logits = torch.randn(4, 3, 1, 11)
    want = torch.stack([_final_metric(variant) for variant in logits])
    calls = VariantCalls(_final_metric, torch.as_tensor)
    assert torch.allclose(calls(logits), want)
    assert calls.fallback is None

    def branching(logits):
        if bool(logits[0, -1, 0] > 100):
            return logits[:, -1, 0].mean()
        return _final_metric(logits)

    calls = VariantCalls(branching, torch.as_tensor)
    assert torch.allclose(calls(logits), want)
    assert calls.fallback is not None
    assert "vmap failed" in calls.fallback


def test_the_columns_a_final_position_metric_reads_are_found():
    access = _access(_final_metric)
    assert access.columns is not None
    assert access.columns.tolist() == [1, 2, 3, 4, 5, 6]
    assert _access(lambda logits: logits[:, -1].log_softmax(-1)[:, 3].mean()).columns is None
    assert _access(lambda logits: logits[:, -1].argmax(-1).float().mean()).columns is None


def test_columns_are_found_inside_inference_mode():
    """The sweeps probe the metric under ``torch.inference_mode``."""
    with torch.inference_mode():
        access = _access(_final_metric)
    assert access.columns is not None
    assert access.columns.tolist() == [1, 2, 3, 4, 5, 6]
