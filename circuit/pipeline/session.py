"""One claims run: its options, models, measurement store, cases, and their judged records.

:class:`ClaimSession` is what the pytest plugin adapts; it can be driven without pytest
(see ``tests/pipeline``): :meth:`ClaimSession.prepare` parses the claim files and checks them
against their models, :meth:`ClaimSession.judged` measures every selected case and judges
them together (Benjamini-Hochberg across the run).
"""

import importlib.metadata
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuit.claims import ClaimCase
from circuit.fuzzing.engine import FuzzRun, FuzzTarget, judge_with_fuzz
from circuit.measurement_store import MeasurementStore
from circuit.models import default_revision
from circuit.pipeline.cases import prepare_cases
from circuit.pipeline.distributed import Share, gather, take, wait_for_shares, write_share
from circuit.pipeline.judging import CaseEvidence, judge_cases, measure_cases, records_by_key
from circuit.pipeline.model_cache import ModelCache
from circuit.pipeline.options import ClaimOptions, ClaimSetupError, check_options
from circuit.reports import ClaimRecord


def environment(
    options: ClaimOptions, models: ModelCache, cases: Sequence[ClaimCase] = ()
) -> dict[str, Any]:
    """The run's environment for the JSON report and the header; ``revision`` is the one the
    run's cases load (by name, e.g. the bundled model's final ``step3000``) when they share one."""

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "model": options.effective_model if not options.claim_files else options.model,
        "revision": _run_revision(options, cases),
        "device": options.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "dtype": options.dtype,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformer_lens": version("transformer-lens"),
        "transformers": version("transformers"),
        "scipy": version("scipy"),
        "circuit_claims": version("circuit-claims"),
        "torch_threads": torch.get_num_threads(),
        "models_loaded": models.loads,
    }


def _run_revision(options: ClaimOptions, cases: Sequence[ClaimCase]) -> str | None:
    revisions = {case.revision for case in cases}
    if len(revisions) == 1:
        return next(iter(revisions))
    if not cases and (options.model is not None or not options.claim_files):
        return default_revision(options.effective_model, options.revision)
    return options.revision


@dataclass
class ClaimSession:
    """Measures every selected case (sweeps shared through one store), then judges all."""

    options: ClaimOptions
    models: ModelCache
    store: MeasurementStore
    cases: list[ClaimCase] = field(default_factory=list)
    selected: list[ClaimCase] = field(default_factory=list)
    records: dict[tuple, ClaimRecord] | None = None
    measure_seconds: float = 0.0
    prepared: bool = False
    setup_error: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    """Test id -> why the case was skipped (its model's weights are unavailable)."""
    evidence: dict[tuple, "CaseEvidence"] = field(default_factory=dict)
    """Case key -> its subject and draws, kept only when an HTML report is asked for."""
    revision_seconds: dict[str, float] = field(default_factory=dict)
    """``model@revision`` -> seconds spent loading and measuring its cases."""
    share: Share | None = None
    """This process's share of a distributed run (a pytest-xdist worker), else None."""
    controller: bool = False
    """Whether this process is a pytest-xdist controller (it measures nothing, so it checks
    claim files against model configs without loading the models)."""
    fuzz_examples: int = 0
    """Datasets drawn per claim (``--claims-fuzz``; 0: no fuzzing; docs/fuzzing.md)."""
    fuzz_targets: list[FuzzTarget] = field(default_factory=list)
    """The claims whose ``-fuzz`` items are selected."""
    fuzz: FuzzRun | None = None
    """Their fuzz results, judged in the same correction as the regular cases."""

    def prepare(self) -> list[ClaimCase]:
        """:func:`prepare_cases` once per run; the error, if any, is kept and raised again."""
        if self.setup_error is not None:
            raise ClaimSetupError(self.setup_error)
        if not self.prepared:
            try:
                check_options(self.options)
                self.cases = prepare_cases(self.options, self.models, load=not self.controller)
            except ClaimSetupError as error:
                self.setup_error = str(error)
                raise
            self.prepared = True
        return self.cases

    def judged(self, progress: Callable[[str], None] | None = None) -> dict[tuple, ClaimRecord]:
        """Records of every selected case, measuring and judging on first call."""
        if self.records is None:
            start = time.perf_counter()
            keep = self.evidence if self.options.report_dir is not None else None
            if self.share is None:
                self.records = judge_cases(
                    self.selected, self.models, self.store, progress, keep, self.revision_seconds
                )
            else:
                self.records = self._judged_as_worker(self.share, progress)
            if self.fuzz_targets:  # re-judged with every fuzz judgement in one correction
                self.records, self.fuzz = judge_with_fuzz(
                    self.selected,
                    self.records,
                    self.fuzz_targets,
                    self.models,
                    self.store,
                    progress,
                )
            self.measure_seconds = time.perf_counter() - start
        return self.records

    def _judged_as_worker(
        self, share: Share, progress: Callable[[str], None] | None
    ) -> dict[tuple, ClaimRecord]:
        """Measure the cases this worker takes first, exchange, then judge the whole run as a
        serial run."""
        measured = measure_cases(
            self.selected,
            self.models,
            self.store,
            progress,
            None,
            self.revision_seconds,
            take=lambda position: take(share, position),
        )
        write_share(share, measured, self.skipped, self.revision_seconds)
        wait_for_shares(share)
        return records_by_key(gather(share.directory, self.selected).measured)

    def gather_workers(self, directory: Path, seconds: float) -> None:
        """As the controller of a distributed run: every worker's measurements, judged
        together in the serial order (the selected cases, the skipped ones, the records);
        ``seconds``: the run's wall time so far (workers measure concurrently)."""
        gathered = gather(directory, self.cases)
        self.measure_seconds = seconds
        self.selected = [m.case for m in gathered.measured]
        self.skipped.update(gathered.skipped)
        self.revision_seconds.update(gathered.seconds)
        self.records = records_by_key(gathered.measured) if gathered.measured else None

    def nothing_judged(self) -> str | None:
        """Why a run judged nothing although it had claim cases (every one skipped), or None."""
        if self.records or self.selected or not self.skipped:
            return None
        reasons = sorted(set(self.skipped.values()))
        return f"every claim case ({len(self.skipped)}) was skipped: {'; '.join(reasons)}"

    @property
    def several_revisions(self) -> bool:
        """Whether the run judges claims at more than one revision of a model."""
        return len({(c.model, c.revision) for c in self.selected}) > len(
            {c.model for c in self.selected}
        )

    def judged_by_model(self) -> dict[str, list[tuple[ClaimRecord, dict[str, object]]]]:
        """Each model's judged records with their dataset recipes (for baselines)."""
        grouped: dict[str, list[tuple[ClaimRecord, dict[str, object]]]] = {}
        for case in self.selected:
            record = (self.records or {}).get(case.key)
            if record is None:
                continue
            recipe = case.dataset
            dataset = {"variant": case.variant, "seed": recipe.seed, "n_pairs": recipe.n_pairs}
            grouped.setdefault(case.model, []).append((record, dataset))
        return grouped
