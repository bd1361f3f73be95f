"""Negative controls: the bundled model's claims fail where they must.

* its claim file judged on random weights of the same shape (``random:bundled``) confirms
  nothing;
* a word-mover claim naming the least important heads (by direct logit attribution on the
  judged data, chosen at run time, not hard-coded) is REFUTED on the bundled model;
* a value-position claim naming the wrong role is REFUTED on the bundled model.

Datasets are small (``n_pairs`` = :data:`N_PAIRS`) to keep the suite fast.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from circuit.claims import ClaimCase, ClaimFile, Head, load_claim_file
from circuit.kinds.measurements import Subject, clean_run
from circuit.sweeps import SubjectKey, SweepStore
from fixtures.claim_session import ClaimOptions, ModelCache, judge_cases, select_cases

BUNDLED_CLAIMS = Path(__file__).resolve().parent.parent / "claims" / "bundled.toml"
N_PAIRS = 16
VARIANT = "heldout"


@pytest.fixture(scope="module")
def models() -> ModelCache:
    cache = ModelCache(device="cpu")
    reason = cache.unavailable_reason("bundled", None)
    if reason is not None:
        pytest.skip(reason)
    return cache


@pytest.fixture(scope="module")
def bundled_file() -> ClaimFile:
    if not BUNDLED_CLAIMS.is_file():
        pytest.skip(f"{BUNDLED_CLAIMS} does not exist yet")
    claim_file = load_claim_file(BUNDLED_CLAIMS)
    recipe = dataclasses.replace(claim_file.dataset, n_pairs=N_PAIRS, variants=(VARIANT,))
    claims = tuple(dataclasses.replace(c, variants=(VARIANT,)) for c in claim_file.claims)
    return dataclasses.replace(claim_file, dataset=recipe, claims=claims)


def _claim(claim_file: ClaimFile, kind: str):
    return next(c for c in claim_file.claims if c.kind == kind)


def _judge(cases: list[ClaimCase], models: ModelCache) -> list:
    return list(judge_cases(cases, models, SweepStore()).values())


def test_bundled_claims_confirm_nothing_on_random_weights(bundled_file, models):
    cases = select_cases([bundled_file], ClaimOptions(model="random:bundled"))
    records = _judge(cases, models)
    assert len(records) == len(bundled_file.claims)
    assert [r.outcome for r in records if r.passed] == []
    movers = [r for r in records if r.kind == "word-movers"]
    assert movers
    assert all(r.error is None for r in movers)  # measured, and still not confirmed


def _least_important(models: ModelCache, size: int) -> tuple[Head, ...]:
    """The ``size`` heads with the smallest |mean direct logit attribution| on the data."""
    from circuit.syllogisms import build_dataset

    model = models.get("bundled", None)
    data = build_dataset(model, VARIANT, seed=42, n_pairs=N_PAIRS)
    key = SubjectKey("bundled", None, "float32", "cpu", VARIANT, 42, N_PAIRS)
    dla = clean_run(Subject(model, data, key, SweepStore()))["dla"].mean(dim=0).abs()
    flat = np.argsort(dla.flatten().numpy())[:size]
    n_heads = int(model.cfg.n_heads)
    return tuple(Head(int(i) // n_heads, int(i) % n_heads) for i in flat)


def test_least_important_heads_are_refuted(bundled_file, models):
    claim = _claim(bundled_file, "word-movers")
    wrong = _least_important(models, len(claim.primary_heads))
    assert set(wrong).isdisjoint(claim.primary_heads)
    heads = {**claim.heads, "heads": wrong}
    decoy = dataclasses.replace(claim, id="least-important", heads=heads)
    case = ClaimCase(bundled_file, decoy, VARIANT, "bundled", None)
    (record,) = _judge([case], models)
    assert record.outcome == "REFUTED", record.failure_message()


def test_wrong_role_is_refuted(bundled_file, models):
    claim = _claim(bundled_file, "value-position")
    wrong_role = "noun"
    assert claim.roles["position"] != wrong_role
    decoy = dataclasses.replace(claim, id="wrong-role", roles={"position": wrong_role})
    case = ClaimCase(bundled_file, decoy, VARIANT, "bundled", None)
    (record,) = _judge([case], models)
    assert record.outcome == "REFUTED", record.failure_message()
