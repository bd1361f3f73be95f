"""Figures and the HTML report: ``pytest claims --claims-report DIR`` on the bundled model
(a small dataset), ``python -m circuit figures``, and the draws the figures read."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from circuit.__main__ import main
from circuit.pipeline.options import ClaimOptions, ClaimSetupError, check_options
from circuit.statistics import (
    Clusters,
    Evidence,
    Side,
    VerdictSettings,
    measure,
    measure_with_draws,
    permuted_columns_null,
    weighted_mean,
)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")

SMALL_CLAIMS = """
model = "bundled"
description = "The bundled claims on a small dataset, for the report's tests."

[dataset]
variants = ["heldout"]
seed = 42
n_pairs = 16

[[claims]]
id = "word-movers"
kind = "word-movers"
description = "L3H7, L3H0, L2H7 together carry the majority of the logit difference."
heads = ["L3H7", "L3H0", "L2H7"]
roles = { attends_to = "descriptor" }
thresholds = { share = 0.5 }

[[claims]]
id = "value-position"
kind = "value-position"
description = "The word movers' values matter most at the descriptor's first token."
heads = ["L3H7", "L3H0", "L2H7"]
roles = { position = "descriptor" }
thresholds = { share = 0.5 }
"""

N_MOVERS = 3
"""Heads named by each claim of :data:`SMALL_CLAIMS`."""


def _pytest_claims(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "claims", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report of the bundled word-mover and value-position claims on 16 pairs."""
    base = tmp_path_factory.mktemp("report")
    claims = base / "claims.toml"
    claims.write_text(SMALL_CLAIMS)
    out = base / "report"
    done = _pytest_claims("--claims", str(claims), "--claims-report", str(out))
    # 16 pairs give 7 clusters: the claims are INCONCLUSIVE (exit 1), the report is written
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert f"claims HTML report: {out / 'index.html'}" in done.stdout
    return out


def _stems(report: Path) -> set[str]:
    return {p.stem for p in (report / "figures").iterdir()}


def test_every_expected_figure_exists_as_png_and_svg(report):
    assert (report / "index.html").is_file()
    stems = _stems(report)
    for stem in stems:
        for suffix in (".png", ".svg"):
            path = report / "figures" / f"{stem}{suffix}"
            assert path.stat().st_size > 1000, path
    movers = "word-movers-heldout"
    values = "value-position-heldout"
    expected = [f"{movers}-dla", f"{movers}-attention-writing", f"{values}-value-by-position"]
    for name in expected:
        assert any(stem.endswith(name) for stem in stems), (name, sorted(stems))
    # one histogram per check: gap, share, a floor per head / gap, share, largest, a floor per head
    assert sum(movers in s and "-check" in s for s in stems) == 2 + N_MOVERS
    assert sum(values in s and "-check" in s for s in stems) == 3 + N_MOVERS
    assert (report / "figures" / next(iter(stems))).with_suffix(".png").read_bytes()[:4] == (
        b"\x89PNG"
    )


def test_the_page_links_only_to_files_that_exist_and_fetches_nothing(report):
    page = (report / "index.html").read_text()
    targets = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert targets
    for target in targets:
        assert not target.startswith(("http://", "https://", "//")), target
        if target.startswith("#"):
            assert f'id="{target[1:]}"' in page, target
            continue
        assert (report / target).is_file(), target
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == len(list((report / "figures").glob("*.png")))
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "url(" not in page


def test_the_page_shows_verdicts_explanations_environment_and_command(report):
    page = (report / "index.html").read_text()
    rows = page.count('<tr class="INCONCLUSIVE">') + page.count('<tr class="CONFIRMED">')
    assert rows == (2 + N_MOVERS) + (3 + N_MOVERS)  # one row per check of the two claims
    assert "95% cluster bootstrap CI" in page  # Judgement.explanation()
    assert "a CONFIRMED verdict needed at least 8 independent clusters" in page
    for key in ("revision", "dtype", "device", "torch", "transformer_lens", "scipy"):
        assert f"<th>{key}</th>" in page
    assert "step3000" in page
    assert "python -m pytest claims -p no:cacheprovider --claims" in page
    assert "--claims-report" in page


def test_a_report_path_that_is_a_file_is_a_usage_error_before_any_model_loads(tmp_path):
    blocker = tmp_path / "report"
    blocker.write_text("not a directory")
    done = _pytest_claims("--claims-report", str(blocker))
    assert done.returncode == 4, done.stdout + done.stderr
    assert f"--claims-report {blocker} is a file; name a directory" in done.stderr
    assert "loaded bundled" not in done.stdout


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium is not installed")
def test_the_report_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            (report / "index.html").as_uri(),
        ],
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert shot.is_file()
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:4] == b"\x89PNG"


def test_the_figures_command_draws_the_standard_sweeps(tmp_path, capsys):
    out = tmp_path / "figs"
    argv = ["figures", "--model", "bundled", "--variant", "study", "--n-pairs", "4"]
    assert main([*argv, "--out", str(out), "--receivers", "L3H7,L3H0"]) == 0
    for stem in ("dla-heads", "patch-heads-z", "patch-resid", "path-q-L3H7-L3H0"):
        for suffix in (".png", ".svg"):
            assert (out / f"{stem}{suffix}").stat().st_size > 1000, stem
    assert "4 figures (PNG and SVG)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--receivers", "L9H0"], "error: layer 9 out of range"),
        (["--receivers", "L3X6"], "error: "),
        (["--model", "random:gpt2"], "error: unknown random shape 'gpt2'"),
    ],
)
def test_the_figures_command_reports_errors_in_one_line(tmp_path, capsys, args, message):
    assert main(["figures", "--out", str(tmp_path / "figs"), "--n-pairs", "4", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1
    assert not (tmp_path / "figs").exists()


def test_the_figures_command_refuses_a_file_as_out(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("")
    assert main(["figures", "--out", str(target)]) == 2
    expected = f"error: --out {target} is a file; name a directory for the figures\n"
    assert capsys.readouterr().err == expected


def test_keeping_the_draws_changes_no_number():
    rng = np.random.default_rng(0)
    n, k = 48, 6
    rows = rng.normal(size=(n, k)) + np.linspace(0, 1, k)
    clusters = Clusters.from_labels(
        {"pair": tuple(str(i % 8) for i in range(n)), "noun": tuple(str(i % 6) for i in range(n))}
    )

    def statistic(batch, weights):
        return weighted_mean(batch, weights)[:, -1]

    evidence = Evidence(
        check="last",
        rows=rows,
        clusters=clusters,
        statistic=statistic,
        threshold=0.2,
        side=Side.AT_LEAST,
        null=permuted_columns_null(rows, np.arange(k), statistic, clusters),
        null_name="shuffled columns",
    )
    settings = VerdictSettings(n_resamples=300, null_draws=300)
    measured, draws = measure_with_draws(evidence, settings, "claim", "kind", "variant")
    assert measured == measure(evidence, settings, "claim", "kind", "variant")
    assert draws.check == "last"
    assert draws.replicates.shape == (300,)
    assert draws.null is not None
    assert draws.null.shape == (300,)
    low, high = np.quantile(draws.replicates, [0.025, 0.975])
    assert (low, high) == pytest.approx((measured.low, measured.high))
    assert float(np.median(draws.null)) == pytest.approx(measured.null_median)
    floor = dataclasses.replace(evidence, null=None)
    assert measure_with_draws(floor, settings, "c")[1].null is None


def test_check_options_refuses_unusable_report_dirs(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = ((a_file, "is a file; name a directory"), (a_file / "r", "is a file, not a directory"))
    for path, text in cases:
        with pytest.raises(ClaimSetupError, match=re.escape(text)):
            check_options(ClaimOptions(report_dir=path, model="bundled"))
    check_options(ClaimOptions(report_dir=tmp_path / "new" / "report", model="bundled"))


def test_query_influencer_claims_get_a_path_patching_heatmap(tmp_path):
    from fixtures.tiny_model import write_tiny_model

    model = write_tiny_model(tmp_path / "tiny")
    claims = tmp_path / "queries.toml"
    claims.write_text(
        f'model = "{model}"\n[dataset]\nvariants = ["heldout"]\nseed = 1\nn_pairs = 6\n'
        '[[claims]]\nid = "queries"\nkind = "query-influencers"\nheads = ["L0H1"]\n'
        'receivers = ["L1H0"]\nthresholds = { top_k = 1, effect = 0.01 }\n'
    )
    out = tmp_path / "report"
    done = _pytest_claims("--claims", str(claims), "--claims-report", str(out))
    assert done.returncode == 1, done.stdout + done.stderr  # random weights: not CONFIRMED
    for suffix in (".png", ".svg"):
        assert (out / "figures" / f"00-queries-heldout-path-q{suffix}").is_file()
    assert 'src="figures/00-queries-heldout-path-q.png"' in (out / "index.html").read_text()
