"""Claims across revisions: the claim x revision matrix and when each claim forms and breaks.

From the judged records of a run over several revisions (``--revision a,b`` or ``all``):

* the **matrix**: per claim (claim file, id, dataset variant) and revision, the verdict, the
  deciding check's statistic and interval;
* the **formation report** per claim: the first revision at which it is CONFIRMED, the
  revision from which it stays CONFIRMED, and every regression (CONFIRMED at one revision,
  not at the next one judged);
* for head claims, the model's top heads at every revision by the claim's own measure and
  their Jaccard similarity with the claimed set (a circuit whose heads move shows here).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from circuit.reports import ClaimRecord
from circuit.revisions import ordered
from circuit.statistics import Judgement, Verdict

CONFIRMED = str(Verdict.CONFIRMED)


@dataclass(frozen=True)
class Cell:
    """One claim at one revision."""

    revision: str | None
    verdict: str
    check: str
    statistic: float | None
    low: float | None
    high: float | None
    top_heads: tuple[str, ...]
    jaccard: float | None


@dataclass(frozen=True)
class Formation:
    """One claim across the run's revisions, in training order."""

    claim: str
    """``<claim id>/<variant>`` (prefixed by the claim file's stem when the run has several)."""
    heads: tuple[str, ...]
    cells: tuple[Cell, ...]

    @property
    def first_confirmed(self) -> str | None:
        """The first revision at which the claim is CONFIRMED."""
        return next((c.revision for c in self.cells if c.verdict == CONFIRMED), None)

    @property
    def stays_confirmed_from(self) -> str | None:
        """The earliest revision from which every later revision is CONFIRMED too."""
        stays = None
        for cell in reversed(self.cells):
            if cell.verdict != CONFIRMED:
                break
            stays = cell.revision
        return stays

    @property
    def regressions(self) -> tuple[tuple[str | None, str | None], ...]:
        """``(confirmed at, not confirmed at)`` for every CONFIRMED revision followed by one
        that is not."""
        return tuple(
            (before.revision, after.revision)
            for before, after in zip(self.cells, self.cells[1:], strict=False)
            if before.verdict == CONFIRMED and after.verdict != CONFIRMED
        )


def jaccard(claimed: Sequence[str], found: Sequence[str]) -> float | None:
    """``|claimed & found| / |claimed | found|``; None when nothing was ranked."""
    if not found:
        return None
    union = set(claimed) | set(found)
    return len(set(claimed) & set(found)) / len(union)


def _claim_name(record: ClaimRecord) -> str:
    """``<claim id>/<variant>``, with the claim file's prefix when the test id has one."""
    return f"{record.test_id.split('[', 1)[0]}/{record.variant}"


def main_check(record: ClaimRecord) -> Judgement | None:
    """The claim's own first check (the one after the shared ``gap`` floor), so that every
    revision shows the same quantity; None for a claim that could not be measured."""
    return next((j for j in record.checks if j.measured.check != "gap"), record.deciding())


def formations(records: Sequence[ClaimRecord]) -> list[Formation]:
    """Every claim of ``records`` across its revisions (claims in first-seen order)."""
    by_claim: dict[str, list[ClaimRecord]] = {}
    for record in records:
        by_claim.setdefault(_claim_name(record), []).append(record)
    result = []
    for name, group in by_claim.items():
        order = ordered([r.revision for r in group])
        at = {r.revision: r for r in group}
        cells = []
        for revision in order:
            record = at[revision]
            main = main_check(record)
            m = main.measured if main is not None else None
            cells.append(
                Cell(
                    revision=revision,
                    verdict=record.outcome,
                    check=m.check if m is not None else "",
                    statistic=m.statistic if m is not None else None,
                    low=m.low if m is not None else None,
                    high=m.high if m is not None else None,
                    top_heads=record.top_heads,
                    jaccard=jaccard(record.heads, record.top_heads),
                )
            )
        result.append(Formation(name, group[0].heads, tuple(cells)))
    return result


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def matrix_table(rows: Sequence[Formation]) -> str:
    """Claim x revision: ``VERDICT stat [low, high]`` per cell (the claim's main check,
    named in the first column)."""
    revisions = ordered([c.revision for f in rows for c in f.cells])
    table = []
    for formation in rows:
        cells = {c.revision: c for c in formation.cells}
        checks = sorted({c.check for c in formation.cells if c.check})
        line = [f"{formation.claim} ({', '.join(checks)})" if checks else formation.claim]
        for revision in revisions:
            cell = cells.get(revision)
            line.append(
                ""
                if cell is None
                else f"{cell.verdict} {_number(cell.statistic)} "
                f"[{_number(cell.low)}, {_number(cell.high)}]"
            )
        table.append(line)
    return tabulate(table, headers=["claim", *[str(r) for r in revisions]])


def formation_table(rows: Sequence[Formation]) -> str:
    """Per claim: first CONFIRMED, CONFIRMED from, regressions, and the top heads with their
    Jaccard similarity to the claimed set at each revision."""
    table = []
    for formation in rows:
        regressions = ", ".join(f"{a} -> {b}" for a, b in formation.regressions) or "none"
        heads = "; ".join(
            f"{c.revision}: {','.join(c.top_heads)} (J={_number(c.jaccard)})"
            for c in formation.cells
            if c.top_heads
        )
        table.append(
            [
                formation.claim,
                formation.first_confirmed or "never",
                formation.stays_confirmed_from or "-",
                regressions,
                heads or "-",
            ]
        )
    headers = ["claim", "first CONFIRMED", "CONFIRMED from", "regressions", "top heads (Jaccard)"]
    return tabulate(table, headers=headers)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def formation_json(rows: Sequence[Formation]) -> list[dict[str, Any]]:
    """The matrix and the formation report, one object per claim."""
    return [
        {
            "claim": f.claim,
            "heads": list(f.heads),
            "first_confirmed": f.first_confirmed,
            "stays_confirmed_from": f.stays_confirmed_from,
            "regressions": [{"confirmed_at": a, "not_confirmed_at": b} for a, b in f.regressions],
            "revisions": [
                {
                    "revision": c.revision,
                    "verdict": c.verdict,
                    "check": c.check,
                    "statistic": _finite(c.statistic),
                    "interval": None if c.low is None else [_finite(c.low), _finite(c.high)],
                    "top_heads": list(c.top_heads),
                    "jaccard": c.jaccard,
                }
                for c in f.cells
            ],
        }
        for f in rows
    ]
