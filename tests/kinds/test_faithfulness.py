"""Sufficiency, necessity and minimality: claim-file options, checks, negative controls.

* the claim-file schema: ``ablation`` (required), ``ablation_source`` (required unless
  ``zero``), ``positions`` (``"all"`` or a list of roles), thresholds in (0, 1];
* each kind's checks: the shared gap floor first, the kind's comparison, per-head floors;
  the statistic equals the fraction of the gap computed straight from ``ablate_heads``;
* negative controls on the bundled model (small datasets, as tests/kinds/test_negative_controls.py):
  the faithfulness claims of claims/bundled.toml confirm nothing on random weights
  (``random:bundled``); the circuit without its most important head (chosen at run time)
  fails sufficiency; a useless head (the smallest direct logit attribution outside the
  circuit, chosen at run time) added to the circuit fails minimality for that head.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from circuit.ablation import Ablation, ablate_heads
from circuit.claims import ClaimCase, ClaimFile, ClaimFileError, load_claim_file
from circuit.claims import parse_claim_text as parse
from circuit.heads import Head
from circuit.kinds import KINDS as REGISTRY
from circuit.kinds.faithfulness import masks_keeping
from circuit.kinds.measurements import Subject, clean_run, study_metric
from circuit.measurement_store import MeasurementStore, SubjectKey
from circuit.pipeline.cases import select_cases
from circuit.pipeline.judging import judge_cases
from circuit.pipeline.model_cache import ModelCache
from circuit.pipeline.options import ClaimOptions
from circuit.statistics import VerdictSettings
from circuit.syllogisms import build_dataset

BUNDLED_CLAIMS = Path(__file__).resolve().parents[2] / "claims" / "bundled.toml"
KINDS = ("sufficiency", "necessity", "minimality")
VARIANT = "heldout"
N_PAIRS = 16
CONTROL_PAIRS = 56


def _bundled_circuit() -> tuple[tuple[Head, ...], str]:
    """The heads of claims/bundled.toml's necessity claim, and the file's prompt family."""
    claim_file = load_claim_file(BUNDLED_CLAIMS)
    claim = next(c for c in claim_file.claims if c.id == "necessity")
    return claim.primary_heads, claim_file.dataset.family


CIRCUIT, FAMILY = _bundled_circuit()

HEADER = """
model = "bundled"
[dataset]
variants = ["heldout"]
[[claims]]
id = "c"
kind = "{kind}"
heads = ["L3H6", "L1H1"]
thresholds = {{ {threshold} = 0.5 }}
"""


def _text(kind: str = "sufficiency", threshold: str = "recovered", **fields: str) -> str:
    lines = [f"{k} = {v}" for k, v in fields.items()]
    return HEADER.format(kind=kind, threshold=threshold) + "\n".join(lines) + "\n"


# --- claim files ------------------------------------------------------------------------


def test_options_parse():
    claim = parse(
        _text(ablation='"mean"', ablation_source='"clean"', positions='["descriptor", "final"]')
    ).claims[0]
    assert dict(claim.options) == {
        "ablation": "mean",
        "ablation_source": "clean",
        "positions": ("descriptor", "final"),
    }
    claim = parse(_text("minimality", "loss", ablation='"zero"')).claims[0]
    assert dict(claim.options) == {"ablation": "zero"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "missing field(s) ['ablation']"),
        ({"ablation": '"median"'}, "ablation = 'median' is not allowed"),
        ({"ablation": '"mean"'}, "needs ablation_source"),
        ({"ablation": '"zero"', "ablation_source": '"clean"'}, "takes no ablation_source"),
        ({"ablation": '"mean"', "ablation_source": '"noise"'}, "ablation_source = 'noise'"),
        ({"ablation": '["mean"]', "ablation_source": '"clean"'}, "is not allowed"),
        ({"ablation": '"zero"', "positions": '["bos", "bos"]'}, "distinct"),
        ({"ablation": '"zero"', "positions": '["nowhere"]'}, "positions = ['nowhere']"),
        ({"ablation": '"zero"', "positions": '["all", "final"]'}, "positions"),
        ({"ablation": '"zero"', "positions": "[]"}, "positions"),
    ],
)
def test_bad_options_are_one_line_errors(fields, message):
    with pytest.raises(ClaimFileError) as error:
        parse(_text(**fields), "bad.toml")
    text = str(error.value)
    assert "\n" not in text
    assert text.startswith("bad.toml: claim 'c': ")
    assert message in text


@pytest.mark.parametrize(
    ("kind", "threshold"), [*zip(KINDS, ("recovered", "drop", "loss"), strict=True)]
)
@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_thresholds_lie_in_the_unit_interval(kind, threshold, value):
    text = _text(kind, threshold, ablation='"zero"').replace("= 0.5", f"= {value}")
    with pytest.raises(ClaimFileError, match=f"threshold '{threshold}'"):
        parse(text)


def test_options_belong_to_their_kinds():
    text = _text(ablation='"zero"').replace('kind = "sufficiency"', 'kind = "word-movers"')
    text = text.replace("recovered", "share") + 'roles = { attends_to = "descriptor" }\n'
    with pytest.raises(ClaimFileError, match="unknown keys"):
        parse(text)


# --- checks -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subject(bundled_model) -> Subject:
    data = build_dataset(bundled_model, VARIANT, seed=42, n_pairs=N_PAIRS, family=FAMILY)
    key = SubjectKey("bundled", None, "float32", "cpu", VARIANT, 42, N_PAIRS, FAMILY)
    return Subject(bundled_model, data, key, MeasurementStore())


def _claim(kind: str, threshold: float = 0.5, heads=CIRCUIT, **options: str):
    threshold_name = {"sufficiency": "recovered", "necessity": "drop"}.get(kind, "loss")
    text = _text(kind, threshold_name, ablation='"zero"')
    claim = parse(text).claims[0]
    thresholds = {next(iter(claim.thresholds)): threshold}
    return dataclasses.replace(
        claim,
        heads={"heads": tuple(heads)},
        thresholds=thresholds,
        options=options or {"ablation": "resample", "ablation_source": "corrupted"},
    )


@pytest.mark.parametrize("kind", KINDS)
def test_checks_of_each_kind(subject, kind):
    checks = REGISTRY[kind].evidence(_claim(kind), subject, VerdictSettings())
    names = [e.check for e in checks]
    assert names[0] == "gap"
    per_head = {"sufficiency": "removal", "necessity": "alone", "minimality": "loss"}[kind]
    assert names[-len(CIRCUIT) :] == [f"{per_head}[{h}]" for h in CIRCUIT]
    comparisons = [e for e in checks if e.null is not None]
    if kind == "minimality":
        assert len(comparisons) == len(CIRCUIT)
    else:
        assert [e.check for e in comparisons] == [{"sufficiency": "recovered"}.get(kind, "drop")]
    for e in checks:
        assert e.rows.shape[0] == len(subject.dataset)
        assert np.isfinite(e.observed())


def test_recovered_is_the_fraction_of_the_gap_kept(subject):
    """The sufficiency statistic, recomputed from ablate_heads and the baselines."""
    options = {"ablation": "mean", "ablation_source": "clean"}
    (_, recovered, *_) = REGISTRY["sufficiency"].evidence(
        _claim("sufficiency", **options), subject, VerdictSettings()
    )
    data = subject.dataset
    metric = study_metric(subject)
    n_layers, n_heads = subject.n_layers, subject.n_heads
    masks = masks_keeping([np.array([h.flat(n_heads) for h in CIRCUIT])], n_layers, n_heads)
    kept = ablate_heads(
        subject.model,
        data.clean_tokens,
        data.corrupted_tokens,
        metric,
        torch.from_numpy(masks),
        Ablation("mean", "clean"),
    )[:, 0].double()
    clean = metric.with_per_prompt(True)(subject.model(data.clean_tokens)).double()
    corrupted = metric.with_per_prompt(True)(subject.model(data.corrupted_tokens)).double()
    want = float((kept.mean() - corrupted.mean()) / (clean.mean() - corrupted.mean()))
    assert recovered.observed() == pytest.approx(want, abs=1e-5)


def test_positions_resolve_to_roles(subject):
    from circuit.kinds.measurements import ablation_of

    ablation = ablation_of(subject, {"ablation": "zero", "positions": ("final", "descriptor")})
    roles = subject.dataset.roles
    assert ablation.positions == tuple(sorted((roles["descriptor"], roles["final"])))
    assert ablation_of(subject, {"ablation": "zero", "positions": "all"}).positions is None


# --- negative controls ------------------------------------------------------------------


FAITHFULNESS_THRESHOLDS = {"sufficiency": "recovered", "necessity": "drop", "minimality": "loss"}


def _faithfulness_file(n_pairs: int) -> ClaimFile:
    """claims/bundled.toml's necessity claim written as each faithfulness kind (same heads and
    ablation; thresholds 0.5, 0.5, 0.01). The file claims necessity only: on `study` the
    circuit it names is not sufficient (its comments), so the other two kinds are controls."""
    claim_file = load_claim_file(BUNDLED_CLAIMS)
    recipe = dataclasses.replace(claim_file.dataset, n_pairs=n_pairs, variants=(VARIANT,))
    necessity = next(c for c in claim_file.claims if c.kind == "necessity")
    claims = tuple(
        dataclasses.replace(
            necessity,
            id=kind,
            kind=kind,
            variants=(VARIANT,),
            thresholds={threshold: 0.01 if kind == "minimality" else 0.5},
        )
        for kind, threshold in FAITHFULNESS_THRESHOLDS.items()
    )
    assert {c.kind for c in claims} == set(KINDS)
    return dataclasses.replace(claim_file, dataset=recipe, claims=claims)


def _judge(cases: list[ClaimCase], models: ModelCache) -> list:
    return list(judge_cases(cases, models, MeasurementStore()).values())


def test_faithfulness_claims_confirm_nothing_on_random_weights(models):
    claim_file = _faithfulness_file(N_PAIRS)
    cases = select_cases([claim_file], ClaimOptions(model="random:bundled"))
    records = _judge(cases, models)
    assert len(records) == len(claim_file.claims)
    assert [r.outcome for r in records if r.passed] == []


def _control_subject(models: ModelCache) -> Subject:
    model = models.get("bundled", None)
    data = build_dataset(model, VARIANT, seed=42, n_pairs=CONTROL_PAIRS, family=FAMILY)
    key = SubjectKey("bundled", None, "float32", "cpu", VARIANT, 42, CONTROL_PAIRS, FAMILY)
    return Subject(model, data, key, MeasurementStore())


def _case(kind: str, heads: tuple[Head, ...], claim_id: str) -> ClaimCase:
    claim_file = _faithfulness_file(CONTROL_PAIRS)
    claim = next(c for c in claim_file.claims if c.kind == kind and c.id == kind)
    decoy = dataclasses.replace(claim, id=claim_id, heads={"heads": heads})
    return ClaimCase(claim_file, decoy, VARIANT, "bundled", None)


def test_a_circuit_missing_a_head_fails_sufficiency(models):
    """Without the head whose removal loses the most (measured on the judged data), the
    remaining heads do not keep the claimed share of the gap."""
    subject = _control_subject(models)
    minimality = _case("minimality", CIRCUIT, "probe").claim
    checks = REGISTRY["minimality"].evidence(minimality, subject, VerdictSettings())
    losses = {e.check: e.observed() for e in checks if e.check.startswith("loss[")}
    biggest = max(CIRCUIT, key=lambda h: losses[f"loss[{h}]"])
    missing = tuple(h for h in CIRCUIT if h != biggest)
    (record,) = _judge([_case("sufficiency", missing, "missing-head")], models)
    assert record.error is None, record.failure_message()
    assert not record.passed, record.failure_message()
    (recovered,) = [j for j in record.checks if j.measured.check == "recovered"]
    assert recovered.verdict != "CONFIRMED", recovered.explanation()


def test_a_useless_head_fails_minimality(models):
    """A head outside the circuit with the smallest |direct logit attribution| on the judged
    data, added to the circuit: its own minimality check is not CONFIRMED, the others hold
    their sign."""
    subject = _control_subject(models)
    dla = clean_run(subject)["dla"].mean(dim=0).abs().flatten().numpy()
    n_heads = subject.n_heads
    candidates = [Head(int(i) // n_heads, int(i) % n_heads) for i in np.argsort(dla)]
    # the circuit's layer range: the useless head competes inside it
    low, high = min(h.layer for h in CIRCUIT), max(h.layer for h in CIRCUIT)
    useless = next(h for h in candidates if h not in CIRCUIT and low <= h.layer <= high)
    heads = (*CIRCUIT, useless)
    (record,) = _judge([_case("minimality", heads, "useless-head")], models)
    assert record.error is None, record.failure_message()
    assert not record.passed, record.failure_message()
    (check,) = [j for j in record.checks if j.measured.check == f"loss[{useless}]"]
    assert check.verdict != "CONFIRMED", check.explanation()
    assert abs(check.measured.statistic) < 0.01, check.explanation()
