"""``python -m circuit discover``: a DRAFT claim file from the claim kinds' own sweeps."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

from circuit.__main__ import main
from circuit.attribution import head_writes
from circuit.claims import parse_claim_text, validate_for_model
from circuit.discovery import (
    ATTENTION_SPEARMAN,
    JUDGED_ON,
    QUERY_EFFECT,
    VALUE_SHARE,
    WORD_MOVER_SHARE,
    Discovery,
    DiscoveryError,
    check_variant,
    draft_claims,
)
from circuit.heads import Head
from circuit.models import load_model
from circuit.syllogisms import build_dataset

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--variant", "study", "--n-pairs", "16", "--movers", "3", "--top", "4"]


def _discover(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["discover", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def bundled_draft() -> str:
    """The command's output on the bundled model (run once for the module)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["discover", "--model", "bundled", *ARGS])
    assert code == 0
    return out.getvalue()


def test_draft_parses_and_names_heads_that_exist(bundled_draft):
    claims = parse_claim_text(bundled_draft)
    model = load_model("bundled")
    validate_for_model(claims, model.cfg.n_layers, model.cfg.n_heads)
    assert claims.model == "bundled"
    assert claims.dataset.variants == JUDGED_ON
    kinds = {c.kind: c for c in claims.claims}
    assert set(kinds) == {"word-movers", "value-position", "query-influencers"}
    movers = kinds["word-movers"].heads["heads"]
    assert len(movers) == 3
    assert kinds["value-position"].heads["heads"] == movers
    assert kinds["query-influencers"].heads["receivers"] == movers
    assert len(kinds["query-influencers"].heads["heads"]) == 2


def test_thresholds_are_the_studys_not_the_measured_ones(bundled_draft):
    claims = {c.kind: c for c in parse_claim_text(bundled_draft).claims}
    movers = claims["word-movers"]
    assert dict(movers.thresholds) == {
        "share": WORD_MOVER_SHARE,
        "top_k": len(movers.heads["heads"]),
        "spearman": ATTENTION_SPEARMAN,
    }
    assert dict(claims["value-position"].thresholds) == {"share": VALUE_SHARE}
    assert dict(claims["query-influencers"].thresholds) == {"top_k": 2, "effect": QUERY_EFFECT}


def test_header_says_where_it_was_discovered_and_how(bundled_draft):
    header = bundled_draft.split("\nmodel = ", 1)[0]
    assert "discovered on --variant study" in header
    assert f"python -m circuit discover --model bundled {' '.join(ARGS)}" in header
    assert "not tuned" in header
    assert "WARNING" not in header


def test_measured_numbers_are_in_the_comments(bundled_draft):
    """Each mover's DLA share, measured independently by the one DLA routine, is in a comment
    above the word-mover claim; the study's word movers come out on top."""
    model = load_model("bundled")
    data = build_dataset(model, "study", n_pairs=16)
    writes = head_writes(model, data.clean_tokens, data.answers)
    share = writes.share.flatten().double().numpy()
    movers = [Head.from_flat(int(i), model.cfg.n_heads) for i in np.argsort(-share)[:3]]
    claim = parse_claim_text(bundled_draft).claims[0]
    assert list(claim.heads["heads"]) == movers
    comments = "\n".join(
        line for line in bundled_draft.splitlines() if line.startswith("# measured on")
    )
    for head in movers:
        assert f"{head} {share[head.flat(model.cfg.n_heads)]:.3f}" in comments
    total = sum(share[h.flat(model.cfg.n_heads)] for h in movers)
    assert f"share {total:.3f}" in comments
    assert re.search(r"path patching into q of .*top 5 senders: L\dH\d [+-]0\.\d{4}", comments)
    assert claim.roles["attends_to"] == "descriptor"


def test_heldout_is_refused(capsys):
    code, out, err = _discover(capsys, "--model", "bundled", "--variant", "heldout")
    assert code == 2
    assert out == ""
    assert "heldout" in err
    assert "--allow-heldout" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(DiscoveryError, match="spoils"):
        check_variant("heldout")
    check_variant("heldout", allow_heldout=True)
    check_variant("study")


def test_random_weights_still_give_a_parseable_draft(capsys):
    code, _, err = _discover(capsys, "--model", "random:bundled", *ARGS)
    assert code == 2
    assert "error:" in err  # the study's logit-diff filter keeps no prompt
    code, out, _ = _discover(capsys, "--model", "random:bundled", *ARGS, "--no-logit-diff-filter")
    assert code == 0
    claims = parse_claim_text(out)
    assert claims.model == "random:bundled"
    assert "WARNING: discovered without the logit-diff filter" in out


def test_the_family_option_builds_that_familys_dataset(capsys):
    """``--family two-premise`` on the bundled model (trained on multi-premise prompts): the
    draft names the family and its query influencers are the ones claims/bundled.toml claims
    (found on the same `study` data), where random weights give a one-line metric error."""
    argv = ["--model", "bundled", *ARGS, "--family", "two-premise"]
    code, out, _ = _discover(capsys, *argv)
    assert code == 0
    draft = parse_claim_text(out)
    assert draft.dataset.family == "two-premise"
    queries = next(c for c in draft.claims if c.kind == "query-influencers")
    shipped = parse_claim_text((ROOT / "claims" / "bundled.toml").read_text())
    claimed = next(c for c in shipped.claims if c.kind == "query-influencers")
    assert set(queries.primary_heads) == set(claimed.primary_heads)
    unfiltered = ["--model", "random:bundled", *ARGS, "--no-logit-diff-filter"]
    code, _, err = _discover(capsys, *unfiltered, "--family", "two-premise")
    assert code == 2  # a metric error (no gap between the baselines) is one line, not a traceback
    assert err.startswith("error: clean")
    assert "baselines are within" in err
    with pytest.raises(SystemExit):
        main(["discover", "--model", "bundled", "--family", "no-such-family"])
    assert "no-such-family" in capsys.readouterr().err


def test_movers_in_layer_zero_draft_no_query_influencers():
    roles = {"bos": 0, "descriptor": 1, "final": 2}
    n_heads = 2
    found = Discovery(
        n_heads=n_heads,
        share=np.array([0.6, 0.1, 0.2, 0.1]),
        order=np.array([0, 2, 1, 3]),
        logit_diff=3.0,
        attention={Head(0, 0): {"bos": 0.1, "descriptor": 0.8, "final": 0.1}},
        spearman={Head(0, 0): {"bos": 0.0, "descriptor": 0.4, "final": 0.0}},
        value=np.array([[0.0, 0.5, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        roles=roles,
        movers=(Head(0, 0),),
        path=None,
        n_prompts=4,
    )
    text = draft_claims(found, "bundled", None, "unfiltered", "python -m circuit discover", 1, 2)
    claims = parse_claim_text(text)
    assert claims.dataset.family == "study"
    assert "family" not in text
    family = parse_claim_text(
        draft_claims(found, "bundled", None, "study", "x", 1, 2, family="two-premise")
    )
    assert family.dataset.family == "two-premise"
    assert [c.kind for c in claims.claims] == ["word-movers", "value-position"]
    assert "query-influencers: not drafted (every mover is in layer 0" in text
    assert "WARNING" not in text  # warnings come from notes(), passed by the command
