"""The verdict rule's calibration: nothing CONFIRMED on random weights, FDR at most alpha."""

import numpy as np
import pytest

from circuit.__main__ import main
from circuit.calibration import (
    KINDS_CALIBRATED,
    calibrate_random_models,
    check_type,
    random_claims,
    simulate_fdr,
    synthetic_clusters,
)
from circuit.statistics import Verdict, VerdictSettings

FAST = VerdictSettings(n_resamples=500, null_draws=500)


def test_random_claims_are_well_formed_for_every_kind():
    rng = np.random.default_rng(0)
    for kind in KINDS_CALIBRATED:
        claims = random_claims(kind, 4, 8, rng, 30)
        assert len(claims) == 30
        for claim in claims:
            heads = claim.primary_heads
            assert 1 <= len(heads) <= 4
            assert len(set(heads)) == len(heads)
            if kind == "query-influencers":
                last = max(r.layer for r in claim.heads["receivers"])
                assert all(s.layer < last for s in heads)
    receivers = {c.heads["receivers"] for c in random_claims("query-influencers", 4, 8, rng, 30)}
    assert len(receivers) <= 2  # path patching runs at most twice per call


def test_check_type_drops_the_head():
    assert check_type("share[L3H6]") == "share[head]"
    assert check_type("effect@descriptor[L10H12]") == "effect@descriptor[head]"
    assert check_type("top-4") == "top-4"


def test_random_models_confirm_nothing_small_ensemble():
    report = calibrate_random_models("bundled", [0, 1], 6, n_pairs=24, settings=FAST)
    assert report.models == ["random:bundled:0", "random:bundled:1"]
    for kind, tally in report.tallies.items():
        assert tally.claims == 6, kind
        assert tally.outcomes[str(Verdict.CONFIRMED)] == 0, tally.examples
        assert tally.outcomes["ERROR"] < tally.claims, tally.examples  # measured, not skipped
        assert sum(tally.checks_confirmed.values()) == 0, tally.checks_confirmed
    assert report.false_confirmed() == 0
    assert "word-movers" in report.table()


def test_simulated_fdr_stays_at_or_below_alpha_and_the_rule_has_power():
    result = simulate_fdr(runs=20, checks_per_run=12, settings=FAST, seed=1)
    assert result.fdr <= 0.05, result.text()
    assert result.false_confirmed_rate <= 0.05, result.text()
    assert result.power > 0.5, result.text()  # true effects are found: the rule is not mute


def test_synthetic_design_has_the_crossed_factors():
    clusters = synthetic_clusters(np.random.default_rng(0), 56)
    assert clusters.names == ("pair", "category", "noun")
    assert clusters.n == 112
    np.testing.assert_array_equal(clusters.codes[:, 0::2], clusters.codes[:, 1::2])


def test_calibrate_command_refuses_a_non_random_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--model", "bundled"])
    assert exit_info.value.code == 2
    assert "random:<shape>" in capsys.readouterr().err
