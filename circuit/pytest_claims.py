"""The hooks of a claims run: claim files collected as tests, judged together, reported.

A thin adapter over :class:`circuit.pipeline.session.ClaimSession`: options come from the
command line and ini; claim files are collected as :class:`ClaimFileNode` with one
:class:`ClaimItem` per claim x dataset variant; the first item to run measures every
selected case and judges them together (Benjamini-Hochberg across the run), then each item
passes only if its claim is CONFIRMED.

Bad input never yields a green run: unusable options, a model no claim file is about,
malformed claim files and unknown claim kinds are usage errors (one line, exit code 4)
before any test runs; output paths are checked before any model loads; a run in which every
case is skipped fails (exit code 1) unless ``--claims-allow-skip`` is given, and its JSON
report still says why nothing was judged.
"""

import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from circuit.baselines import (
    BaselineError,
    Comparison,
    baseline_path,
    comparison_text,
    parse_rules,
    read_baseline,
)
from circuit.claims import ClaimCase
from circuit.defaults import BASELINE_RULES
from circuit.formation import formation_table, formations, matrix_table
from circuit.fuzzing.pytest_fuzz import (
    fuzz_examples,
    fuzz_items,
    selected_targets,
    write_fuzz_summary,
)
from circuit.measurement_store import MeasurementStore
from circuit.pipeline.distributed import Share, new_exchange, worker_resources
from circuit.pipeline.model_cache import ModelCache
from circuit.pipeline.options import ClaimOptions, ClaimSetupError, check_options, unique_paths
from circuit.pipeline.outputs import (
    compare_run_baselines,
    save_run_baselines,
    write_run_html,
    write_run_json,
)
from circuit.pipeline.session import ClaimSession, environment
from circuit.pytest_plugin import argument_paths
from circuit.reports import ClaimRecord, summary_line, verdict_table


def _option(config: pytest.Config, name: str) -> str | None:
    value = config.getoption(name)
    if value is None:
        value = config.getini(name)
    return value or None


def read_options(config: pytest.Config) -> ClaimOptions:
    """ClaimOptions from the command line, falling back to the ini values; ``.toml`` path
    arguments count as ``--claims`` files."""
    invoked = config.invocation_params.dir
    files = [Path(p) for p in config.getoption("claims_files")]
    if not files:
        files = [Path(p) for p in config.getini("claims_files")]
    files = [p if p.is_absolute() else invoked / p for p in files]
    files += [p for p in argument_paths(config) if p.suffix == ".toml"]
    json_path = _option(config, "claims_json")
    cache = _option(config, "claims_cache")
    report = _option(config, "claims_report")
    allow_skip = config.getoption("claims_allow_skip")
    return ClaimOptions(
        claim_files=unique_paths(files),
        claims_dir=config.rootpath / config.getini("claims_dir"),
        model=_option(config, "claims_model"),
        revision=_option(config, "claims_revision"),
        device=_option(config, "claims_device"),
        dtype=_option(config, "claims_dtype") or "float32",
        json_path=Path(json_path) if json_path else None,
        cache_dir=Path(cache) if cache else None,
        allow_skip=bool(config.getini("claims_allow_skip") if allow_skip is None else allow_skip),
        report_dir=Path(report) if report else None,
        baseline_save=config.getoption("claims_baseline_save"),
        baseline_compare=config.getoption("claims_baseline_compare"),
        baseline_rules=_option(config, "claims_baseline_fail") or BASELINE_RULES,
        baseline_dir=_baseline_dir(config),
    )


def _baseline_dir(config: pytest.Config) -> Path:
    """``--claims-baseline-dir`` (relative to where pytest started), else the ini value
    (relative to the rootdir)."""
    given = config.getoption("claims_baseline_dir")
    if given:
        return config.invocation_params.dir / given
    return config.rootpath / config.getini("claims_baseline_dir")


def terminal_progress(config: pytest.Config) -> Callable[[str], None]:
    """A progress callback writing ``[claims] ...`` lines to the terminal, past output
    capture (looked up late: the terminal reporter registers after this plugin)."""

    def say(line: str) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture = config.pluginmanager.get_plugin("capturemanager")
        if capture is None:
            reporter.write_line(f"[claims] {line}")
            return
        with capture.global_and_fixture_disabled():  # sweeps run inside a test
            reporter.write_line(f"[claims] {line}")

    return say


def reproduce_command(config: pytest.Config) -> str:
    """The shell command that reruns this pytest invocation from where it was started."""
    params = config.invocation_params
    return f"cd {shlex.quote(str(params.dir))} && " + shlex.join(
        ["python", "-m", "pytest", *params.args]
    )


def _worker_share(config: pytest.Config) -> Share | None:
    """This process's share of a distributed run, when it is a pytest-xdist worker."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or "claims_exchange" not in workerinput:
        return None
    index = int(str(workerinput["workerid"]).removeprefix("gw"))
    return Share(index, int(workerinput["workercount"]), Path(workerinput["claims_exchange"]))


def _is_controller(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist controller (``-n N``, tests run elsewhere)."""
    dist = getattr(config.option, "dist", "no")
    return getattr(config, "workerinput", None) is None and dist not in (None, "no")


def _usage_check(check: Callable[[], object]) -> None:
    """Run ``check``; its :class:`ClaimSetupError` becomes a one-line usage error (exit 4)."""
    try:
        check()
    except ClaimSetupError as error:
        message = str(error)
    else:
        return
    raise pytest.UsageError(message)  # raised outside the handler: no chained traceback


class ClaimNotConfirmed(AssertionError):
    """A claim's verdict is not CONFIRMED; the message holds every check's numbers."""


class ClaimItem(pytest.Item):
    """One claim on one dataset variant: passes only when judged CONFIRMED."""

    def __init__(self, *, case: ClaimCase, session_state: ClaimSession, **kwargs) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.state = session_state

    def record(self) -> ClaimRecord:
        """This case's judged record (the run is measured and judged on first use)."""
        records = self.state.judged(terminal_progress(self.config))
        return records[self.case.key]

    def runtest(self) -> None:
        record = self.record()
        if not record.passed:
            raise ClaimNotConfirmed(record.failure_message())

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ClaimNotConfirmed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"claim {self.name}"


class ClaimFileNode(pytest.File):
    """A claim file: one :class:`ClaimItem` per claim x variant, whatever the claim's kind."""

    def __init__(self, *, session_state: ClaimSession, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state = session_state

    def collect(self) -> Iterator[ClaimItem]:
        try:
            cases = self.state.prepare()
        except ClaimSetupError as error:
            raise self.CollectError(str(error)) from None
        here = self.path.resolve()
        for case in cases:
            if case.file.path.resolve() != here:
                continue
            item = ClaimItem.from_parent(
                self, name=case.test_id, case=case, session_state=self.state
            )
            reason = self.state.models.unavailable_reason(case.model, case.revision)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
            yield item
        mine = [case for case in cases if case.file.path.resolve() == here]
        yield from fuzz_items(self, mine, self.state)  # --claims-fuzz: one -fuzz item per claim

    class CollectError(Exception):
        """A claim file that cannot be used (reported once, as the file's collection error)."""

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, self.CollectError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


class ClaimsPlugin:
    """The hooks of a claims run, around one :class:`ClaimSession`."""

    NAME = "circuit-claims-run"

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        options = read_options(config)
        share = _worker_share(config)
        if share is not None:  # a pytest-xdist worker: its share of the cores, its own GPU
            threads, device = worker_resources(
                share.index,
                share.count,
                os.cpu_count() or 1,
                torch.cuda.device_count(),
                options.device,
            )
            torch.set_num_threads(threads)
            options = replace(options, device=device)
        self.exchange = new_exchange() if _is_controller(config) else None
        self.started = time.perf_counter()
        progress = terminal_progress(config)
        self.state = ClaimSession(
            options=options,
            models=ModelCache(options.device, options.dtype, progress),
            store=MeasurementStore(options.cache_dir, progress),
        )
        self.state.fuzz_examples = fuzz_examples(config)
        self.report_error: str | None = None
        self.nothing: str | None = None
        self.comparisons: list[Comparison] = []
        self.saved: list[Path] = []
        self.state.share = share
        self.state.controller = self.exchange is not None
        _usage_check(lambda: check_options(options))
        if self.exchange is not None and options.report_dir is not None:
            raise pytest.UsageError(
                "--claims-report draws figures from the sweeps, which pytest-xdist workers "
                "keep to themselves: run it without -n"
            )
        if self.exchange is not None and self.state.fuzz_examples:
            raise pytest.UsageError(
                "--claims-fuzz draws and shrinks datasets in one process: run it without -n"
            )
        self._add_claim_files_to_arguments(config, options)

    @staticmethod
    def _add_claim_files_to_arguments(config: pytest.Config, options: ClaimOptions) -> None:
        """Collect every named claim file: with no path argument, the claim files replace the
        default paths; otherwise a file outside every path argument is added to them."""
        if not options.claim_files:
            return
        if config.args_source != pytest.Config.ArgsSource.ARGS:
            config.args[:] = [str(p) for p in options.claim_files]
            return
        given = argument_paths(config)
        for path in options.claim_files:
            resolved = path.resolve()
            if not any(resolved == g or g in resolved.parents for g in given):
                config.args.append(str(path))

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionstart(self, session: pytest.Session):
        """After the header: parse the claim files and check them against their models (which
        loads them) before collection; a problem is one usage error, printed once."""
        result = yield
        _usage_check(self.state.prepare)
        _usage_check(self._check_baselines_exist)
        return result

    def _check_baselines_exist(self) -> None:
        """``--claims-baseline-compare`` names a readable baseline for every model of the run."""
        options = self.state.options
        if options.baseline_compare is None:
            return
        for model in dict.fromkeys(case.model for case in self.state.cases):
            path = baseline_path(options.baseline_dir, model, options.baseline_compare)
            try:
                read_baseline(path)
            except BaselineError as error:
                raise ClaimSetupError(f"--claims-baseline-compare: {error}") from None

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        options = self.state.options
        env = environment(options, self.state.models, self.state.cases)
        files = ", ".join(str(p) for p in options.claim_files) or f"{options.claims_dir}/*.toml"
        model = env["model"] or "each claim file's own"
        return [
            f"circuit-claims: model {model}, revision {env['revision'] or 'per claim file'}, "
            f"device {env['device']}, dtype {env['dtype']}",
            f"circuit-claims: torch {env['torch']}, transformer-lens {env['transformer_lens']}, "
            f"scipy {env['scipy']}; claim files: {files}",
        ]

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector):
        """A claim file of the run becomes a :class:`ClaimFileNode`; other TOML files (e.g.
        a claim file about another model, ``pyproject.toml``) are not collected."""
        if file_path.suffix != ".toml":
            return None
        selected = {case.file.path.resolve() for case in self.state.cases}
        if file_path.resolve() not in selected:
            return None
        return ClaimFileNode.from_parent(parent, path=file_path, session_state=self.state)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """The run's cases: collected, selected, not skipped (BH corrects across these)."""
        selected = []
        for item in items:
            if not isinstance(item, ClaimItem):
                continue
            marker = item.get_closest_marker("skip")
            if marker is not None:
                self.state.skipped[item.case.test_id] = str(marker.kwargs.get("reason", "skip"))
                continue
            selected.append(item.case)
        self.state.selected = selected
        self.state.fuzz_targets = selected_targets(items)

    @pytest.fixture(scope="session")
    def claim_session(self) -> ClaimSession:
        """The run's claim state: options, models, measurement store, cases and records."""
        return self.state

    @pytest.hookimpl(trylast=True)
    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        """(xdist controller) Tell each worker where the run's measurements are exchanged."""
        if self.exchange is not None:
            node.workerinput["claims_exchange"] = str(self.exchange)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session):
        """(xdist worker) Measure this worker's share and judge the run before any test runs,
        whichever tests the worker is given (the other workers wait for its share)."""
        if self.state.share is not None and not session.config.option.collectonly:
            self.state.judged(terminal_progress(self.config))
        return (yield)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Fail a run that judged nothing (unless allowed) and write the reports once every
        case is judged (or, when every case was skipped, saying why nothing was). A
        pytest-xdist worker writes nothing; the controller judges every worker's
        measurements first."""
        state = self.state
        if state.share is not None:
            return
        if self.exchange is not None:
            state.gather_workers(self.exchange, time.perf_counter() - self.started)
            shutil.rmtree(self.exchange, ignore_errors=True)
        self.nothing = None if self.config.option.collectonly else state.nothing_judged()
        refused = self.nothing is not None and not state.options.allow_skip
        if refused and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        path = state.options.json_path
        if path is not None and (state.records is not None or self.nothing is not None):
            try:
                write_run_json(state, path, self.nothing)
            except OSError as error:
                self.report_error = f"cannot write --claims-json {path}: {error}"
        directory = state.options.report_dir
        if directory is not None and state.records is not None:
            try:
                write_run_html(state, directory, reproduce_command(self.config))
            except OSError as error:
                self.report_error = f"cannot write --claims-report {directory}: {error}"
        if state.records:
            self._baselines()
        if any(c.failed for c in self.comparisons) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.report_error is not None and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        state = self.state
        if self.report_error is not None:
            terminalreporter.write_line(f"[claims] error: {self.report_error}", red=True)
        if self.nothing is not None:
            if state.options.allow_skip:
                terminalreporter.write_line(
                    f"[claims] nothing judged (--claims-allow-skip): {self.nothing}"
                )
            else:
                terminalreporter.write_line(
                    f"[claims] error: nothing judged: {self.nothing}; pass --claims-allow-skip "
                    "to let such a run pass",
                    red=True,
                )
        if state.records is None:
            return
        records = list(state.records.values())
        terminalreporter.write_sep("=", "claim verdicts")
        layout = _option(self.config, "claims_table") or "auto"
        width = terminalreporter._tw.fullwidth
        terminalreporter.write_line(verdict_table(records, layout=layout, width=width))
        terminalreporter.write_line(
            f"{summary_line(records)}; measured and judged in {state.measure_seconds:.1f}s"
        )
        if state.options.json_path is not None:
            terminalreporter.write_line(f"claims JSON report: {state.options.json_path}")
        if state.options.report_dir is not None and self.report_error is None:
            index = state.options.report_dir / "index.html"
            terminalreporter.write_line(f"claims HTML report: {index}")
        self._summarise_revisions(terminalreporter, records)
        self._summarise_baselines(terminalreporter)
        write_fuzz_summary(terminalreporter, state)

    def _baselines(self) -> None:
        """Save and compare baselines as asked (a write error is a report error)."""
        options = self.state.options
        if options.baseline_save is not None:
            try:
                self.saved = save_run_baselines(
                    self.state, options.baseline_dir, options.baseline_save
                )
            except OSError as error:
                self.report_error = f"cannot write --claims-baseline-save: {error}"
        if options.baseline_compare is not None:
            rules = parse_rules(options.baseline_rules)
            try:
                self.comparisons = compare_run_baselines(
                    self.state, options.baseline_dir, options.baseline_compare, rules
                )
            except BaselineError as error:
                self.report_error = str(error)

    def _summarise_revisions(self, terminalreporter, records: list[ClaimRecord]) -> None:
        """The claim x revision matrix and the formation report (runs over revisions)."""
        state = self.state
        if not state.several_revisions:
            return
        rows = formations(records)
        terminalreporter.write_sep("=", "claims across revisions")
        terminalreporter.write_line(matrix_table(rows))
        terminalreporter.write_line("")
        terminalreporter.write_line(formation_table(rows))
        seconds = ", ".join(f"{k} {v:.1f}s" for k, v in state.revision_seconds.items())
        terminalreporter.write_line(f"time per revision: {seconds}")
        terminalreporter.write_line(
            "Benjamini-Hochberg ran across every check of every revision of this run."
        )

    def _summarise_baselines(self, terminalreporter) -> None:
        for path in self.saved:
            terminalreporter.write_line(f"claims baseline saved: {path}")
        for comparison in self.comparisons:
            terminalreporter.write_sep("=", "claims baseline comparison")
            terminalreporter.write_line(comparison_text(comparison), red=comparison.failed)
            verdict = "FAILED" if comparison.failed else "passed"
            terminalreporter.write_line(f"baseline comparison {verdict}", red=comparison.failed)
