"""Negative controls: the bundled model's claims fail where they must.

* its claim file judged on random weights of the same shape (``random:bundled``) confirms
  nothing;
* a word-mover claim naming the least important heads (by direct logit attribution on the
  judged data, chosen at run time, not hard-coded) is REFUTED on the bundled model;
* a value-position claim naming the wrong role is REFUTED on the bundled model;
* a claim naming a dead head (the bundled model with its first claimed word mover's output
  zeroed) or silent heads (the four heads with the smallest direct logit attribution) is not
  CONFIRMED: the per-head floors catch it.

Datasets are small (``n_pairs`` = :data:`N_PAIRS`) to keep the suite fast.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from circuit.claims import ClaimCase, ClaimFile, load_claim_file
from circuit.heads import Head
from circuit.kinds.measurements import Subject, clean_run
from circuit.measurement_store import MeasurementStore, SubjectKey
from circuit.pipeline.cases import select_cases
from circuit.pipeline.judging import judge_cases
from circuit.pipeline.model_cache import ModelCache
from circuit.pipeline.options import ClaimOptions

BUNDLED_CLAIMS = Path(__file__).resolve().parents[2] / "claims" / "bundled.toml"
N_PAIRS = 16
VARIANT = "heldout"


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
    return list(judge_cases(cases, models, MeasurementStore()).values())


def test_bundled_claims_confirm_nothing_on_random_weights(bundled_file, models):
    cases = select_cases([bundled_file], ClaimOptions(model="random:bundled"))
    records = _judge(cases, models)
    assert len(records) == len(bundled_file.claims)
    assert [r.outcome for r in records if r.passed] == []
    movers = [r for r in records if r.kind == "word-movers"]
    assert movers
    assert all(r.error is None for r in movers)  # measured, and still not confirmed


def _least_important(
    models: ModelCache, size: int, family: str, exclude: frozenset[Head] = frozenset()
) -> tuple[Head, ...]:
    """The ``size`` heads with the smallest |mean direct logit attribution| on the data,
    ``exclude`` left out."""
    from circuit.syllogisms import build_dataset

    model = models.get("bundled", None)
    data = build_dataset(model, VARIANT, seed=42, n_pairs=N_PAIRS, family=family)
    key = SubjectKey("bundled", None, "float32", "cpu", VARIANT, 42, N_PAIRS, family)
    dla = clean_run(Subject(model, data, key, MeasurementStore()))["dla"].mean(dim=0).abs()
    n_heads = int(model.cfg.n_heads)
    ranked = (Head(int(i) // n_heads, int(i) % n_heads) for i in np.argsort(dla.flatten().numpy()))
    return tuple(head for head in ranked if head not in exclude)[:size]


def test_least_important_heads_are_refuted(bundled_file, models):
    claim = _claim(bundled_file, "word-movers")
    wrong = _least_important(models, len(claim.primary_heads), bundled_file.dataset.family)
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


# --- dead and silent heads: the effect-size floors ---------------------------------------

FLOOR_PAIRS = 56


def _at_size(claim_file: ClaimFile, n_pairs: int) -> ClaimFile:
    return dataclasses.replace(
        claim_file, dataset=dataclasses.replace(claim_file.dataset, n_pairs=n_pairs)
    )


@pytest.fixture(scope="module")
def zeroed_head(tmp_path_factory, bundled_file: ClaimFile) -> tuple[str, Head]:
    """The bundled model with its first claimed word mover's output zeroed (its slice of
    W_O), saved as a local Hugging Face directory: a dead head, everything else equal."""
    import shutil

    from transformers import GPTNeoXForCausalLM

    from circuit.models import BUNDLED_DIR

    head = _claim(bundled_file, "word-movers").primary_heads[0]
    directory = tmp_path_factory.mktemp(f"zeroed-{head}")
    model = GPTNeoXForCausalLM.from_pretrained(BUNDLED_DIR)
    d_head = model.config.hidden_size // model.config.num_attention_heads
    columns = slice(head.head * d_head, (head.head + 1) * d_head)
    with torch.no_grad():
        model.gpt_neox.layers[head.layer].attention.dense.weight[:, columns] = 0
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (BUNDLED_DIR / name).is_file():
            shutil.copy(BUNDLED_DIR / name, directory / name)
    return str(directory), head


def test_a_claim_naming_a_zeroed_head_is_not_confirmed(bundled_file, models, zeroed_head):
    path, head = zeroed_head
    claim_file = _at_size(bundled_file, FLOOR_PAIRS)
    claims = tuple(c for c in claim_file.claims if head in c.primary_heads)
    claim_file = dataclasses.replace(claim_file, claims=claims)
    cases = select_cases([claim_file], ClaimOptions(model=path))
    records = _judge(cases, models)
    assert {"word-movers", "value-position", "necessity"} <= {r.kind for r in records}
    for record in records:
        assert record.error is None, record.failure_message()
        assert not record.passed, record.failure_message()
        dead = [j for j in record.checks if f"[{head}]" in j.measured.check]
        assert len(dead) == 1
        assert dead[0].verdict == "REFUTED", dead[0].explanation()  # the floor catches it
        assert abs(dead[0].measured.statistic) < 1e-4


def test_a_claim_naming_silent_heads_is_not_confirmed(bundled_file, models):
    claim_file = _at_size(bundled_file, FLOOR_PAIRS)
    claims = [c for c in claim_file.claims if c.kind != "query-influencers"]
    # a small direct effect is not silence (a query influencer writes nothing to the logits
    # directly), so every head the file names anywhere is left out
    named_anywhere = frozenset(h for c in claim_file.claims for hs in c.heads.values() for h in hs)
    size = max(len(c.primary_heads) for c in claims)
    ranked = _least_important(models, size, claim_file.dataset.family, named_anywhere)
    cases, named = [], {}
    for claim in claims:  # as many silent heads as the claim names (top_k stays defined)
        silent = ranked[: len(claim.primary_heads)]
        decoy = dataclasses.replace(claim, id=f"silent-{claim.kind}", heads={"heads": silent})
        cases.append(ClaimCase(claim_file, decoy, VARIANT, "bundled", None))
        named[decoy.id] = silent
    records = _judge(cases, models)
    assert len(records) == len(claims)
    for record in records:
        assert record.error is None, record.failure_message()
        assert not record.passed, record.failure_message()
        silent = named[record.claim_id]
        floors = [j for j in record.checks if any(f"[{h}]" in j.measured.check for h in silent)]
        assert len(floors) == len(silent)
        assert all(j.verdict != "CONFIRMED" for j in floors), [
            (record.claim_id, j.measured.check, j.measured.statistic, j.verdict) for j in floors
        ]


# --- query influencers: wrong senders, wrong receivers, the wrong receiver input -----------

QUERY_PAIRS = 56


@pytest.fixture(scope="module")
def query_claim(bundled_file: ClaimFile):
    """The file's query-influencers claim (L1H5 and L1H0 into the three movers' queries)."""
    claims = [c for c in bundled_file.claims if c.kind == "query-influencers"]
    if not claims:
        pytest.skip("claims/bundled.toml makes no query-influencers claim (the organism has none)")
    return claims[0]


def _query_case(claim_file: ClaimFile, **changes) -> ClaimCase:
    claim_file = _at_size(claim_file, QUERY_PAIRS)
    claim = _claim(claim_file, "query-influencers")
    decoy = dataclasses.replace(claim, id=f"query-{'-'.join(changes)}", **changes)
    return ClaimCase(claim_file, decoy, VARIANT, "bundled", None)


def _query_subject(claim_file: ClaimFile, models: ModelCache) -> Subject:
    from circuit.syllogisms import build_dataset

    model = models.get("bundled", None)
    family = claim_file.dataset.family
    data = build_dataset(model, VARIANT, seed=42, n_pairs=QUERY_PAIRS, family=family)
    key = SubjectKey("bundled", None, "float32", "cpu", VARIANT, 42, QUERY_PAIRS, family)
    return Subject(model, data, key, MeasurementStore())


def test_the_query_claim_with_the_wrong_senders_is_not_confirmed(bundled_file, query_claim, models):
    """Senders with the smallest |path effect| into the claimed receivers' queries (measured
    on the judged data at run time), in the claimed senders' layers."""
    from circuit.kinds.measurements import normalised_baselines, path_query

    claim = query_claim
    receivers = claim.heads["receivers"]
    subject = _query_subject(bundled_file, models)
    patched = path_query(subject, receivers)["patched"].double().flatten(1)
    clean, _ = normalised_baselines(subject)
    effect = (clean.double()[:, None] - patched).mean(0).abs().numpy()
    n_heads = subject.n_heads
    order = [Head(int(i) // n_heads, int(i) % n_heads) for i in np.argsort(effect)]
    last = max(h.layer for h in receivers)
    wrong = tuple(
        h
        for h in order
        if not np.isnan(effect[h.flat(n_heads)])
        and h.layer < last
        and h not in receivers
        and h not in claim.primary_heads
    )[: len(claim.primary_heads)]
    heads = {**claim.heads, "heads": wrong}
    (record,) = _judge([_query_case(bundled_file, heads=heads)], models)
    assert record.error is None, record.failure_message()
    assert record.outcome == "REFUTED", record.failure_message()


def test_the_query_claim_with_the_wrong_receivers_is_not_confirmed(
    bundled_file, query_claim, models
):
    """Receivers with the smallest |direct logit attribution| in the claimed receivers' layers
    (chosen at run time): the senders' paths into them carry nothing."""
    claim = query_claim
    receivers = claim.heads["receivers"]
    subject = _query_subject(bundled_file, models)
    dla = clean_run(subject)["dla"].mean(dim=0).abs().flatten().numpy()
    n_heads = subject.n_heads
    layers = {h.layer for h in receivers}
    wrong = tuple(
        h
        for h in (Head(int(i) // n_heads, int(i) % n_heads) for i in np.argsort(dla))
        if h.layer in layers and h not in receivers
    )[: len(receivers)]
    heads = {**claim.heads, "receivers": wrong}
    (record,) = _judge([_query_case(bundled_file, heads=heads)], models)
    assert record.error is None, record.failure_message()
    assert not record.passed, record.failure_message()


def test_the_query_claim_on_keys_instead_of_queries_is_not_confirmed(
    bundled_file, query_claim, models
):
    """The same senders and receivers, judged on the path into the receivers' keys."""
    claim = query_claim
    assert claim.options.get("receiver_input", "q") == "q"
    options = {**claim.options, "receiver_input": "k"}
    (record,) = _judge([_query_case(bundled_file, options=options)], models)
    assert record.error is None, record.failure_message()
    assert not record.passed, record.failure_message()
