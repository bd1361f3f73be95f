"""Baselines: what a run measured, stored to be compared against by a later run.

A baseline file holds, per revision and per check of every judged claim x variant, the
statistic, its interval, the uncorrected and corrected p-values, the verdict and the number
of prompts, with the environment that produced them (model spec, revision, dataset recipe
and fingerprint, dtype, device, and the versions of torch, transformers and
transformer-lens). Files are deterministic JSON (sorted keys, no timestamps), meant to be
committed: by default ``.claims-baselines/<model>/<name>.json``.

A comparison fails a check by rules (``--claims-baseline-fail``, comma-separated; any one
fails it): ``verdict`` (the verdict changed), ``overlap`` (the intervals no longer overlap),
``statistic:5%`` or ``statistic:0.05`` (the statistic moved by more than a relative or an
absolute tolerance). The default is ``verdict,overlap``.
"""

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from circuit.reports import ClaimRecord

SCHEMA_VERSION = 1
ENVIRONMENT_KEYS = ("model", "dtype", "device", "torch", "transformers", "transformer_lens")
TOLERANCE = re.compile(r"^statistic:(\d+(?:\.\d+)?)(%?)$")


class BaselineError(ValueError):
    """A baseline cannot be read, or a rule cannot be parsed (one line)."""


@dataclass(frozen=True)
class Rules:
    """When a compared check fails: a changed verdict, disjoint intervals, a moved statistic."""

    verdict: bool = True
    overlap: bool = True
    relative: float | None = None
    absolute: float | None = None

    def failures(self, before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
        """Why ``now`` fails against ``before`` (empty when it does not)."""
        why = []
        if self.verdict and before["verdict"] != now["verdict"]:
            why.append(f"verdict {before['verdict']} -> {now['verdict']}")
        low, high = before["interval"] or (None, None)
        low2, high2 = now["interval"] or (None, None)
        bounds = (low, high, low2, high2)
        if self.overlap and None not in bounds and (low2 > high or low > high2):
            why.append("intervals do not overlap")
        a, b = before["statistic"], now["statistic"]
        if a is not None and b is not None:
            moved = abs(b - a)
            if self.absolute is not None and moved > self.absolute:
                why.append(f"statistic moved {moved:.3g} > {self.absolute:g}")
            if self.relative is not None and moved > self.relative * abs(a):
                why.append(
                    f"statistic moved {moved / max(abs(a), 1e-300):.1%} > {self.relative:.0%}"
                )
        return why


def parse_rules(text: str) -> Rules:
    """``verdict``, ``overlap``, ``statistic:5%`` / ``statistic:0.05``, comma-separated."""
    verdict = overlap = False
    relative = absolute = None
    for part in (p.strip() for p in text.split(",")):
        if part == "verdict":
            verdict = True
        elif part == "overlap":
            overlap = True
        elif (match := TOLERANCE.match(part)) is not None:
            value = float(match.group(1))
            if match.group(2):
                relative = value / 100
            else:
                absolute = value
        else:
            raise BaselineError(
                f"--claims-baseline-fail: unknown rule {part!r}; use verdict, overlap, "
                "statistic:5% or statistic:0.05 (comma-separated)"
            )
    return Rules(verdict, overlap, relative, absolute)


def model_slug(model: str) -> str:
    """A directory name for a model spec (``EleutherAI/pythia-410m`` ->
    ``EleutherAI__pythia-410m``; a local path -> its directory name)."""
    if model.startswith((".", "/", "~")):
        model = Path(model).expanduser().name or "model"
    return re.sub(r"[^A-Za-z0-9._-]", "_", model.replace("/", "__"))


def baseline_path(directory: Path, model: str, target: str) -> Path:
    """``target`` as a path when it names a JSON file (or has a directory part), else the
    baseline ``<directory>/<model>/<target>.json``."""
    if target.endswith(".json") or "/" in target:
        return Path(target)
    return directory / model_slug(model) / f"{target}.json"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _case_name(record: ClaimRecord) -> str:
    return f"{Path(record.claim_file).stem}:{record.claim_id}/{record.variant}"


def baseline_of(
    judged: Sequence[tuple[ClaimRecord, Mapping[str, Any]]], environment: Mapping[str, Any]
) -> dict[str, Any]:
    """The baseline of ``judged`` records (all about one model), each with its dataset
    recipe (variant, seed, n_pairs): per revision, each case's recipe and dataset
    fingerprint, and each check's numbers."""
    revisions: dict[str, dict[str, Any]] = {}
    for record, recipe in judged:
        at = revisions.setdefault(str(record.revision), {"cases": {}, "checks": {}})
        name = _case_name(record)
        at["cases"][name] = {
            "dataset": dict(recipe),
            "dataset_fingerprint": record.dataset_digest,
            "n_prompts": record.n_prompts,
            "verdict": record.outcome,
            "error": record.error,
        }
        for judgement in record.checks:
            m = judgement.measured
            at["checks"][f"{name}::{m.check}"] = {
                "statistic": _finite(m.statistic),
                "interval": [_finite(m.low), _finite(m.high)],
                "p": _finite(m.p),
                "corrected_p": _finite(judgement.p_corrected),
                "verdict": str(judgement.verdict),
                "n_prompts": m.n_prompts,
            }
    return {
        "schema_version": SCHEMA_VERSION,
        "environment": {k: environment.get(k) for k in ENVIRONMENT_KEYS},
        "revisions": revisions,
    }


def write_baseline(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as deterministic JSON (sorted keys, two-space indent, final newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def read_baseline(path: Path) -> dict[str, Any]:
    """A baseline file (BaselineError when missing or unreadable)."""
    if not path.is_file():
        raise BaselineError(f"no baseline at {path}; save one first with --claims-baseline-save")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BaselineError(f"baseline {path} is not readable JSON: {error}") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise BaselineError(f"baseline {path} is not a schema-{SCHEMA_VERSION} baseline file")
    return data


@dataclass(frozen=True)
class Difference:
    """One compared check that fails, with both sides' numbers."""

    check: str
    baseline: str
    now: str
    why: str


@dataclass
class Comparison:
    """A run compared with a baseline: failing checks, environment differences, checks on
    one side only."""

    path: Path
    failures: list[Difference] = field(default_factory=list)
    environment: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    compared: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.failures)


def _text(entry: Mapping[str, Any]) -> str:
    def number(value: float | None) -> str:
        return "nan" if value is None else f"{value:.3g}"

    low, high = entry["interval"] or (None, None)
    return f"{entry['verdict']} {number(entry['statistic'])} [{number(low)}, {number(high)}]"


def compare(
    baseline: Mapping[str, Any], current: Mapping[str, Any], rules: Rules, path: Path
) -> Comparison:
    """Compare the baseline of this run (``current``, from :func:`baseline_of`) with a stored
    one. Each revision of the run is compared with the same revision of the baseline, or,
    when the baseline holds one revision only, with that one (the revision then shows as an
    environment difference)."""
    result = Comparison(path)
    stored = baseline["revisions"]
    for key in ENVIRONMENT_KEYS:
        before, now = baseline["environment"].get(key), current["environment"].get(key)
        if before != now:
            result.environment.append(f"{key}: {before} -> {now}")
    for revision, now_at in current["revisions"].items():
        if revision in stored:
            before_at = stored[revision]
        elif len(stored) == 1:
            ((only, before_at),) = stored.items()
            result.environment.append(f"revision: {only} -> {revision}")
        else:
            result.new.extend(
                f"{k} @{revision} (revision not in the baseline)" for k in now_at["checks"]
            )
            continue
        for name, case in sorted(now_at["cases"].items()):
            old = before_at["cases"].get(name)
            if old is None:
                continue
            for field_name in ("dataset", "dataset_fingerprint"):
                if old[field_name] != case[field_name]:
                    result.environment.append(
                        f"{name} @{revision}: {field_name} {old[field_name]} -> {case[field_name]}"
                    )
        for key in sorted(set(before_at["checks"]) - set(now_at["checks"])):
            result.missing.append(f"{key} @{revision}")
        for key, entry in sorted(now_at["checks"].items()):
            old = before_at["checks"].get(key)
            if old is None:
                result.new.append(f"{key} @{revision}")
                continue
            result.compared += 1
            why = rules.failures(old, entry)
            if why:
                result.failures.append(
                    Difference(f"{key} @{revision}", _text(old), _text(entry), "; ".join(why))
                )
    return result


def comparison_text(comparison: Comparison) -> str:
    """The diff table (check, baseline, now, why it fails) and every environment difference."""
    lines = [
        f"baseline {comparison.path}: {comparison.compared} checks compared, "
        f"{len(comparison.failures)} failing"
    ]
    if comparison.failures:
        rows = [[d.check, d.baseline, d.now, d.why] for d in comparison.failures]
        lines.append(tabulate(rows, headers=["check", "baseline", "now", "why it fails"]))
    if comparison.environment:
        lines.append("environment differences: " + "; ".join(comparison.environment))
    if comparison.missing:
        lines.append("in the baseline, not judged in this run: " + ", ".join(comparison.missing))
    if comparison.new:
        lines.append("judged in this run, not in the baseline: " + ", ".join(comparison.new))
    return "\n".join(lines)
