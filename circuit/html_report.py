"""The HTML report of a claims run: one static page, a figure per piece of evidence.

:func:`claim_figures` draws, for one judged claim x variant, the measurement behind its
checks from the sweeps the run already measured (read from the sweep store, never
recomputed: a sweep that is not there is skipped) and, for every check, the draws of the
verdict rule (null distribution, bootstrap replicates, interval, threshold).
:func:`write_report` writes ``index.html`` beside a ``figures/`` folder of PNG and SVG
files. The page is self-contained: inline CSS, no JavaScript, images by relative path.
"""

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from circuit import figures
from circuit.claims import Claim
from circuit.kinds.common import spearman_per_column
from circuit.kinds.measurements import Subject, path_query_params, value_by_position_params
from circuit.reports import ERROR, ClaimRecord, summary_line, table_rows
from circuit.statistics import Draws

FIGURES = "figures"


@dataclass(frozen=True)
class ReportFigure:
    """One figure on the page: title, caption, and its files relative to the report."""

    title: str
    caption: str
    png: str
    svg: str


@dataclass
class ClaimSection:
    """One claim x variant on the page: its record, statement and figures."""

    record: ClaimRecord
    description: str = ""
    figures: list[ReportFigure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Figures that could not be drawn, and why (e.g. the sweep was not measured)."""


class _Drawer:
    def __init__(self, directory: Path, prefix: str) -> None:
        self.directory = directory
        self.prefix = prefix
        self.drawn: list[ReportFigure] = []

    def add(self, figure, name: str, title: str, caption: str) -> None:
        stem = figures.slug(f"{self.prefix}-{name}")
        png, svg = figures.save(figure, self.directory / FIGURES, stem)
        self.drawn.append(
            ReportFigure(title, caption, f"{FIGURES}/{png.name}", f"{FIGURES}/{svg.name}")
        )


def claim_figures(
    record: ClaimRecord,
    claim: Claim,
    subject: Subject | None,
    draws: Sequence[Draws],
    directory: Path,
    prefix: str,
) -> ClaimSection:
    """Draw one claim x variant's figures into ``directory/figures`` (file names start with
    ``prefix``) and return its section of the page."""
    section = ClaimSection(record, claim.description)
    drawer = _Drawer(directory, prefix)
    if subject is not None:
        drawer_for = _KIND_FIGURES.get(claim.kind)
        if drawer_for is not None:
            section.skipped.extend(drawer_for(claim, subject, drawer))
    by_check = {d.check: d for d in draws}
    for index, judgement in enumerate(record.checks):
        m = judgement.measured
        d = by_check.get(m.check)
        if d is None:
            continue
        null = "the null draws (grey) and " if d.null is not None else ""
        drawer.add(
            figures.draws_histogram(m, d, str(judgement.verdict)),
            f"check{index}-{m.check}",
            f"Check {m.check}: "
            + ("null distribution and bootstrap" if d.null is not None else "bootstrap"),
            f"{null}the {d.replicates.size} cluster-bootstrap replicates (blue) of {m.check}; "
            f"observed {m.statistic:.4g} (black), {m.confidence_level:.0%} interval "
            f"[{m.low:.4g}, {m.high:.4g}] (shaded), threshold {m.side.value} {m.threshold:.4g} "
            f"(red, dashed). Null: {m.null_name}.",
        )
    section.figures = drawer.drawn
    return section


def _normalised_corrupted(subject: Subject) -> np.ndarray | None:
    base = subject.stored("baselines")
    if base is None:
        return None
    clean = base["clean"].double().numpy()
    corrupted = base["corrupted"].double().numpy()
    gap = clean.mean() - corrupted.mean()
    return (corrupted - corrupted.mean()) / gap


def _word_mover_figures(claim: Claim, subject: Subject, drawer: _Drawer) -> list[str]:
    run = subject.stored("clean_run")
    if run is None:
        return ["direct logit attribution: the clean_run sweep was not measured"]
    heads = claim.primary_heads
    named = [(h.layer, h.head) for h in heads]
    n = len(subject.dataset)
    dla = run["dla"].double().numpy()  # [n, L, H]
    drawer.add(
        figures.head_heatmap(
            dla.mean(axis=0),
            f"Direct logit attribution per head (mean of {n} clean prompts)",
            "logit diff (right - wrong)",
            outlined=named,
        ),
        "dla",
        "Direct logit attribution per head",
        "Each head's output at the final position, through the final LayerNorm, projected on "
        "the right-minus-wrong answer direction (mean over prompts, in logits). The claimed "
        "heads are outlined.",
    )
    role = claim.roles.get("attends_to")
    if role is None:
        return []
    position = subject.dataset.roles[role]
    attention = run["attention"][..., position].double().numpy()  # [n, L, H]
    layers = [h.layer for h in heads]
    indices = [h.head for h in heads]
    x = attention[:, layers, indices]  # [n, m]
    y = dla[:, layers, indices]
    rho = spearman_per_column(x, y)
    panels = [
        (f"{h}: Spearman rho = {r:.2f}", x[:, j], y[:, j])
        for j, (h, r) in enumerate(zip(heads, rho, strict=True))
    ]
    drawer.add(
        figures.scatter_grid(
            panels,
            f"attention final -> {role}",
            "DLA (logits)",
            f"Attention to '{role}' against writing in the answer direction ({n} prompts)",
        ),
        "attention-writing",
        "Attention against writing, per mover",
        f"One point per clean prompt: each claimed head's attention from the final position to "
        f"the '{role}' token against its direct logit attribution; Spearman rho over prompts.",
    )
    return []


def _value_position_figures(claim: Claim, subject: Subject, drawer: _Drawer) -> list[str]:
    heads = claim.primary_heads
    role = claim.roles.get("position")
    at = subject.dataset.roles.get(role) if role else None
    patched = None
    if at is not None:
        params = value_by_position_params(heads, at)
        patched = subject.stored("value_by_position", params) or subject.stored("value_by_position")
    corrupted = _normalised_corrupted(subject)
    if patched is None or corrupted is None:
        return ["value patching by position: the value_by_position sweep was not measured"]
    values = patched["patched"].double().numpy()  # [n, L, pos, H]
    per_head = values.transpose(0, 1, 3, 2)[:, [h.layer for h in heads], [h.head for h in heads]]
    effect = (per_head - corrupted[:, None, None]).sum(axis=1).mean(axis=0)  # [pos]
    tokens = [str(t) for t in subject.model.to_str_tokens(subject.dataset.clean_tokens[0])]
    names = ", ".join(map(str, heads))
    drawer.add(
        figures.position_bars(
            effect,
            tokens,
            at,
            f"Value patching by position, summed over {names} ({len(subject.dataset)} prompts)",
            "recovered (fraction of the gap)",
            role or "",
        ),
        "value-by-position",
        "Value patching by position",
        "The claimed heads' clean value vectors patched into the corrupted run at one position "
        "at a time: recovery of the normalised metric (clean 1, corrupted 0), summed over the "
        f"claimed heads, mean over prompts. Tokens of the first clean prompt; '{role}' in "
        "colour.",
    )
    return []


def _query_influencer_figures(claim: Claim, subject: Subject, drawer: _Drawer) -> list[str]:
    receivers = claim.heads["receivers"]
    stored = subject.stored("path_query", path_query_params(receivers))
    base = subject.stored("baselines")
    if stored is None or base is None:
        return ["path patching: the path_query sweep was not measured"]
    clean = base["clean"].double().numpy()
    corrupted = base["corrupted"].double().numpy()
    clean_norm = (clean - corrupted.mean()) / (clean.mean() - corrupted.mean())
    effect = (clean_norm[:, None, None] - stored["patched"].double().numpy()).mean(axis=0)
    names = ",".join(map(str, receivers))
    drawer.add(
        figures.head_heatmap(
            effect,
            f"Path patching into the queries of {names} ({len(subject.dataset)} prompts)",
            "effect (fraction of the gap)",
            outlined=[(h.layer, h.head) for h in claim.primary_heads],
            marked=[(h.layer, h.head) for h in receivers],
        ),
        "path-q",
        "Path patching senders, receiver input q",
        "Each sender's path into the receivers' queries carries the corrupted run: the drop of "
        "the normalised metric from the clean prompt's (mean over prompts). Claimed senders "
        "outlined, receivers hatched, grey cells have no path.",
    )
    return []


_KIND_FIGURES = {
    "word-movers": _word_mover_figures,
    "value-position": _value_position_figures,
    "query-influencers": _query_influencer_figures,
}


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
  color: #222; background: #fafafa; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5em 2em 4em; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
h3 { font-size: 1.05em; margin-top: 1.6em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.78em; margin: 0.8em 0; }
td.claim { max-width: 16em; overflow-wrap: anywhere; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.CONFIRMED { background: #e3f4e3; }
.INCONCLUSIVE { background: #fff4d6; }
.REFUTED { background: #fbe0e0; }
.ERROR { background: #e9e9e9; }
.badge { display: inline-block; padding: 0.05em 0.5em; border-radius: 0.3em; font-weight: 600;
  font-size: 0.85em; border: 1px solid #ccc; }
pre { background: #f4f4f4; padding: 0.7em; overflow-x: auto; font-size: 0.85em;
  white-space: pre-wrap; word-break: break-all; }
ul.explanations li { margin-bottom: 0.4em; font-size: 0.9em; }
figure { margin: 1.2em 0; }
figure img { width: 700px; max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; max-width: 700px; }
nav ul { columns: 2; font-size: 0.9em; }
.muted { color: #777; font-size: 0.85em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _verdict_table(records: Sequence[ClaimRecord]) -> str:
    from circuit.reports import TABLE_HEADERS

    head = "".join(f"<th>{_e(h)}</th>" for h in TABLE_HEADERS)
    lines = [f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>']
    numeric = {3, 4, 5, 6, 7, 8}
    rows = table_rows(records)
    row_index = 0
    for record in records:
        verdicts = [str(j.verdict) for j in record.checks] or [ERROR]
        if record.error is not None:
            verdicts = [ERROR]
        for verdict in verdicts:
            cells = rows[row_index]
            row_index += 1
            tds = []
            for column, cell in enumerate(cells):
                cls = ' class="num"' if column in numeric else ""
                cls = ' class="claim"' if column == 0 else cls
                if column == 0 and cell:
                    breakable = _e(cell).replace(",", ",<wbr>").replace("]-", "]-<wbr>")
                    cell_html = f'<a href="#{_anchor(record)}">{breakable}</a>'
                elif column == len(cells) - 1 and cell:
                    cell_html = f'<span class="badge {_e(cell)}">{_e(cell)}</span>'
                else:
                    cell_html = _e(cell)
                tds.append(f"<td{cls}>{cell_html}</td>")
            lines.append(f'<tr class="{_e(verdict)}">{"".join(tds)}</tr>')
    lines.append("</tbody></table></div>")
    return "\n".join(lines)


def _anchor(record: ClaimRecord) -> str:
    return figures.slug(f"claim-{record.test_id}")


def _environment_table(environment: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e('-' if v is None else v)}</td></tr>"
        for k, v in environment.items()
    )
    return f"<table>{rows}</table>"


def _section(section: ClaimSection) -> str:
    record = section.record
    parts = [
        f'<h2 id="{_anchor(record)}">{_e(record.test_id)} '
        f'<span class="badge {_e(record.outcome)}">{_e(record.outcome)}</span></h2>',
        f"<p>{_e(section.description)}</p>" if section.description else "",
        f'<p class="muted">kind {_e(record.kind)}; heads {_e(", ".join(record.heads))}; '
        f"variant {_e(record.variant)}; {record.n_prompts} prompts; model "
        f"{_e(record.model)}@{_e(record.revision or 'default')}; claim file "
        f"{_e(record.claim_file)}</p>",
    ]
    if record.error is not None:
        parts.append(f"<p><strong>Could not be measured:</strong> {_e(record.error)}</p>")
    if record.checks:
        items = "".join(
            f'<li class="{_e(j.verdict)}">{_e(j.explanation())}</li>' for j in record.checks
        )
        parts.append(f'<ul class="explanations">{items}</ul>')
    for figure in section.figures:
        parts.append(
            f'<figure><img src="{_e(figure.png)}" alt="{_e(figure.title)}">'
            f"<figcaption><strong>{_e(figure.title)}.</strong> {_e(figure.caption)} "
            f'(<a href="{_e(figure.svg)}">SVG</a>, <a href="{_e(figure.png)}">PNG</a>)'
            "</figcaption></figure>"
        )
    for reason in section.skipped:
        parts.append(f'<p class="muted">Figure not drawn: {_e(reason)}.</p>')
    return "\n".join(p for p in parts if p)


def render(sections: Sequence[ClaimSection], environment: Mapping[str, Any], command: str) -> str:
    """The page's HTML: verdict table, environment, command, and one section per claim."""
    records = [s.record for s in sections]
    toc = "".join(
        f'<li><a href="#{_anchor(s.record)}">{_e(s.record.test_id)}</a> '
        f'<span class="badge {_e(s.record.outcome)}">{_e(s.record.outcome)}</span></li>'
        for s in sections
    )
    models = sorted({f"{r.model}@{r.revision or 'default'}" for r in records})
    body = [
        "<h1>Circuit claims: verdicts</h1>",
        f'<p class="muted">{_e(summary_line(records))}; {_e(", ".join(models) or "no model")}. '
        "Verdict rule: docs/verdict-rule.md (cluster bootstrap over crossed word factors, "
        "permutation nulls, Benjamini-Hochberg across every check of the run).</p>",
        "<h2>Verdict table</h2>",
        _verdict_table(records),
        f"<nav><ul>{toc}</ul></nav>",
        "<h2>Reproduce</h2>",
        f"<pre>{_e(command)}</pre>",
        "<h2>Environment</h2>",
        _environment_table(environment),
        *(_section(s) for s in sections),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Circuit claims report</title>\n<style>{CSS}</style>\n</head>\n<body><main>\n"
        + "\n".join(body)
        + "\n</main></body>\n</html>\n"
    )


def write_report(
    directory: Path,
    sections: Sequence[ClaimSection],
    environment: Mapping[str, Any],
    command: str,
) -> Path:
    """Write ``directory/index.html`` (the figures are already in ``directory/figures``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "index.html"
    path.write_text(render(sections, environment, command), encoding="utf-8")
    return path
