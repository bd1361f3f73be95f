"""The ``-fuzz`` test items of a claims run with ``--claims-fuzz N`` (docs/fuzzing.md).

Each claim of a collected claim file gets one :class:`FuzzItem`, e.g.
``word-movers[L3H6,L3H0,L3H4,L1H1]-fuzz``, which passes only when the claim is CONFIRMED on
every drawn dataset. The first item to run (regular or fuzz) measures and judges everything
(:meth:`circuit.pipeline.session.ClaimSession.judged`).
"""

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from circuit.claims import ClaimCase
from circuit.fuzzing.engine import FuzzTarget, targets_for
from circuit.fuzzing.report import render_fuzz


class ClaimNotRobust(AssertionError):
    """A claim is not CONFIRMED on every drawn dataset."""


class FuzzItem(pytest.Item):
    """One claim on ``N`` drawn datasets: passes only when robust."""

    def __init__(self, *, target: FuzzTarget, session_state, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target = target
        self.state = session_state

    def runtest(self) -> None:
        from circuit.pytest_claims import terminal_progress

        self.state.judged(terminal_progress(self.config))
        result = self.state.fuzz.results[self.target.key] if self.state.fuzz else None
        if result is None:
            raise ClaimNotRobust(f"{self.target.test_id}: not fuzzed")
        if not result.robust:
            counts = ", ".join(f"{n} {k}" for k, n in result.counts().items() if n)
            lines = [
                f"{self.target.test_id}: not robust: {counts or 'no dataset judged'} "
                f"of {len(result.draws)} drawn dataset(s)"
            ]
            lines += [
                "  " + line
                for line in render_fuzz_one(self.state, self.target.key).splitlines()[2:-1]
            ]
            raise ClaimNotRobust("\n".join(lines))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ClaimNotRobust):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"fuzz {self.name}"


def render_fuzz_one(state, key: tuple) -> str:
    """:func:`render_fuzz` of one claim's result."""
    from circuit.fuzzing.engine import FuzzRun

    single = FuzzRun({key: state.fuzz.results[key]}, seconds=state.fuzz.seconds)
    path = state.options.json_path
    return render_fuzz(single, str(path) if path is not None else None)


def fuzz_examples(config: pytest.Config) -> int:
    """``--claims-fuzz`` (or the ``claims_fuzz`` ini value): an integer >= 0, else a one-line
    usage error."""
    value = config.getoption("claims_fuzz")
    if value is None:
        value = config.getini("claims_fuzz") or 0
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise pytest.UsageError(f"--claims-fuzz must be an integer >= 0, got {value!r}")
    return count


def fuzz_items(parent: pytest.File, cases: Sequence[ClaimCase], state) -> Iterator[FuzzItem]:
    """A claim file's ``-fuzz`` items (none unless the run fuzzes; the file's ``[fuzz]
    examples`` overrides ``--claims-fuzz``; a skipped model skips its items too)."""
    if state.fuzz_examples <= 0:
        return
    for target in targets_for(cases, state.fuzz_examples):
        item = FuzzItem.from_parent(parent, name=target.test_id, target=target, session_state=state)
        reason = state.models.unavailable_reason(target.model, target.revision)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
        yield item


def selected_targets(items: Sequence[pytest.Item]) -> list[FuzzTarget]:
    """The targets of the selected, not skipped ``-fuzz`` items."""
    return [
        item.target
        for item in items
        if isinstance(item, FuzzItem) and item.get_closest_marker("skip") is None
    ]


def write_fuzz_summary(terminalreporter, state) -> None:
    """The fuzz table in the terminal summary (when the run fuzzed)."""
    if getattr(state, "fuzz", None) is None:
        return
    terminalreporter.write_sep("=", "claim fuzzing")
    path = state.options.json_path
    terminalreporter.write_line(render_fuzz(state.fuzz, str(path) if path is not None else None))
