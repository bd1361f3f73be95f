"""The verdict rule: intervals, nulls, p-values, Benjamini-Hochberg, verdicts."""

from itertools import combinations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import stats

from circuit.heads import Head
from circuit.kinds.common import (
    layer_range_pool,
    spearman_per_column,
    top_k_margin,
    weighted_spearman,
)
from circuit.statistics import (
    Clusters,
    Evidence,
    Measured,
    Side,
    Verdict,
    VerdictSettings,
    bootstrap_replicates,
    bootstrap_weights,
    correct,
    correct_pooled,
    judge_all,
    measure,
    null_p_value,
    percentile_interval,
    permuted_columns_null,
    permuted_pairs_null,
    verdict_of,
    weighted_mean,
    worst,
)

SETTINGS = VerdictSettings(n_resamples=500, null_draws=500, seed=3)


def _mean(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return weighted_mean(batch, weights)


def _independent(n: int) -> Clusters:
    return Clusters.independent(n)


def _evidence(values: np.ndarray, threshold: float, null_values: np.ndarray) -> Evidence:
    def null(rng: np.random.Generator, draws: int) -> np.ndarray:
        return rng.choice(null_values, size=draws)

    clusters = _independent(len(values))
    return Evidence("mean", values, clusters, _mean, threshold, Side.AT_LEAST, null, "test null")


def _measured(
    low: float, high: float, p: float, side: Side = Side.AT_LEAST, clusters: int = 10
) -> Measured:
    return Measured(
        "c", (low + high) / 2, low, high, 0.5, side, p, "null", 0.0, 10, "", n_clusters=clusters
    )


@pytest.mark.parametrize(
    ("low", "high", "p", "expected"),
    [
        (0.6, 0.9, 0.01, Verdict.CONFIRMED),
        (0.6, 0.9, 0.2, Verdict.INCONCLUSIVE),  # interval clears, p does not
        (0.4, 0.9, 0.001, Verdict.INCONCLUSIVE),  # p clears, interval straddles
        (0.5, 0.9, 0.001, Verdict.INCONCLUSIVE),  # touching the threshold is not clearing
        (0.1, 0.4, 0.001, Verdict.REFUTED),
        (0.1, 0.4, 0.9, Verdict.REFUTED),
    ],
)
def test_verdict_rule(low, high, p, expected):
    assert verdict_of(_measured(low, high, p), p, alpha=0.05) is expected


def test_too_few_clusters_is_inconclusive_whatever_the_numbers():
    few = _measured(0.6, 0.9, 0.001, clusters=5)
    assert verdict_of(few, 0.001, alpha=0.05) is Verdict.INCONCLUSIVE
    judged = judge_all([few], alpha=0.05)[0]
    assert "at least 8 independent clusters (it has 5" in judged.explanation()
    assert verdict_of(_measured(0.1, 0.4, 0.001, clusters=5), 0.001, 0.05) is Verdict.REFUTED


def test_a_nan_interval_is_never_confirmed():
    assert verdict_of(_measured(float("nan"), 0.9, 0.001), 0.001, 0.05) is Verdict.INCONCLUSIVE


def test_verdict_rule_at_most_side():
    assert verdict_of(_measured(0.1, 0.4, 0.01, Side.AT_MOST), 0.01, 0.05) is Verdict.CONFIRMED
    assert verdict_of(_measured(0.6, 0.9, 0.01, Side.AT_MOST), 0.01, 0.05) is Verdict.REFUTED


def test_claim_verdict_is_the_worst_check():
    assert worst([Verdict.CONFIRMED, Verdict.INCONCLUSIVE]) is Verdict.INCONCLUSIVE
    assert worst([Verdict.REFUTED, Verdict.INCONCLUSIVE, Verdict.CONFIRMED]) is Verdict.REFUTED
    assert worst([Verdict.CONFIRMED]) is Verdict.CONFIRMED


def test_strong_effect_is_confirmed_and_wrong_side_refuted():
    rng = np.random.default_rng(0)
    strong = rng.normal(1.0, 0.2, size=60)
    weak = rng.normal(0.0, 0.2, size=60)
    null = rng.normal(0.0, 0.05, size=1000)
    judged = judge_all(
        [
            measure(_evidence(strong, 0.5, null), SETTINGS, "strong"),
            measure(_evidence(weak, 0.5, null), SETTINGS, "weak"),
            measure(_evidence(rng.normal(0.5, 1.0, size=60), 0.5, null), SETTINGS, "noisy"),
        ],
        alpha=0.05,
    )
    assert [j.verdict for j in judged] == [
        Verdict.CONFIRMED,
        Verdict.REFUTED,
        Verdict.INCONCLUSIVE,
    ]
    message = judged[1].explanation()
    for part in ("statistic", "CI", "0.5", "p =", "corrected p", "needed"):
        assert part in message


def test_measurement_is_deterministic_and_seeded_by_identity():
    values = np.random.default_rng(1).normal(1, 1, size=40)
    evidence = _evidence(values, 0.5, np.zeros(10))
    first = measure(evidence, SETTINGS, "claim", "heldout")
    assert measure(evidence, SETTINGS, "claim", "heldout") == first
    assert measure(evidence, SETTINGS, "claim", "unfiltered") != first


def test_bootstrap_interval_covers_the_mean_of_a_known_sample():
    rows = np.random.default_rng(2).normal(3.0, 1.0, size=400)
    replicates = bootstrap_replicates(
        rows, _independent(400), _mean, np.random.default_rng(0), 1000
    )
    low, high = percentile_interval(replicates, 0.95)
    assert low < 3.0 < high
    assert high - low == pytest.approx(2 * 1.96 / 20, rel=0.25)


def test_bootstrap_weights_resample_whole_levels_of_every_factor():
    codes = {"pair": list("aabbccdd"), "noun": list("xyxyxyxy")}
    clusters = Clusters.from_labels(codes)
    weights = bootstrap_weights(clusters, np.random.default_rng(0), 500)
    assert weights.shape == (500, 8)
    replay = np.random.default_rng(0)
    pairs = replay.multinomial(4, [0.25] * 4, size=500)  # each level drawn with replacement
    nouns = replay.multinomial(2, [0.5] * 2, size=500)
    expected = pairs[:, [0, 0, 1, 1, 2, 2, 3, 3]] * nouns[:, [0, 1] * 4]
    np.testing.assert_array_equal(weights, expected)  # a prompt's weight: product of counts
    assert clusters.levels == (4, 2)
    assert clusters.n_clusters == 2
    assert clusters.primary_name() == "noun"


def test_cluster_bootstrap_is_wider_than_a_prompt_bootstrap_when_clusters_share_effects():
    rng = np.random.default_rng(7)
    levels = np.repeat(np.arange(8), 20)  # 8 clusters of 20 prompts sharing an effect
    rows = rng.normal(0, 1, size=8)[levels] + rng.normal(0, 0.1, size=160)
    naive = percentile_interval(
        bootstrap_replicates(rows, _independent(160), _mean, np.random.default_rng(0), 1000), 0.95
    )
    clustered = Clusters.from_labels({"pair": [str(v) for v in levels]})
    honest = percentile_interval(
        bootstrap_replicates(rows, clustered, _mean, np.random.default_rng(0), 1000), 0.95
    )
    assert honest[1] - honest[0] > 3 * (naive[1] - naive[0])


def test_bootstrap_resamples_rows_jointly():
    x = np.random.default_rng(3).normal(size=50)
    rows = np.stack([x, x], axis=1)  # two identical columns stay identical in every resample

    def gap(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
        means = weighted_mean(batch, weights)
        return means[:, 0] - means[:, 1]

    replicates = bootstrap_replicates(rows, _independent(50), gap, np.random.default_rng(0), 200)
    assert percentile_interval(replicates, 0.95) == (0.0, 0.0)


def test_a_floor_check_takes_its_p_from_the_bootstrap():
    rows = np.random.default_rng(4).normal(1.0, 0.2, size=(40,))
    evidence = Evidence("floor", rows, _independent(40), _mean, 0.5, Side.AT_LEAST, None, "boot")
    measured = measure(evidence, SETTINGS, "floor")
    assert measured.p == pytest.approx(1 / (1 + SETTINGS.n_resamples))
    below = Evidence("floor", rows - 0.8, _independent(40), _mean, 0.5, Side.AT_LEAST, None, "b")
    assert measure(below, SETTINGS, "floor").p == pytest.approx(1.0)


def test_pooled_checks_enter_the_correction_once():
    gap = _measured(0.6, 0.9, 0.001)
    pooled = [Measured(**{**gap.__dict__, "pooled": "gap"}) for _ in range(5)]
    other = _measured(0.6, 0.9, 0.04)
    adjusted = correct_pooled([*pooled, other], *(["subject"] * 6))
    np.testing.assert_allclose(adjusted, correct([0.001, 0.04])[[0, 0, 0, 0, 0, 1]])
    separate = correct_pooled([*pooled, other], "a", "b", "c", "d", "e", "f")
    np.testing.assert_allclose(separate, correct([0.001] * 5 + [0.04]))


def test_p_value_counts_the_null_at_least_as_extreme():
    null = np.arange(99, dtype=float)  # 0..98
    assert null_p_value(98.5, null, Side.AT_LEAST) == pytest.approx(1 / 100)
    assert null_p_value(-1.0, null, Side.AT_LEAST) == pytest.approx(1.0)
    assert null_p_value(49.0, null, Side.AT_LEAST) == pytest.approx(51 / 100)
    assert null_p_value(-1.0, null, Side.AT_MOST) == pytest.approx(1 / 100)


@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=30))
def test_benjamini_hochberg_is_monotone_and_no_smaller(ps):
    adjusted = correct(ps)
    assert np.all(adjusted >= np.asarray(ps) - 1e-12)
    order = np.argsort(ps)
    assert np.all(np.diff(adjusted[order]) >= -1e-12)


def test_correction_spans_every_check_of_the_run():
    measured = [_measured(0.6, 0.9, p) for p in (0.01, 0.04, 0.04, 0.04)]
    alone = judge_all(measured[:1], alpha=0.05)
    together = judge_all(measured, alpha=0.05)
    assert alone[0].p_corrected == pytest.approx(0.01)
    assert together[0].p_corrected == pytest.approx(0.04)
    assert all(j.verdict is Verdict.CONFIRMED for j in together)
    assert judge_all([_measured(0.6, 0.9, p) for p in (0.03, 0.9)], 0.05)[0].verdict is (
        Verdict.INCONCLUSIVE
    )


def _capture(captured: list):
    def statistic(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
        captured.append(batch.copy())
        return batch.reshape(len(batch), -1).mean(axis=1)

    return statistic


def test_permuted_columns_null_permutes_pool_labels_within_each_prompt():
    rows = np.arange(12, dtype=float).reshape(3, 4)
    captured: list = []
    draws = permuted_columns_null(rows, np.array([0, 1, 2]), _capture(captured), _independent(3))(
        np.random.default_rng(0), 50
    )
    batch = captured[0]
    assert draws.shape == (50,)
    assert batch.shape == (50, 3, 4)
    np.testing.assert_array_equal(batch[:, :, 3], np.broadcast_to(rows[:, 3], (50, 3)))
    np.testing.assert_array_equal(
        np.sort(batch[:, :, :3], axis=2), np.broadcast_to(rows[:, :3], (50, 3, 3))
    )
    first_columns = {tuple(b[:, 0]) for b in batch}
    assert len(first_columns) > 10  # sets drawn afresh per cluster: many distinct outcomes


def test_permuted_columns_null_shares_one_draw_per_cluster():
    rows = np.tile(np.arange(5, dtype=float), (6, 1))  # 6 prompts, identical rows
    clusters = Clusters.from_labels({"pair": list("aabbcc")})
    captured: list = []
    permuted_columns_null(rows, np.arange(5), _capture(captured), clusters)(
        np.random.default_rng(0), 40
    )
    batch = captured[0]
    for twin in (0, 2, 4):
        np.testing.assert_array_equal(batch[:, twin], batch[:, twin + 1])
    assert not np.array_equal(batch[:, 0], batch[:, 2])


def test_permuted_pairs_null_shuffles_the_pairing_across_prompts():
    rows = np.random.default_rng(1).normal(size=(6, 2, 3))
    captured: list = []
    permuted_pairs_null(rows, _capture(captured), _independent(6))(np.random.default_rng(0), 20)
    batch = captured[0]
    np.testing.assert_array_equal(batch[:, :, 0], np.broadcast_to(rows[:, 0], (20, 6, 3)))
    for draw in batch:
        order = [int(np.flatnonzero(rows[:, 1, 0] == v)[0]) for v in draw[:, 1, 0]]
        assert sorted(order) == list(range(6))
        np.testing.assert_array_equal(draw[:, 1], rows[order, 1])  # one permutation for all


def test_permuted_pairs_null_keeps_each_value_in_its_cluster():
    rows = np.random.default_rng(2).normal(size=(8, 2, 1))
    labels = list("aabbbccd")
    captured: list = []
    clusters = Clusters.from_labels({"pair": labels})
    permuted_pairs_null(rows, _capture(captured), clusters)(np.random.default_rng(0), 30)
    for draw in captured[0]:
        for i in range(8):
            source = int(np.flatnonzero(rows[:, 1, 0] == draw[i, 1, 0])[0])
            assert labels[source] == labels[i]


def test_within_prompt_null_is_calibrated_under_exchangeable_heads():
    rng = np.random.default_rng(5)

    def first_column(batch: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return weighted_mean(batch, weights)[:, 0]

    ps = []
    for _ in range(200):
        rows = rng.normal(size=(20, 8))
        null = permuted_columns_null(rows, np.arange(8), first_column, _independent(20))(rng, 200)
        ps.append(null_p_value(float(rows[:, 0].mean()), null, Side.AT_LEAST))
    rate = np.mean(np.asarray(ps) < 0.05)
    assert 0.01 <= rate <= 0.1  # nominal 0.05


def _brute_margin(means: np.ndarray, chosen: tuple[int, ...], k: int, cand: np.ndarray) -> float:
    others = sorted((means[i] for i in np.flatnonzero(cand) if i not in chosen), reverse=True)
    return min(means[list(chosen)]) - others[k - len(chosen)]


@given(
    st.lists(st.floats(-5, 5), min_size=6, max_size=12, unique=True),
    st.integers(1, 3),
    st.integers(0, 2),
)
def test_top_k_margin_matches_brute_force(values, size, extra):
    means = np.asarray(values)
    assume(size + extra < means.size - 1)  # top-k must leave a competitor outside the top k
    candidates = np.ones(means.size, dtype=bool)
    candidates[-1] = False
    k = size + extra
    sets = np.array(list(combinations(range(means.size - 1), size)))
    margins = top_k_margin(np.broadcast_to(means, (len(sets), means.size)), sets, k, candidates)
    for chosen, margin in zip(sets, margins, strict=True):
        expected = _brute_margin(means, tuple(chosen), k, candidates)
        assert margin == pytest.approx(expected)
        ranks = np.argsort(-np.where(candidates, means, -np.inf))[:k]
        assert (margin > 0) == set(chosen).issubset(ranks)


def test_spearman_matches_scipy():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
    y[:, 0] = x[:, 0] ** 3  # monotone: rho 1
    ours = spearman_per_column(x, y)
    expected = [stats.spearmanr(x[:, j], y[:, j]).statistic for j in range(3)]
    np.testing.assert_allclose(ours, expected)
    assert ours[0] == pytest.approx(1.0)
    assert spearman_per_column(np.ones((5, 1)), x[:5, :1])[0] == 0.0


def test_weighted_spearman_equals_spearman_of_the_replicated_sample():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(12, 2)), rng.normal(size=(12, 2))
    x[3, 0] = x[5, 0]  # a tie
    weights = rng.integers(0, 4, size=(5, 12)).astype(float)
    ours = weighted_spearman(x[None], y[None], weights)
    for b in range(5):
        index = np.repeat(np.arange(12), weights[b].astype(int))
        expected = [stats.spearmanr(x[index, j], y[index, j]).statistic for j in range(2)]
        np.testing.assert_allclose(ours[b], expected, atol=1e-12)
    np.testing.assert_allclose(
        weighted_spearman(x[None], y[None], np.ones((1, 12)))[0], spearman_per_column(x, y)
    )


def test_layer_range_pool_is_the_claimed_layers_unless_empty():
    pool, text = layer_range_pool([Head(18, 0), Head(19, 4), Head(20, 2)], 24, 16)
    assert set(pool // 16) == {18, 19, 20}
    assert pool.size == 48
    assert "L18-L20" in text
    allowed = np.zeros(2 * 4, dtype=bool)
    allowed[[4, 1]] = True  # only L1H0 (claimed) and L0H1 have a path
    widened, text = layer_range_pool([Head(1, 0)], n_layers=2, n_heads=4, allowed=allowed)
    assert sorted(widened.tolist()) == [1, 4]
    assert "L0-L1" in text
