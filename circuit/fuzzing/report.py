"""A fuzz run as a terminal table and as the JSON report's ``fuzz`` key."""

import json
import math
import shlex
from typing import Any

from circuit.fuzzing.engine import OUTCOMES, ClaimFuzz, FuzzRun
from circuit.fuzzing.recipes import recipe_digest, recipe_json
from circuit.reports import ClaimRecord

HEADERS = (
    "claim",
    "draws",
    "confirmed",
    "inconclusive",
    "refuted",
    "error",
    "main check",
    "min",
    "q1",
    "median",
    "q3",
    "max",
    "fuzz verdict",
)


def _number(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def fuzz_verdict(result: ClaimFuzz) -> str:
    """``robust`` (CONFIRMED on every drawn dataset), ``not robust`` or ``not fuzzed``."""
    if not result.draws:
        return "not fuzzed"
    return "robust" if result.robust else "not robust"


def repro_command(result: ClaimFuzz, recipe_path: str) -> str:
    """The one command that judges the claim on a recipe file (or on the JSON report)."""
    target = result.target
    words = [
        "python",
        "-m",
        "circuit",
        "fuzz-repro",
        "--claims",
        str(target.file.path),
        "--claim",
        target.claim.id,
        "--recipe",
        recipe_path,
    ]
    if target.model != target.file.model:
        words += ["--model", target.model]
    if target.revision is not None:
        words += ["--revision", target.revision]
    return shlex.join(words)


def _check_text(record: ClaimRecord) -> str:
    deciding = record.deciding()
    if record.error is not None or deciding is None:
        return f"{record.outcome}: {record.error or 'no checks'}"
    m = deciding.measured
    return (
        f"{record.outcome}: {m.check} = {m.statistic:.4g}, CI [{m.low:.4g}, {m.high:.4g}] "
        f"over {m.clusters}, claimed {m.side.value} {m.threshold:.4g}, p = {m.p:.3g}"
    )


def fuzz_rows(run: FuzzRun) -> list[list[str]]:
    rows = []
    for result in run.results.values():
        counts = result.counts()
        total = max(len(result.draws), 1)
        quartiles = result.quartiles() or (None,) * 5
        rows.append(
            [
                result.target.test_id,
                str(len(result.draws)),
                *(f"{counts[o] / total:.2f}" for o in OUTCOMES),
                result.main_check() or "-",
                *(_number(q) for q in quartiles),
                fuzz_verdict(result),
            ]
        )
    return rows


def render_fuzz(run: FuzzRun, json_path: str | None = None) -> str:
    """The fuzz table, each claim's rejected draws and counterexample, and the cost."""
    rows = [list(HEADERS), *fuzz_rows(run)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        "fractions of drawn datasets per outcome; min..max: the main check's statistic over "
        "the draws (the check that most often decided a verdict short of CONFIRMED; on a "
        "robust claim its headline check); robust = CONFIRMED on every drawn dataset"
    )
    for result in run.results.values():
        rejected = ", ".join(f"{n} {why}" for why, n in result.rejections.items()) or "none"
        lines.append(f"{result.target.test_id}: seed {result.seed}; rejected draws: {rejected}")
        if result.note:
            lines.append(f"  {result.note}")
        ce = result.counterexample
        if ce is None:
            continue
        spent = f"{ce.judgements} judgement(s)" + (
            ", budget exhausted" if ce.budget_exhausted else ""
        )
        needs = (
            "; ".join(f"{k}: {', '.join(v)}" for k, v in ce.needed.items())
            or "nothing beyond the simplest words"
        )
        recipe = ce.recipe
        lines += [
            f"  minimal counterexample (shrunk from draw {ce.from_draw + 1} in {spent}), "
            f"judged alone: {_check_text(ce.record)}",
            f"  needs: {needs}",
            f"  template: {recipe.template}",
            f"  categories: {', '.join(recipe.words.categories)}",
            "  descriptor pairs: "
            + ", ".join(f"{a}/{b}" for a, b in recipe.words.descriptor_pairs),
            f"  nouns: {', '.join(recipe.words.nouns)}",
            f"  seed {recipe.seed}, n_pairs {recipe.n_pairs} ({ce.record.n_prompts} prompts)",
            f"  recipe: {json.dumps(recipe_json(recipe), separators=(',', ':'))}",
            "  reproduce: "
            + repro_command(result, json_path or "RECIPE.json")
            + ("" if json_path else "  (RECIPE.json: the recipe line above)"),
        ]
    draws = max((len(r.draws) for r in run.results.values()), default=0)
    lines.append(
        f"fuzzed {len(run.results)} claim(s) on up to {draws} drawn dataset(s) each: "
        f"{run.judgements} judgement(s), {run.shrink_judgements} of them while shrinking; "
        f"{run.seconds:.1f}s drawing, measuring and shrinking (besides the regular cases)"
    )
    return "\n".join(lines)


def _record_json(record: ClaimRecord) -> dict[str, Any]:
    deciding = record.deciding()
    data: dict[str, Any] = {"outcome": record.outcome, "n_prompts": record.n_prompts}
    if record.error is not None:
        data["error"] = record.error
    if deciding is not None:
        m = deciding.measured
        data["deciding"] = {
            "check": m.check,
            "statistic": _finite(m.statistic),
            "interval": [_finite(m.low), _finite(m.high)],
            "threshold": m.threshold,
            "side": m.side.value,
            "clusters": m.clusters,
            "p": _finite(m.p),
            "p_corrected": _finite(deciding.p_corrected),
        }
    return data


def fuzz_json(run: FuzzRun) -> list[dict[str, Any]]:
    """One entry per fuzzed claim (no timings: two runs give identical entries)."""
    entries = []
    for result in run.results.values():
        target = result.target
        quartiles = result.quartiles()
        counts = result.counts()
        total = max(len(result.draws), 1)
        entry: dict[str, Any] = {
            "test_id": target.test_id,
            "claim_id": target.claim.id,
            "claim_file": str(target.file.path),
            "model": target.model,
            "revision": target.revision,
            "examples": target.examples,
            "seed": result.seed,
            "rejections": dict(result.rejections),
            "counts": counts,
            "fractions": {k: round(v / total, 6) for k, v in counts.items()},
            "verdict": fuzz_verdict(result),
            "main_check": result.main_check(),
            "main_statistic": None
            if quartiles is None
            else dict(zip(("min", "q1", "median", "q3", "max"), quartiles, strict=True)),
            "draws": [
                {
                    "index": d.index,
                    "digest": recipe_digest(d.recipe),
                    "recipe": recipe_json(d.recipe),
                    **_record_json(d.record),
                }
                for d in result.draws
            ],
            "note": result.note or None,
            "counterexample": None,
        }
        ce = result.counterexample
        if ce is not None:
            entry["counterexample"] = {
                "recipe": recipe_json(ce.recipe),
                "needed": {k: list(v) for k, v in ce.needed.items()},
                "from_draw": ce.from_draw,
                "shrink_judgements": ce.judgements,
                "budget_exhausted": ce.budget_exhausted,
                "judged_alone": _record_json(ce.record),
                "reproduce": repro_command(result, "REPORT.json"),
            }
        entries.append(entry)
    return entries
