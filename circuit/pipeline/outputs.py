"""A run's reports on disk: the JSON report (every record, the environment, what was skipped
and why) and the HTML report (figures from the sweeps the run measured)."""

from pathlib import Path
from typing import Any

from circuit import html_report
from circuit.baselines import (
    Comparison,
    Rules,
    baseline_of,
    baseline_path,
    compare,
    read_baseline,
    write_baseline,
)
from circuit.formation import formation_json, formations
from circuit.pipeline.session import ClaimSession, environment
from circuit.reports import json_report, write_json


def run_report(session: ClaimSession, nothing_judged: str | None = None) -> dict[str, Any]:
    """The JSON report of a run: its judged records (none when nothing was judged), its
    environment, its skipped cases with their reasons and, if so, why nothing was judged."""
    records = list((session.records or {}).values())
    data = json_report(records, environment(session.options, session.models, session.cases))
    data["skipped"] = [{"test_id": k, "reason": v} for k, v in sorted(session.skipped.items())]
    data["revision_seconds"] = dict(session.revision_seconds)
    if session.several_revisions:
        data["formation"] = formation_json(formations(records))
        data["correction"] = "Benjamini-Hochberg across every check of every revision of the run"
    if session.fuzz is not None:  # --claims-fuzz (docs/fuzzing.md)
        from circuit.fuzzing.report import fuzz_json

        data["fuzz"] = fuzz_json(session.fuzz)
    if nothing_judged is not None:
        data["nothing_judged"] = nothing_judged
    return data


def write_run_json(session: ClaimSession, path: Path, nothing_judged: str | None = None) -> Path:
    """Write :func:`run_report` to ``path`` atomically."""
    return write_json(path, run_report(session, nothing_judged))


def write_run_html(session: ClaimSession, directory: Path, command: str) -> Path:
    """The HTML report: a section (figures from the stored sweeps and the checks' draws) per
    judged case, in the order the cases ran, then ``index.html`` (returned). ``command`` is
    the shell command that reproduces the run."""
    sections = []
    records = session.records or {}
    for index, case in enumerate(session.selected):
        record = records.get(case.key)
        if record is None:
            continue
        kept = session.evidence.get(case.key)
        sections.append(
            html_report.claim_figures(
                record,
                case.claim,
                kept.subject if kept is not None else None,
                kept.draws if kept is not None else (),
                directory,
                f"{index:02d}-{record.claim_id}-{record.variant}",
            )
        )
    env = environment(session.options, session.models, session.cases)
    return html_report.write_report(directory, sections, env, command)


def run_baselines(session: ClaimSession) -> dict[str, dict[str, Any]]:
    """The baseline of this run, one per model (see :func:`circuit.baselines.baseline_of`)."""
    env = environment(session.options, session.models, session.cases)
    return {
        model: baseline_of(judged, {**env, "model": model})
        for model, judged in session.judged_by_model().items()
    }


def save_run_baselines(session: ClaimSession, directory: Path, name: str) -> list[Path]:
    """Write this run's baselines, ``<directory>/<model>/<name>.json`` per model."""
    return [
        write_baseline(baseline_path(directory, model, name), data)
        for model, data in run_baselines(session).items()
    ]


def compare_run_baselines(
    session: ClaimSession, directory: Path, target: str, rules: Rules
) -> list[Comparison]:
    """Compare this run, model by model, with the stored baseline ``target`` (a name under
    ``directory``, or a path); :class:`circuit.baselines.BaselineError` when one is missing."""
    comparisons = []
    for model, current in run_baselines(session).items():
        path = baseline_path(directory, model, target)
        comparisons.append(compare(read_baseline(path), current, rules, path))
    return comparisons
