"""Figures of sweeps and of the verdict rule's draws, drawn with matplotlib on Agg.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
state, no GUI backend); :func:`save` writes it as PNG and SVG. Figures are 7 inches wide
(700 px at 100 dpi; the PNG is written at 200 dpi for print). :func:`standard_figures` draws
the standard sweeps of any model on a syllogism dataset (``python -m circuit figures``):
direct logit attribution per head, activation patching of heads (``z``, all positions) and of
the residual stream, and path patching into chosen receivers' queries.
"""

import math
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from circuit.statistics import Draws, Measured

WIDTH = 7.0
"""Figure width in inches (700 px at 100 dpi)."""
PNG_DPI = 200
DIVERGING = "RdBu_r"
HIGHLIGHT = "#d95f02"
MAX_TICKS = 32


def _figure(height: float) -> Figure:
    figure = Figure(figsize=(WIDTH, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _symmetric_limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    limit = float(finite.max()) if finite.size else 0.0
    return limit if limit > 0 else 1.0


def _ticks(count: int) -> np.ndarray:
    step = max(1, math.ceil(count / MAX_TICKS))
    return np.arange(0, count, step)


def head_heatmap(
    values: np.ndarray,
    title: str,
    label: str,
    outlined: Sequence[tuple[int, int]] = (),
    marked: Sequence[tuple[int, int]] = (),
) -> Figure:
    """A layer x head heatmap ``values [L, H]`` on a diverging colour map centred on 0.

    Rows are layers ``L{l}``, columns heads ``H{h}``; ``outlined`` heads get a black frame
    and their ``L{l}H{h}`` name, ``marked`` ones (e.g. receivers) a hatched grey frame. NaN
    cells (no such sender) are light grey.
    """
    values = np.asarray(values, dtype=float)
    n_layers, n_heads = values.shape
    height = min(9.0, max(2.6, 0.35 * n_layers + 1.6))
    figure = _figure(height)
    axes = figure.add_subplot()
    limit = _symmetric_limit(values)
    cmap = colormaps[DIVERGING].with_extremes(bad="#dddddd")
    image = axes.imshow(
        np.ma.masked_invalid(values),
        cmap=cmap,
        vmin=-limit,
        vmax=limit,
        aspect="auto",
        interpolation="nearest",
    )
    figure.colorbar(image, ax=axes, label=label, shrink=0.9)
    rows, columns = _ticks(n_layers), _ticks(n_heads)
    axes.set_yticks(rows, [f"L{layer}" for layer in rows])
    axes.set_xticks(columns, [f"H{head}" for head in columns])
    axes.set_xlabel("head")
    axes.set_ylabel("layer")
    axes.set_title(title, fontsize=10)
    fontsize = max(5.0, min(9.0, 64.0 / max(n_heads, 1)))
    for layer, head in marked:
        axes.add_patch(
            Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#555555")
        )
    for layer, head in outlined:
        axes.add_patch(
            Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="black", lw=2.0)
        )
        value = values[layer, head]
        colour = "white" if math.isfinite(value) and abs(value) > 0.6 * limit else "black"
        axes.text(
            head,
            layer,
            f"L{layer}H{head}",
            ha="center",
            va="center",
            fontsize=fontsize,
            color=colour,
        )
    return figure


def position_heatmap(values: np.ndarray, tokens: Sequence[str], title: str, label: str) -> Figure:
    """A layer x position heatmap ``values [L, pos]``, columns labelled with ``tokens``."""
    values = np.asarray(values, dtype=float)
    n_layers, n_positions = values.shape
    figure = _figure(min(9.0, max(3.0, 0.35 * n_layers + 2.2)))
    axes = figure.add_subplot()
    limit = _symmetric_limit(values)
    image = axes.imshow(
        values,
        cmap=colormaps[DIVERGING],
        vmin=-limit,
        vmax=limit,
        aspect="auto",
        interpolation="nearest",
    )
    figure.colorbar(image, ax=axes, label=label, shrink=0.9)
    rows, columns = _ticks(n_layers), _ticks(n_positions)
    axes.set_yticks(rows, [f"L{layer}" for layer in rows])
    axes.set_xticks(
        columns,
        [_token_label(tokens, p) for p in columns],
        rotation=60,
        ha="right",
        rotation_mode="anchor",
    )
    axes.set_ylabel("layer (resid_pre)")
    axes.set_title(title, fontsize=10)
    return figure


def _token_label(tokens: Sequence[str], position: int) -> str:
    text = tokens[position] if position < len(tokens) else "?"
    return f"{position}: {text!r}"


def position_bars(
    values: np.ndarray,
    tokens: Sequence[str],
    highlight: int | None,
    title: str,
    label: str,
    role: str = "",
) -> Figure:
    """Bars per position ``values [pos]``, labelled with the prompt's ``tokens``; the bar at
    ``highlight`` (the claimed role's position) in colour, the others grey."""
    values = np.asarray(values, dtype=float)
    figure = _figure(3.6)
    axes = figure.add_subplot()
    positions = np.arange(values.size)
    colours = ["#9e9e9e"] * values.size
    if highlight is not None and 0 <= highlight < values.size:
        colours[highlight] = HIGHLIGHT
    axes.bar(positions, np.nan_to_num(values), color=colours)
    axes.axhline(0, color="black", lw=0.8)
    axes.margins(y=0.12)
    axes.set_xticks(
        positions,
        [_token_label(tokens, p) for p in positions],
        rotation=60,
        ha="right",
        rotation_mode="anchor",
        fontsize=8,
    )
    if highlight is not None and 0 <= highlight < values.size:
        axes.get_xticklabels()[highlight].set_color(HIGHLIGHT)
        axes.get_xticklabels()[highlight].set_fontweight("bold")
        if role:
            axes.annotate(
                role,
                (highlight, np.nan_to_num(values[highlight])),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                color=HIGHLIGHT,
                fontsize=9,
            )
    axes.set_ylabel(label)
    axes.set_title(title, fontsize=10)
    return figure


def scatter_grid(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]], xlabel: str, ylabel: str, title: str
) -> Figure:
    """One scatter per panel ``(panel title, x [n], y [n])``, up to 3 per row (2 x 2 for 4)."""
    columns = 2 if len(panels) in (2, 4) else min(3, max(1, len(panels)))
    rows = math.ceil(len(panels) / columns)
    figure = _figure(2.5 * rows + 0.6)
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.flat[len(panels) :]:
        axes.set_visible(False)
    for axes, (name, x, y) in zip(grid.flat, panels, strict=False):
        axes.scatter(x, y, s=8, alpha=0.5, color="#1f77b4", edgecolors="none")
        axes.set_title(name, fontsize=9)
        axes.set_xlabel(xlabel, fontsize=8)
        axes.set_ylabel(ylabel, fontsize=8)
        axes.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=10)
    return figure


def draws_histogram(measured: Measured, draws: Draws, verdict: str = "") -> Figure:
    """A check's null distribution (when it has one) and its bootstrap replicates as
    histograms, with the observed statistic, the bootstrap interval and the threshold."""
    figure = _figure(3.0)
    axes = figure.add_subplot()
    pieces = [draws.replicates[np.isfinite(draws.replicates)]]
    if draws.null is not None:
        pieces.append(draws.null[np.isfinite(draws.null)])
    every = np.concatenate([*pieces, [measured.statistic, measured.threshold]])
    every = every[np.isfinite(every)]
    low, high = (float(every.min()), float(every.max())) if every.size else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 61)
    if draws.null is not None and pieces[1].size:
        axes.hist(pieces[1], bins=bins, color="#9e9e9e", alpha=0.8, label="null draws")
    if pieces[0].size:
        axes.hist(pieces[0], bins=bins, color="#1f77b4", alpha=0.55, label="bootstrap replicates")
    if math.isfinite(measured.low) and math.isfinite(measured.high):
        axes.axvspan(
            measured.low,
            measured.high,
            color="#1f77b4",
            alpha=0.12,
            label=f"{measured.confidence_level:.0%} interval",
        )
    if math.isfinite(measured.statistic):
        axes.axvline(measured.statistic, color="black", lw=1.8, label="observed")
    axes.axvline(
        measured.threshold,
        color="#d62728",
        lw=1.5,
        ls="--",
        label=f"threshold ({measured.side.value} {measured.threshold:.3g})",
    )
    label = f"{measured.check} ({measured.unit})" if measured.unit else measured.check
    axes.set_xlabel(textwrap.fill(label, 90), fontsize=9)
    axes.set_ylabel("draws")
    suffix = f": {verdict}" if verdict else ""
    axes.set_title(f"{measured.check}{suffix}", fontsize=10)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``-``, ``_`` and ``.``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "figure"


def save(figure: Figure, directory: Path, stem: str) -> tuple[Path, Path]:
    """Write ``stem.png`` and ``stem.svg`` into ``directory``; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    png, svg = directory / f"{stem}.png", directory / f"{stem}.svg"
    figure.savefig(png, dpi=PNG_DPI, metadata={"Software": None})
    figure.savefig(svg, metadata={"Date": None})
    return png, svg


def standard_figures(
    model,
    dataset,
    directory: Path,
    receivers: Sequence[tuple[int, int]] = (),
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Draw the standard sweeps of ``model`` on ``dataset`` into ``directory`` (PNG + SVG):
    direct logit attribution per head, head ``z`` patching (all positions), residual-stream
    patching by layer and position, and (with ``receivers``) path patching into their
    queries. Patching values are the study's normalised metric (clean 1, corrupted 0).
    Returns the PNG paths."""
    import torch

    from circuit.attribution import logit_attribution
    from circuit.metrics import LogitDiffMetric, logit_diff
    from circuit.patching import patch_heads, patch_resid
    from circuit.paths import path_patch

    say = progress or (lambda line: None)
    device = model.cfg.device
    clean = dataset.clean_tokens.to(device)
    corrupted = dataset.corrupted_tokens.to(device)
    answers = dataset.answers.to(device)
    n = len(dataset)
    tokens = [str(t) for t in model.to_str_tokens(dataset.clean_tokens[0])]
    written: list[Path] = []

    def keep(figure: Figure, stem: str) -> None:
        written.append(save(figure, directory, stem)[0])
        say(f"wrote {written[-1]}")

    with torch.inference_mode():
        clean_ld = logit_diff(model(clean), answers).double().mean().item()
        corrupted_ld = logit_diff(model(corrupted), answers).double().mean().item()
    metric = LogitDiffMetric(dataset.answers, clean_ld, corrupted_ld)
    say(f"{n} prompts; logit diff clean {clean_ld:.3g}, corrupted {corrupted_ld:.3g}")
    dla = logit_attribution(model, clean, answers).mean_heads.double().cpu().numpy()
    keep(
        head_heatmap(
            dla,
            f"Direct logit attribution per head (mean of {n} clean prompts)",
            "logit diff (right - wrong)",
        ),
        "dla-heads",
    )
    z = patch_heads(model, clean, corrupted, metric, "z").double().cpu().numpy()
    keep(
        head_heatmap(
            z,
            f"Head z patched from clean into corrupted, all positions ({n} prompts)",
            "metric (clean 1, corrupted 0)",
        ),
        "patch-heads-z",
    )
    resid = patch_resid(model, clean, corrupted, metric).double().cpu().numpy()
    keep(
        position_heatmap(
            resid,
            tokens,
            f"Residual stream patched from clean ({n} prompts; tokens of the first clean prompt)",
            "metric (clean 1, corrupted 0)",
        ),
        "patch-resid",
    )
    if receivers:
        names = ",".join(f"L{layer}H{head}" for layer, head in receivers)
        paths = path_patch(model, clean, corrupted, metric, list(receivers), "q")
        effect = paths.double().cpu().numpy() - 1.0
        keep(
            head_heatmap(
                effect,
                f"Path patching into the queries of {names} ({n} prompts)",
                "metric change (patched - clean)",
                marked=list(receivers),
            ),
            f"path-q-{slug(names)}",
        )
    return written
