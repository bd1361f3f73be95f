import pytest
import torch

from circuit.metrics import LogitDiffMetric, MetricError, logit_diff, normalised_metric


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
