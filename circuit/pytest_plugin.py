"""The circuit-claims pytest plugin (entry point ``pytest11: circuit_claims``).

Claim files are the unit of collection: every claim x dataset variant of a collected claim
file becomes one test, with an id such as ``word-movers[L3H6,L4H6,L5H7]-heldout``. Options
(each with an ini default of the same name, ``claims_*``):

``--claims FILE``        claim file(s) to judge (repeatable; also a ``.toml`` path given as a
                         pytest argument); default: every claim file in ``claims_dir`` whose
                         ``model`` is ``--model``
``--model SPEC``         model to judge (default ``bundled``); with ``--claims`` it runs the
                         file's claims against another model (a local directory, a checkpoint,
                         ``random:bundled``)
``--revision REV``       model revision (default: the claim file's, for its own model)
``--device``/``--dtype`` where and in what precision to run (default: cuda if present / float32)
``--claims-json PATH``   write the JSON report (one record per claim x variant + environment)
``--claims-cache DIR``   keep sweeps on disk, keyed by everything that determines them
``--claims-report DIR``  write an HTML report (``index.html``) with a figure per piece of evidence
``--claims-allow-skip``  let a run pass in which every case is skipped (weights unavailable)
``--claims-table``       verdict table layout: ``full``, ``compact`` or ``auto``
``--claims-fuzz N``      also judge each claim on N drawn datasets (a ``-fuzz`` test per claim)
``--claims-baseline-save[=NAME]``, ``--claims-baseline-compare[=NAME|PATH]``,
``--claims-baseline-fail=EXPR``  store a run's numbers, compare a later run with them and fail
                         on a changed verdict, disjoint intervals or a moved statistic
                         (:mod:`circuit.baselines`); ``--revision a,b`` or ``all`` judges
                         every claim at several revisions (:mod:`circuit.formation`)

This module only registers the options. A run that judges claims (``--claims`` given, or a
path argument that is, holds or lies in ``claims_dir``, or a ``.toml`` file) registers
:class:`circuit.pytest_claims.ClaimsPlugin`, which adapts :mod:`circuit.pipeline`; other runs
never import torch or transformer-lens through this plugin.
"""

from pathlib import Path

import pytest

from circuit.defaults import BASELINE_DIRECTORY, BASELINE_NAME, BASELINE_RULES, TABLE_LAYOUTS

OPTIONS: tuple[tuple[str, str, str, str | None], ...] = (
    ("--model", "claims_model", "model spec claims run against (default: bundled)", None),
    ("--revision", "claims_revision", "model revision (default: the claim file's)", None),
    ("--device", "claims_device", "torch device (default: cuda if available, else cpu)", None),
    ("--dtype", "claims_dtype", "model dtype (default: float32)", "float32"),
    ("--claims-json", "claims_json", "write the JSON verdict report to this path", None),
    ("--claims-cache", "claims_cache", "directory for the on-disk measurement cache", None),
    ("--claims-report", "claims_report", "write the HTML report with figures into this dir", None),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("circuit-claims", "circuit claims")
    group.addoption(
        "--claims",
        action="append",
        dest="claims_files",
        default=[],
        metavar="FILE",
        help="claim file to judge (repeatable); default: claim files whose model is --model",
    )
    parser.addini("claims_files", "default claim files (--claims)", type="paths", default=[])
    parser.addini("claims_dir", "directory searched for claim files", default="claims")
    for flag, name, text, default in OPTIONS:
        group.addoption(flag, dest=name, default=None, help=f"{text} [ini: {name}]")
        parser.addini(name, text, default=default)
    group.addoption(
        "--claims-allow-skip",
        action="store_true",
        dest="claims_allow_skip",
        default=None,
        help="let a run in which every claim case is skipped (weights unavailable) pass "
        "[ini: claims_allow_skip]",
    )
    parser.addini("claims_allow_skip", "--claims-allow-skip", type="bool", default=False)
    group.addoption(
        "--claims-table",
        dest="claims_table",
        default=None,
        choices=TABLE_LAYOUTS,
        help="verdict table layout: full, compact (fits 100 columns), or auto (full when the "
        "terminal is wide enough) [ini: claims_table]",
    )
    parser.addini("claims_table", "--claims-table", default="auto")
    group.addoption(
        "--claims-fuzz",
        dest="claims_fuzz",
        default=None,
        type=int,
        metavar="N",
        help="also judge each claim on N datasets that hypothesis draws (one '-fuzz' test per "
        "claim, passing only when CONFIRMED on all; docs/fuzzing.md) [ini: claims_fuzz]",
    )
    parser.addini("claims_fuzz", "--claims-fuzz", default="0")
    group.addoption(
        "--claims-baseline-save",
        nargs="?",
        const=BASELINE_NAME,
        default=None,
        metavar="NAME",
        dest="claims_baseline_save",
        help=f"store this run's numbers as baseline NAME (default {BASELINE_NAME!r}) under "
        "claims_baseline_dir/<model>/",
    )
    group.addoption(
        "--claims-baseline-compare",
        nargs="?",
        const=BASELINE_NAME,
        default=None,
        metavar="NAME|PATH",
        dest="claims_baseline_compare",
        help="compare this run with a stored baseline (a name, or a path to its JSON file); "
        "a failing comparison prints a diff and fails the run",
    )
    group.addoption(
        "--claims-baseline-fail",
        default=None,
        metavar="EXPR",
        dest="claims_baseline_fail",
        help="when a compared check fails: verdict, overlap, statistic:5%% or statistic:0.05, "
        f"comma-separated [ini: claims_baseline_fail, default {BASELINE_RULES}]",
    )
    parser.addini("claims_baseline_fail", "--claims-baseline-fail", default=BASELINE_RULES)
    group.addoption(
        "--claims-baseline-dir",
        default=None,
        metavar="DIR",
        dest="claims_baseline_dir",
        help=f"directory of stored baselines [ini: claims_baseline_dir, default "
        f"{BASELINE_DIRECTORY} under the rootdir]",
    )
    parser.addini(
        "claims_baseline_dir", "directory of stored baselines", default=BASELINE_DIRECTORY
    )


def argument_paths(config: pytest.Config) -> list[Path]:
    """The run's path arguments, absolute (``path::test`` reduced to its path)."""
    invoked = config.invocation_params.dir
    paths = [Path(arg.split("::", 1)[0]) for arg in config.args]
    return [(p if p.is_absolute() else invoked / p).resolve() for p in paths]


def is_claims_run(config: pytest.Config) -> bool:
    """Whether this run judges claims: ``--claims`` (or the ``claims_files`` ini) is given, or
    a path argument is a ``.toml`` file, or is, holds or lies in an existing ``claims_dir``."""
    if config.getoption("claims_files") or config.getini("claims_files"):
        return True
    claims_dir = (config.rootpath / config.getini("claims_dir")).resolve()
    for path in argument_paths(config):
        if path.suffix == ".toml":
            return True
        if not claims_dir.is_dir():
            continue
        if path == claims_dir or claims_dir in path.parents or path in claims_dir.parents:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """In a claims run, register the claims plugin (which checks the options at once)."""
    if not is_claims_run(config):
        return
    from circuit.pytest_claims import ClaimsPlugin  # torch + transformer-lens: claims runs only

    config.pluginmanager.register(ClaimsPlugin(config), ClaimsPlugin.NAME)
