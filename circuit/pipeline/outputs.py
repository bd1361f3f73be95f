"""A run's reports on disk: the JSON report (every record, the environment, what was skipped
and why) and the HTML report (figures from the sweeps the run measured)."""

from pathlib import Path
from typing import Any

from circuit import html_report
from circuit.pipeline.session import ClaimSession, environment
from circuit.reports import json_report, write_json


def run_report(session: ClaimSession, nothing_judged: str | None = None) -> dict[str, Any]:
    """The JSON report of a run: its judged records (none when nothing was judged), its
    environment, its skipped cases with their reasons and, if so, why nothing was judged."""
    records = list((session.records or {}).values())
    data = json_report(records, environment(session.options, session.models, session.cases))
    data["skipped"] = [{"test_id": k, "reason": v} for k, v in sorted(session.skipped.items())]
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
