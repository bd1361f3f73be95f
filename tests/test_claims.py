"""Claim files: the shipped files parse; every malformed file names file, claim and reason."""

from pathlib import Path

import pytest

from circuit.claims import (
    ClaimFileError,
    discover_claim_files,
    load_claim_file,
    parse_claim_text,
    validate_for_model,
)
from circuit.heads import Head
from circuit.kinds import KINDS
from tests.support import CLAIM_HEADER, MOVERS, QUERIES

CLAIMS_DIR = Path(__file__).resolve().parent.parent / "claims"

VALID = """
model = "some/model"
revision = "step1"

[dataset]
variants = ["heldout", "unfiltered"]
seed = 7
n_pairs = 10

[[claims]]
id = "movers"
kind = "word-movers"
heads = ["L3H1", "L2H0"]
roles = { attends_to = "descriptor" }
thresholds = { share = 0.5, top_k = 2, spearman = 0.3 }

[[claims]]
id = "values"
kind = "value-position"
heads = ["L3H1"]
roles = { position = "descriptor" }
thresholds = { share = 0.5 }
variants = ["heldout"]

[[claims]]
id = "queries"
kind = "query-influencers"
heads = ["L1H2"]
receivers = ["L3H1", "L2H0"]
thresholds = { top_k = 1, effect = 0.01 }
"""


def test_valid_file_parses_into_claims_and_cases():
    parsed = parse_claim_text(VALID, "x.toml")
    assert parsed.model == "some/model"
    assert parsed.revision == "step1"
    assert parsed.dataset.variants == ("heldout", "unfiltered")
    assert (parsed.dataset.seed, parsed.dataset.n_pairs) == (7, 10)
    movers, values, queries = parsed.claims
    assert movers.primary_heads == (Head(3, 1), Head(2, 0))
    assert movers.label == "movers[L3H1,L2H0]"
    assert values.variants == ("heldout",)
    assert queries.heads["receivers"] == (Head(3, 1), Head(2, 0))
    assert [(c.id, v) for c, v in parsed.cases()] == [
        ("movers", "heldout"),
        ("movers", "unfiltered"),
        ("values", "heldout"),
        ("queries", "heldout"),
        ("queries", "unfiltered"),
    ]


def test_every_kind_module_is_registered_with_its_schema_and_evidence():
    assert set(KINDS) == {
        "word-movers",
        "value-position",
        "query-influencers",
        "sufficiency",
        "necessity",
        "minimality",
    }
    for name, kind in KINDS.items():
        assert kind.name == name
        assert kind.schema.heads
        assert callable(kind.evidence)
        assert callable(kind.check)


def test_an_unknown_kind_is_an_error_naming_the_known_ones():
    text = 'model = "bundled"\n[dataset]\nvariants = ["heldout"]\n[[claims]]\nid = "x"\n'
    text += 'kind = "no-such-kind"\nheads = ["L1H0"]\n'
    with pytest.raises(
        ClaimFileError, match=r"unknown kind .no-such-kind.; known kinds: .*word-movers"
    ):
        parse_claim_text(text, "x.toml")


@pytest.mark.parametrize("path", discover_claim_files(CLAIMS_DIR), ids=lambda p: p.name)
def test_shipped_claim_files_parse(path):
    parsed = load_claim_file(path)
    assert parsed.claims


def test_pythia_file_encodes_the_study():
    study = load_claim_file(CLAIMS_DIR / "pythia-410m.toml")
    assert (study.model, study.revision) == ("EleutherAI/pythia-410m", "step143000")
    by_kind = {c.kind: c for c in study.claims}
    movers = [str(h) for h in by_kind["word-movers"].primary_heads]
    assert movers == ["L18H0", "L19H4", "L20H2"]
    assert by_kind["value-position"].roles["position"] == "descriptor"
    assert [str(h) for h in by_kind["query-influencers"].primary_heads] == ["L17H15", "L14H0"]
    assert [str(h) for h in by_kind["query-influencers"].heads["receivers"]] == movers


def _break(old: str, new: str) -> str:
    assert old in VALID
    return VALID.replace(old, new, 1)


BROKEN = {
    "unknown kind": (_break('kind = "word-movers"', 'kind = "name-movers"'), "movers", "kind"),
    "unknown role": (_break('attends_to = "descriptor"', 'attends_to = "verb"'), "movers", "role"),
    "missing threshold": (
        _break("share = 0.5, top_k = 2, spearman = 0.3", "top_k = 2, spearman = 0.3"),
        "movers",
        "missing threshold",
    ),
    "bad head": (_break('"L3H1", "L2H0"]\nroles', '"L3-1", "L2H0"]\nroles'), "movers", "head"),
    "top_k below heads": (_break("top_k = 2,", "top_k = 1,"), "movers", "top_k"),
    "sender after receivers": (_break('heads = ["L1H2"]', 'heads = ["L4H2"]'), "queries", "sender"),
    "unknown variant": (
        _break('variants = ["heldout"]', 'variants = ["train"]'),
        "values",
        "variant",
    ),
    "unknown threshold": (
        _break("spearman = 0.3", "spearman = 0.3, kendall = 0.2"),
        "movers",
        "unexpected threshold",
    ),
    "threshold not a number": (_break("share = 0.5 }", 'share = "half" }'), "values", "number"),
    "duplicate id": (_break('id = "values"', 'id = "movers"'), "movers", "duplicate"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_malformed_claim_names_file_claim_and_reason(name):
    text, claim_id, reason = BROKEN[name]
    with pytest.raises(ClaimFileError) as info:
        parse_claim_text(text, "claims/broken.toml")
    message = str(info.value)
    assert "claims/broken.toml" in message
    assert f"claim {claim_id!r}" in message
    assert reason in message
    assert info.value.claim_id == claim_id


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('model = "x"\n[[claims]\nid = 1\n')
    with pytest.raises(ClaimFileError, match=r"bad\.toml: invalid TOML"):
        load_claim_file(path)


def test_missing_model_and_claims_are_errors():
    with pytest.raises(ClaimFileError, match="'model'"):
        parse_claim_text(VALID.replace('model = "some/model"', ""))
    with pytest.raises(ClaimFileError, match="no claims"):
        parse_claim_text(VALID.split("[[claims]]")[0])


def test_head_out_of_range_for_the_model():
    parsed = parse_claim_text(VALID, "claims/x.toml")
    validate_for_model(parsed, n_layers=4, n_heads=3)
    with pytest.raises(ClaimFileError) as info:
        validate_for_model(parsed, n_layers=3, n_heads=3)
    message = str(info.value)
    assert "claims/x.toml" in message
    assert "claim 'movers'" in message
    assert "L3H1" in message
    assert "3 layers" in message
    with pytest.raises(ClaimFileError, match=r"claim 'queries'.*L1H2"):
        validate_for_model(parsed, n_layers=4, n_heads=2)


# --- claim kinds on planted sweeps (no model: the sweep store is filled with known data) ---

PLANTED = """
model = "planted"
[dataset]
variants = ["heldout"]
[[claims]]
id = "movers"
kind = "word-movers"
heads = ["L2H1"]
roles = { attends_to = "descriptor" }
thresholds = { share = 0.5, top_k = 1, spearman = 0.3 }
[[claims]]
id = "values"
kind = "value-position"
heads = ["L2H1"]
roles = { position = "descriptor" }
thresholds = { share = 0.5 }
[[claims]]
id = "queries"
kind = "query-influencers"
heads = ["L1H3"]
receivers = ["L2H1"]
thresholds = { top_k = 1, effect = 0.05 }
"""


def _planted_subject(n: int = 40):
    """A 3-layer x 4-head subject whose sweeps hold a planted circuit: L2H1 moves the
    descriptor (position 2), its values matter there, L1H3 steers its query."""
    from types import SimpleNamespace

    import torch

    from circuit.dataset import SyllogismDataset
    from circuit.kinds.measurements import Subject
    from circuit.measurement_store import MeasurementStore, SubjectKey

    g = torch.Generator().manual_seed(0)
    layers, heads, seq = 3, 4, 6
    clean = torch.randint(1, 50, (n, seq), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = clean[:, 2] + 50
    roles = {"bos": 0, "category": 1, "descriptor": 2, "opposite": 3, "noun": 4}
    roles |= {"category2": 4, "noun2": 4, "final": 5}
    factors = {
        "pair": tuple(str((i // 2) % 10) for i in range(n)),
        "noun": tuple(str((i // 2) % 9) for i in range(n)),
    }
    data = SyllogismDataset(
        "heldout",
        0,
        ["p"] * n,
        ["q"] * n,
        clean,
        corrupted,
        torch.zeros(n, 2).long(),
        roles,
        factors=factors,
    )
    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=layers, n_heads=heads, device="cpu"))
    key = SubjectKey("planted", None, "float32", "cpu", "heldout", 0, None)
    store = MeasurementStore()
    subject = Subject(model, data, key, store)

    attention = torch.rand(n, layers, heads, seq, generator=g) * 0.2
    attention[:, 2, 1, 2] = torch.rand(n, generator=g)
    dla = torch.randn(n, layers, heads, generator=g) * 0.05
    dla[:, 2, 1] = 2.0 * attention[:, 2, 1, 2] + 0.1 * torch.randn(n, generator=g)
    logit_diff = dla.sum(dim=(1, 2)) + 0.3
    store.get(
        key,
        "clean_run",
        None,
        lambda: {
            "dla": dla,
            "write_right": dla,
            "write_wrong": -dla,
            "attention": attention,
            "logit_diff": logit_diff,
        },
    )
    clean_ld = 2 + 0.1 * torch.randn(n, generator=g)
    store.get(key, "baselines", None, lambda: {"clean": clean_ld, "corrupted": -clean_ld})
    gap = 2 * float(clean_ld.mean())
    corrupted_norm = (-clean_ld + clean_ld.mean()) / gap
    clean_norm = (clean_ld + clean_ld.mean()) / gap
    noise = 0.01 * torch.randn(n, layers, seq, heads, generator=g)
    patched = corrupted_norm[:, None, None, None] + noise
    patched[:, 2, 2, 1] += 0.5 + 0.05 * torch.randn(n, generator=g)
    store.get(key, "value_by_position", None, lambda: {"patched": patched})
    differs = torch.zeros(layers, seq, heads)
    differs[:, 2:] = 1.0  # value vectors differ from the corrupted position on
    store.get(key, "value_differences", None, lambda: {"largest": differs})
    path = clean_norm[:, None, None] - 0.01 * torch.rand(n, layers, heads, generator=g)
    path[:, 1, 3] -= 0.2
    path[:, 2:] = float("nan")
    store.get(key, "path_query", "L2H1", lambda: {"patched": path})
    return subject


def _judge_planted(claims_text: str):
    from circuit.claims import ClaimCase
    from circuit.pipeline.judging import judge_run, measure_case

    parsed = parse_claim_text(claims_text, "planted.toml")
    subject = _planted_subject()
    cases = [ClaimCase(parsed, c, v, "planted", None) for c, v in parsed.cases()]
    return {
        r.claim_id: r for r in judge_run([measure_case(c, subject, parsed.verdict) for c in cases])
    }


def test_planted_circuit_is_confirmed_by_every_kind():
    records = _judge_planted(PLANTED)
    for record in records.values():
        assert record.outcome == "CONFIRMED", record.failure_message()


def test_wrong_heads_and_roles_are_refuted_on_planted_sweeps():
    wrong = PLANTED.replace(
        'heads = ["L2H1"]\nroles = { attends', 'heads = ["L0H2"]\nroles = { attends'
    )
    wrong = wrong.replace('position = "descriptor"', 'position = "noun"')
    wrong = wrong.replace('heads = ["L1H3"]', 'heads = ["L0H0"]')
    records = _judge_planted(wrong)
    for record in records.values():
        assert record.outcome == "REFUTED", record.failure_message()


def test_word_mover_claim_without_spearman_skips_the_attention_check():
    text = PLANTED.replace("top_k = 1, spearman = 0.3", "top_k = 1")
    records = _judge_planted(text)
    checks = [j.measured.check for j in records["movers"].checks]
    assert checks == ["gap", "share", "share[L2H1]", "top-1"]
    with_spearman = [j.measured.check for j in _judge_planted(PLANTED)["movers"].checks]
    assert with_spearman == [
        "gap",
        "share",
        "share[L2H1]",
        "top-1",
        "attention(descriptor)-writing",
    ]
    without_top_k = PLANTED.replace("share = 0.5, top_k = 1, spearman = 0.3", "share = 0.5")
    bare = [j.measured.check for j in _judge_planted(without_top_k)["movers"].checks]
    assert bare == ["gap", "share", "share[L2H1]"]


CLAIM_CASES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    # (id, claims text, replace "old|new" in it, names in the message)
    ("spearman 2.0", MOVERS, "spearman = 0.3|spearman = 2.0", ("'spearman' = 2.0", "[-1, 1]")),
    ("spearman -1.5", MOVERS, "spearman = 0.3|spearman = -1.5", ("'spearman' = -1.5",)),
    ("spearman inf", MOVERS, "spearman = 0.3|spearman = inf", ("'spearman'", "finite")),
    ("share 0", MOVERS, "share = 0.5|share = 0", ("'share' = 0", "(0, 1]")),
    ("share 1.5", MOVERS, "share = 0.5|share = 1.5", ("'share' = 1.5",)),
    ("share nan", MOVERS, "share = 0.5|share = nan", ("'share'", "finite")),
    ("share a string", MOVERS, "share = 0.5|share = '0.5'", ("'share'", "number", "'0.5'")),
    ("top_k below the heads", MOVERS, "top_k = 2|top_k = 1", ("top_k = 1", "2 claimed heads")),
    ("top_k 2.5", MOVERS, "top_k = 2|top_k = 2.5", ("'top_k'", "positive integer", "2.5")),
    ("top_k 0", MOVERS, "top_k = 2|top_k = 0", ("'top_k'", "positive integer")),
    ("effect -0.5", QUERIES, "effect = 0.01|effect = -0.5", ("'effect' = -0.5", "(0, 1]")),
    ("effect 2", QUERIES, "effect = 0.01|effect = 2.0", ("'effect' = 2.0",)),
    ("seed 'abc'", MOVERS, "seed = 1|seed = 'abc'", ("seed", "'abc'")),
    ("n_pairs 1", MOVERS, "n_pairs = 6|n_pairs = 1", ("n_pairs", ">= 2")),
    ("head twice", MOVERS, '"L1H0", "L1H1"|"L1H0", "L1H0"', ("names a head twice",)),
    ("head text", MOVERS, '"L1H0", "L1H1"|"L1H0", "1.1"', ("'1.1'", "L<layer>H<head>")),
    ("unknown kind", MOVERS, 'kind = "word-movers"|kind = "movers"', ("unknown kind 'movers'",)),
    ("unknown variant", MOVERS, 'variants = ["heldout"]|variants = ["train"]', ("'train'",)),
)


@pytest.mark.parametrize(
    ("text", "change", "names"),
    [case[1:] for case in CLAIM_CASES],
    ids=[case[0] for case in CLAIM_CASES],
)
def test_claim_file_refuses_impossible_values(text: str, change: str, names: tuple) -> None:
    full = CLAIM_HEADER + text
    old, new = change.split("|")
    assert old in full
    with pytest.raises(ClaimFileError) as raised:
        parse_claim_text(full.replace(old, new), "bad.toml")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("bad.toml")
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"


def test_dataset_family_and_query_receiver_input_parse():
    parsed = parse_claim_text(VALID, "x.toml")
    assert parsed.dataset.family == "study"
    assert "receiver_input" not in parsed.claims[2].options  # q, as the study claims
    text = VALID.replace("n_pairs = 10\n", 'n_pairs = 10\nfamily = "two-premise"\n')
    text = text.replace(
        "thresholds = { top_k = 1, effect = 0.01 }",
        'thresholds = { top_k = 1, effect = 0.01 }\nreceiver_input = "k"',
    )
    parsed = parse_claim_text(text, "x.toml")
    assert parsed.dataset.family == "two-premise"
    assert parsed.claims[2].options["receiver_input"] == "k"
    with pytest.raises(ClaimFileError, match="family must be one of"):
        parse_claim_text(VALID.replace("n_pairs = 10\n", 'n_pairs = 10\nfamily = "x"\n'), "x.toml")
    bad = text.replace('receiver_input = "k"', 'receiver_input = "z"')
    with pytest.raises(ClaimFileError, match="receiver_input"):
        parse_claim_text(bad, "x.toml")


def test_a_claim_may_name_its_own_family():
    from circuit.claims import ClaimCase

    text = VALID.replace(
        "thresholds = { top_k = 1, effect = 0.01 }",
        'thresholds = { top_k = 1, effect = 0.01 }\nfamily = "two-premise"',
    )
    parsed = parse_claim_text(text, "x.toml")
    own, inherited = parsed.claims[2], parsed.claims[0]
    assert (own.family, inherited.family) == ("two-premise", None)
    assert ClaimCase(parsed, own, "heldout", "bundled", None).dataset.family == "two-premise"
    case = ClaimCase(parsed, inherited, "heldout", "bundled", None)
    assert case.dataset == parsed.dataset  # the file's recipe, untouched
    from circuit.pipeline import judging

    # the same variant in two families is two datasets: never one shared subject or gap
    other = ClaimCase(parsed, own, "heldout", "bundled", None)
    assert judging._subject_key(other) != judging._subject_key(case)
    assert judging._subject_name(other) != judging._subject_name(case)
    bad = text.replace('family = "two-premise"', 'family = "three-premise"')
    with pytest.raises(ClaimFileError, match=r"queries.*family must be one of"):
        parse_claim_text(bad, "x.toml")
