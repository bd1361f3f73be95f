"""Calibration of the verdict rule: how often it says CONFIRMED when it must not.

Two experiments, both run by ``python -m circuit calibrate`` (see docs/verdict-rule.md):

* :func:`calibrate_random_models` judges claims on an ensemble of random-weight models
  (``random:<shape>:<seed>``), where no circuit exists and every claim is false: random
  claims of every kind (or the claims of given claim files), each judged as the only claim
  of its run (Benjamini-Hochberg over its own checks alone: the least correction a claim can
  get). It counts CONFIRMED per kind and, check by check, how often each check alone would
  have been CONFIRMED.
* :func:`simulate_fdr` draws synthetic per-prompt effects with the crossed word factors of a
  syllogism dataset (pair, category and noun random effects plus prompt noise), where the
  truth of every check is known, judges each simulated run with the rule, and reports the
  false discovery rate (false CONFIRMED / CONFIRMED) and the power.
"""

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from circuit.claims import Claim, ClaimFile
from circuit.heads import Head
from circuit.kinds import KINDS
from circuit.kinds.measurements import Subject
from circuit.measurement_store import MeasurementStore, SubjectKey
from circuit.statistics import (
    Clusters,
    Evidence,
    Side,
    Verdict,
    VerdictSettings,
    judge_all,
    measure,
    permuted_columns_null,
    weighted_mean,
    worst,
)

KINDS_CALIBRATED: tuple[str, ...] = (
    "word-movers",
    "value-position",
    "query-influencers",
    "sufficiency",
    "necessity",
    "minimality",
)
FAITHFULNESS_THRESHOLDS = {"sufficiency": "recovered", "necessity": "drop", "minimality": "loss"}
CALIBRATION_VARIANTS: tuple[str, ...] = ("unfiltered", "heldout")
Progress = Callable[[str], None]


@dataclass
class KindTally:
    """Outcomes of the claims of one kind, and check-level CONFIRMED counts by check type."""

    outcomes: Counter = field(default_factory=Counter)
    checks: Counter = field(default_factory=Counter)
    checks_confirmed: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def claims(self) -> int:
        return sum(self.outcomes.values())


@dataclass
class CalibrationReport:
    """What :func:`calibrate_random_models` found, per kind."""

    models: list[str] = field(default_factory=list)
    tallies: dict[str, KindTally] = field(default_factory=dict)

    def false_confirmed(self) -> int:
        """CONFIRMED claims across every kind (all are false on random weights)."""
        return sum(t.outcomes[str(Verdict.CONFIRMED)] for t in self.tallies.values())

    def table(self) -> str:
        """Per kind, then per check type: counts and false-CONFIRMED rates."""
        from tabulate import tabulate

        rows = []
        for kind, tally in self.tallies.items():
            confirmed = tally.outcomes[str(Verdict.CONFIRMED)]
            rows.append(
                [
                    kind,
                    "(claim)",
                    tally.claims,
                    confirmed,
                    f"{confirmed / max(tally.claims, 1):.3f}",
                    tally.outcomes[str(Verdict.INCONCLUSIVE)],
                    tally.outcomes[str(Verdict.REFUTED)],
                    tally.outcomes["ERROR"],
                ]
            )
            for check in sorted(tally.checks):
                hits = tally.checks_confirmed[check]
                total = tally.checks[check]
                rows.append(["", check, total, hits, f"{hits / max(total, 1):.3f}", "", "", ""])
        headers = ["kind", "check", "judged", "CONFIRMED", "rate", "INCONCL.", "REFUTED", "ERROR"]
        return tabulate(rows, headers=headers)


def check_type(name: str) -> str:
    """A check's name with its head dropped: ``share[L3H6]`` -> ``share[head]``."""
    return re.sub(r"\[L\d+H\d+\]", "[head]", name)


def _heads(rng: np.random.Generator, n_layers: int, n_heads: int, count: int, layers) -> tuple:
    pool = [Head(int(layer), h) for layer in layers for h in range(n_heads)]
    chosen = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    return tuple(sorted(pool[int(i)] for i in chosen))


def random_claims(
    kind: str, n_layers: int, n_heads: int, rng: np.random.Generator, count: int
) -> list[Claim]:
    """``count`` random claims of ``kind`` with every optional check stated.

    Heads are drawn uniformly (1 to 4 of them; senders from layers before their receivers,
    receivers from two random sets per call, so that path patching runs twice, not once per
    claim); thresholds are the study file's: share 0.5, top_k = the number of heads,
    spearman 0.3, effect 0.01.
    """
    receiver_sets = [
        _heads(rng, n_layers, n_heads, int(rng.integers(1, 4)), [int(rng.integers(1, n_layers))])
        for _ in range(2)
    ]
    claims = []
    for index in range(count):
        size = int(rng.integers(1, 5))
        if kind == "word-movers":
            heads = {"heads": _heads(rng, n_layers, n_heads, size, range(n_layers))}
            roles = {"attends_to": "descriptor"}
            thresholds = {"share": 0.5, "top_k": float(size), "spearman": 0.3}
        elif kind == "value-position":
            heads = {"heads": _heads(rng, n_layers, n_heads, size, range(n_layers))}
            roles = {"position": str(rng.choice(["descriptor", "opposite"]))}
            thresholds = {"share": 0.5}
        elif kind == "query-influencers":
            receivers = receiver_sets[index % len(receiver_sets)]
            last = max(h.layer for h in receivers)
            senders = _heads(rng, n_layers, n_heads, min(size, 2), range(last))
            heads = {"heads": senders, "receivers": receivers}
            roles = {}
            thresholds = {"top_k": float(len(senders)), "effect": 0.01}
        elif kind in FAITHFULNESS_THRESHOLDS:
            heads = {"heads": _heads(rng, n_layers, n_heads, size, range(n_layers))}
            roles = {}
            threshold = 0.01 if kind == "minimality" else 0.5
            thresholds = {FAITHFULNESS_THRESHOLDS[kind]: threshold}
        else:
            raise ValueError(f"unknown kind {kind!r}; calibrated kinds: {KINDS_CALIBRATED}")
        options = (
            {"ablation": "resample", "ablation_source": "corrupted", "positions": "all"}
            if kind in FAITHFULNESS_THRESHOLDS
            else {}
        )
        claims.append(
            Claim(
                id=f"random-{kind}-{index}",
                kind=kind,
                heads=heads,
                roles=roles,
                thresholds=thresholds,
                variants=CALIBRATION_VARIANTS,
                options=options,
            )
        )
    return claims


def judge_alone(claim: Claim, subject: Subject, settings: VerdictSettings, identity: str):
    """A claim judged as the only claim of its run: its verdict and its checks' judgements."""
    measured = [
        measure(evidence, settings, identity, claim.id)
        for evidence in KINDS[claim.kind].evidence(claim, subject, settings)
    ]
    judgements = judge_all(measured, settings.alpha)
    return worst([j.verdict for j in judgements]), judgements


def calibrate_random_models(
    shape: str,
    seeds: Sequence[int],
    claims_per_kind: int,
    kinds: Sequence[str] = KINDS_CALIBRATED,
    claim_files: Sequence[ClaimFile] = (),
    n_pairs: int = 56,
    settings: VerdictSettings | None = None,
    progress: Progress | None = None,
) -> CalibrationReport:
    """Judge random claims (or the claims of ``claim_files``) on ``random:<shape>:<seed>``.

    ``claims_per_kind`` random claims of each kind are spread evenly over the seeds and the
    two variants without a logit-diff filter (``unfiltered``, ``heldout``); given claim
    files, their own claims are judged on every seed and variant instead. A claim whose
    subject cannot be measured (e.g. a normalised metric undefined) counts as ERROR.
    """
    from circuit.models import load_model
    from circuit.syllogisms import DatasetError, build_dataset

    settings = settings or VerdictSettings()
    report = CalibrationReport(tallies={kind: KindTally() for kind in kinds})
    slots = max(1, len(seeds) * len(CALIBRATION_VARIANTS))
    rng = np.random.default_rng([settings.seed, len(seeds), claims_per_kind])
    for seed_index, seed in enumerate(seeds):
        spec = f"random:{shape}:{seed}"
        model = load_model(spec)
        report.models.append(spec)
        store = MeasurementStore()
        for variant_index, variant in enumerate(CALIBRATION_VARIANTS):
            try:
                dataset = build_dataset(model, variant, seed=seed, n_pairs=n_pairs)
            except DatasetError as error:
                _say(progress, f"{spec} {variant}: no dataset ({error})")
                continue
            key = SubjectKey(spec, None, "float32", "cpu", variant, seed, n_pairs)
            subject = Subject(model, dataset, key, store)
            slot = seed_index * len(CALIBRATION_VARIANTS) + variant_index
            for kind in kinds:
                if claim_files:
                    claims = [c for f in claim_files for c in f.claims if c.kind == kind]
                else:
                    share = claims_per_kind // slots + (slot < claims_per_kind % slots)
                    claims = random_claims(
                        kind, int(model.cfg.n_layers), int(model.cfg.n_heads), rng, share
                    )
                for claim in claims:
                    _tally(report.tallies[kind], claim, subject, settings, f"{spec}/{variant}")
            _say(progress, f"{spec} {variant}: {report.false_confirmed()} CONFIRMED so far")
        del model
    return report


def _tally(tally: KindTally, claim: Claim, subject: Subject, settings, identity: str) -> None:
    try:
        verdict, judgements = judge_alone(claim, subject, settings, identity)
    except ValueError as error:  # MetricError, no path, an undefined pool: not measurable
        tally.outcomes["ERROR"] += 1
        if len(tally.examples) < 3:
            tally.examples.append(f"{claim.label} on {identity}: {error}")
        return
    tally.outcomes[str(verdict)] += 1
    for judgement in judgements:
        name = check_type(judgement.measured.check)
        tally.checks[name] += 1
        tally.checks_confirmed[name] += judgement.verdict is Verdict.CONFIRMED
    if verdict is Verdict.CONFIRMED:
        tally.examples.append(f"CONFIRMED {claim.label} on {identity}")


def _say(progress: Progress | None, line: str) -> None:
    if progress is not None:
        progress(line)


@dataclass(frozen=True)
class FdrResult:
    """Outcome of :func:`simulate_fdr`; ``fdr`` is the mean over runs of false CONFIRMED /
    max(CONFIRMED, 1), the false discovery rate Benjamini-Hochberg controls."""

    runs: int
    checks: int
    true_checks: int
    confirmed: int
    false_confirmed: int
    true_confirmed: int
    fdr: float
    false_confirmed_rate: float
    power: float

    def text(self) -> str:
        return (
            f"{self.runs} simulated runs x {self.checks // max(self.runs, 1)} checks "
            f"({self.true_checks} true): {self.confirmed} CONFIRMED, {self.false_confirmed} "
            f"of them false; FDR {self.fdr:.4f} (nominal 0.05), false CONFIRMED per false "
            f"check {self.false_confirmed_rate:.4f}, power {self.power:.3f}"
        )


def synthetic_clusters(rng: np.random.Generator, n_pairs: int, levels=(11, 9, 8)) -> Clusters:
    """Factor labels of a sampled syllogism design: ``n_pairs`` twins drawn from the grid."""
    draws = [rng.integers(0, count, size=n_pairs) for count in levels]
    codes = np.stack([np.repeat(d, 2) for d in draws])
    names = ("pair", "category", "noun")
    return Clusters.from_labels(
        {n: [str(c) for c in row] for n, row in zip(names, codes, strict=True)}
    )


def simulate_fdr(
    runs: int = 50,
    checks_per_run: int = 20,
    true_fraction: float = 0.25,
    n_heads: int = 24,
    n_pairs: int = 56,
    effect: float = 2.0,
    seed: int = 0,
    settings: VerdictSettings | None = None,
) -> FdrResult:
    """False discovery rate of the rule on synthetic data whose truth is known.

    Each check claims that a random 2-head set's summed mean effect is at least 0.5, with the
    random-head-set null. Per-head effects are ``mu_k + a[pair, k] + b[category, k] +
    c[noun, k] + noise`` with word-level random effects as large as the noise: the
    correlation structure that made prompt-level resampling overconfident. In a false check
    the claimed heads' means sum to exactly the threshold (the hardest false case) and equal
    every other head's; in a true check they sum to ``0.5 + effect``.
    """
    settings = settings or VerdictSettings(n_resamples=1000, null_draws=1000)
    rng = np.random.default_rng(seed)
    threshold = 0.5
    confirmed = false_confirmed = true_confirmed = true_checks = 0
    proportions = []
    for run in range(runs):
        measured, truth = [], []
        for index in range(checks_per_run):
            clusters = synthetic_clusters(rng, n_pairs)
            is_true = rng.random() < true_fraction
            means = np.full(n_heads, threshold / 2)
            claimed = rng.choice(n_heads, size=2, replace=False)
            if is_true:
                means[claimed] += effect / 2
            rows = means[None, :] + rng.normal(0, 0.5, size=(clusters.n, n_heads))
            for codes, count in zip(clusters.codes, clusters.levels, strict=True):
                rows += rng.normal(0, 0.5, size=(count, n_heads))[codes]

            def statistic(batch, weights, claimed=claimed):
                return weighted_mean(batch, weights)[:, claimed].sum(axis=1)

            evidence = Evidence(
                check="set",
                rows=rows,
                clusters=clusters,
                statistic=statistic,
                threshold=threshold,
                side=Side.AT_LEAST,
                null=permuted_columns_null(rows, np.arange(n_heads), statistic, clusters),
                null_name="random 2-head sets per cluster",
            )
            measured.append(measure(evidence, settings, "simulation", str(run), str(index)))
            truth.append(is_true)
        hits = [j.verdict is Verdict.CONFIRMED for j in judge_all(measured, settings.alpha)]
        false_hits = sum(h and not t for h, t in zip(hits, truth, strict=True))
        proportions.append(false_hits / max(sum(hits), 1))
        confirmed += sum(hits)
        false_confirmed += false_hits
        true_confirmed += sum(h and t for h, t in zip(hits, truth, strict=True))
        true_checks += sum(truth)
    false_checks = runs * checks_per_run - true_checks
    return FdrResult(
        runs=runs,
        checks=runs * checks_per_run,
        true_checks=true_checks,
        confirmed=confirmed,
        false_confirmed=false_confirmed,
        true_confirmed=true_confirmed,
        fdr=float(np.mean(proportions)) if proportions else 0.0,
        false_confirmed_rate=false_confirmed / max(false_checks, 1),
        power=true_confirmed / max(true_checks, 1),
    )
