"""Judged claims as records, the verdict table (tabulate) and the JSON report.

One :class:`ClaimRecord` per claim x dataset variant. Its verdict is the most severe of its
checks' verdicts (every check must be CONFIRMED for the claim to be); its headline numbers
are those of the *deciding* check (the most severe, then the largest corrected p-value).
A case that could not be measured (e.g. the dataset filter emptied it) is an ``ERROR``.
"""

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from circuit.defaults import TABLE_LAYOUTS
from circuit.statistics import VERDICT_ORDER, Judgement, Verdict, confidence_text, worst

ERROR = "ERROR"
JSON_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ClaimRecord:
    """A claim judged on one dataset variant of one model."""

    test_id: str
    claim_id: str
    kind: str
    model: str
    revision: str | None
    variant: str
    claim_file: str
    heads: tuple[str, ...]
    checks: tuple[Judgement, ...] = ()
    error: str | None = None
    n_prompts: int = 0
    top_heads: tuple[str, ...] = ()
    """The model's top heads by the kind's measure (as many as claimed; empty if unranked)."""
    dataset_digest: str = ""

    @property
    def outcome(self) -> str:
        """``CONFIRMED``, ``INCONCLUSIVE``, ``REFUTED`` or ``ERROR``."""
        if self.error is not None or not self.checks:
            return ERROR
        return str(worst([j.verdict for j in self.checks]))

    @property
    def passed(self) -> bool:
        """Only CONFIRMED passes."""
        return self.outcome == Verdict.CONFIRMED

    def deciding(self) -> Judgement | None:
        """The check that decides the verdict (most severe, then least significant)."""
        if not self.checks:
            return None
        return max(self.checks, key=lambda j: (VERDICT_ORDER[j.verdict], j.p_corrected))

    def failure_message(self) -> str:
        """Why the claim is not CONFIRMED: every check with its numbers and what it needed."""
        head = f"{self.test_id} on {self.model}@{self.revision or 'default'}: {self.outcome}"
        if self.error is not None:
            return f"{head}: could not be measured: {self.error}"
        return "\n".join([head, *("  " + j.explanation() for j in self.checks)])


TABLE_HEADERS = (
    "claim",
    "variant",
    "check",
    "statistic",
    "interval",
    "clusters",
    "threshold",
    "p",
    "corrected p",
    "verdict",
    "claim verdict",
)


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3g}"


def table_rows(records: Sequence[ClaimRecord]) -> list[list[str]]:
    """One row per check; the claim's verdict (worst of its checks) on its first row."""
    rows: list[list[str]] = []
    for record in records:
        if record.error is not None or not record.checks:
            rows.append([record.test_id, record.variant, "-", "", "", "", "", "", "", "", ERROR])
            continue
        for index, judgement in enumerate(record.checks):
            m = judgement.measured
            rows.append(
                [
                    record.test_id if index == 0 else "",
                    record.variant if index == 0 else "",
                    m.check,
                    _number(m.statistic),
                    f"[{_number(m.low)}, {_number(m.high)}]",
                    str(m.n_clusters) + ("" if m.enough_clusters else " (too few)"),
                    f"{m.side.value} {_number(m.threshold)}",
                    f"{m.p:.2g}",
                    f"{judgement.p_corrected:.2g}",
                    str(judgement.verdict),
                    record.outcome if index == 0 else "",
                ]
            )
    return rows


COMPACT_HEADERS = ("claim/variant", "check", "stat", "interval", "n", "p (BH)", "verdict")


def compact_rows(records: Sequence[ClaimRecord]) -> list[list[str]]:
    """One row per check, narrow: ``id/variant``, check, statistic, interval, clusters,
    corrected p, and the check's verdict (the claim's in capitals on its own row)."""
    rows: list[list[str]] = []
    for record in records:
        at = f"@{record.revision}"
        name = f"{record.claim_id}/{record.variant}" + (at if record.test_id.endswith(at) else "")
        if record.error is not None or not record.checks:
            rows.append([name, "-", "", "", "", "", ERROR])
            continue
        rows.append([name, "(claim)", "", "", "", "", record.outcome])
        for judgement in record.checks:
            m = judgement.measured
            rows.append(
                [
                    "",
                    f"{m.check} {m.side.value} {_number(m.threshold)}",
                    _number(m.statistic),
                    f"[{_number(m.low)}, {_number(m.high)}]",
                    str(m.n_clusters),
                    f"{judgement.p_corrected:.2g}",
                    str(judgement.verdict).lower(),
                ]
            )
    return rows


def verdict_table(
    records: Sequence[ClaimRecord], tablefmt: str = "simple", layout: str = "full", width: int = 0
) -> str:
    """The verdict table: claim, variant, check, statistic, interval, the independent
    clusters behind it, threshold, p, corrected p, the check's verdict and the claim's.

    ``layout="compact"`` fits about 100 columns (:func:`compact_rows`); ``"auto"`` picks
    the full table when it fits in ``width`` columns, else the compact one.
    """
    if layout not in TABLE_LAYOUTS:
        raise ValueError(f"table layout must be one of {TABLE_LAYOUTS}, got {layout!r}")
    full = tabulate(table_rows(records), headers=TABLE_HEADERS, tablefmt=tablefmt)
    widest = max((len(line) for line in full.splitlines()), default=0)
    if layout == "full" or (layout == "auto" and widest <= width):
        return full
    return tabulate(compact_rows(records), headers=COMPACT_HEADERS, tablefmt=tablefmt)


def summary_line(records: Sequence[ClaimRecord]) -> str:
    """Counts of outcomes, e.g. ``4 CONFIRMED, 1 REFUTED``."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.outcome] = counts.get(record.outcome, 0) + 1
    order = [*map(str, VERDICT_ORDER), ERROR]
    return ", ".join(f"{counts[o]} {o}" for o in order if o in counts) or "no claims judged"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def judgement_json(judgement: Judgement) -> dict[str, Any]:
    """One check as JSON-safe values (non-finite numbers become null)."""
    m = judgement.measured
    return {
        "check": m.check,
        "statistic": _finite(m.statistic),
        "interval": [_finite(m.low), _finite(m.high)],
        "interval_kind": confidence_text(m),
        "n_clusters": m.n_clusters,
        "clusters": m.clusters,
        "min_clusters": m.min_clusters,
        "threshold": m.threshold,
        "side": m.side.value,
        "p": m.p,
        "p_null": _finite(m.p_null),
        "p_threshold": _finite(m.p_threshold),
        "corrected_p": judgement.p_corrected,
        "alpha": judgement.alpha,
        "null": m.null_name,
        "null_median": _finite(m.null_median),
        "unit": m.unit,
        "verdict": str(judgement.verdict),
    }


def record_json(record: ClaimRecord) -> dict[str, Any]:
    """One claim x variant: its identity, the deciding check's numbers and every check."""
    deciding = record.deciding()
    headline = judgement_json(deciding) if deciding is not None else {}
    return {
        "id": record.claim_id,
        "test_id": record.test_id,
        "kind": record.kind,
        "claim_file": record.claim_file,
        "heads": list(record.heads),
        "model": record.model,
        "revision": record.revision,
        "variant": record.variant,
        "n_prompts": record.n_prompts,
        "dataset_digest": record.dataset_digest,
        "top_heads": list(record.top_heads),
        "statistic": headline.get("statistic"),
        "interval": headline.get("interval"),
        "threshold": headline.get("threshold"),
        "p": headline.get("p"),
        "corrected_p": headline.get("corrected_p"),
        "deciding_check": headline.get("check"),
        "verdict": record.outcome,
        "error": record.error,
        "checks": [judgement_json(j) for j in record.checks],
    }


def json_report(records: Sequence[ClaimRecord], environment: Mapping[str, Any]) -> dict[str, Any]:
    """The whole run: schema version, environment, outcome counts and one record per case."""
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "environment": dict(environment),
        "summary": summary_line(records),
        "records": [record_json(r) for r in records],
    }


def write_json(path: Path | str, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (parents created): a failure leaves no
    partial file behind. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(json.dumps(data, indent=2, allow_nan=False))
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return path


def write_json_report(
    path: Path | str, records: Sequence[ClaimRecord], environment: Mapping[str, Any]
) -> Path:
    """Write :func:`json_report` to ``path`` (see :func:`write_json`); returns the path."""
    return write_json(path, json_report(records, environment))
