"""What a claims run was asked for, and the refusal of unusable requests before anything loads.

:class:`ClaimOptions` holds the resolved options (command line or ini); :func:`check_options`
refuses unusable ones with a :class:`ClaimSetupError`, whose message is one line naming the
option, what it got and what it needs.
"""

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from circuit.baselines import BaselineError, parse_rules
from circuit.claims import ClaimFile, ClaimFileError, discover_claim_files, load_claim_file
from circuit.defaults import BASELINE_DIRECTORY, BASELINE_RULES
from circuit.models import (
    ModelSpecError,
    ModelUnavailableError,
    parse_device,
    parse_dtype,
    resolve,
)
from circuit.revisions import parse_revisions

DEFAULT_MODEL = "bundled"


class ClaimSetupError(ValueError):
    """The run's options or claim files cannot be used (one line: the option or file, what it
    got, what it needs)."""


@dataclass(frozen=True)
class ClaimOptions:
    """Resolved options: explicit claim files (or a directory to search), model, revision,
    device, dtype, JSON report path, measurement cache directory, whether a run in which every
    case is skipped (unavailable weights) may pass, and the HTML report's directory."""

    claim_files: tuple[Path, ...] = ()
    claims_dir: Path = Path("claims")
    model: str | None = None
    revision: str | None = None
    device: str | None = None
    dtype: str = "float32"
    json_path: Path | None = None
    cache_dir: Path | None = None
    allow_skip: bool = False
    report_dir: Path | None = None
    baseline_save: str | None = None
    """Store the run's numbers as this baseline name (``--claims-baseline-save``)."""
    baseline_compare: str | None = None
    """Compare the run with this baseline, a name or a path (``--claims-baseline-compare``)."""
    baseline_rules: str = BASELINE_RULES
    baseline_dir: Path = Path(BASELINE_DIRECTORY)

    @property
    def effective_model(self) -> str:
        """The model claims run against when no claim file is named."""
        return self.model or DEFAULT_MODEL


def unique_paths(paths: Sequence[Path]) -> tuple[Path, ...]:
    """``paths`` without repeats of the same file (compared resolved), first one kept."""
    seen: set[Path] = set()
    kept: list[Path] = []
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            kept.append(path)
    return tuple(kept)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_writable(directory: Path) -> str | None:
    """Why no file can be created in ``directory`` (None when one can); leaves nothing."""
    try:
        handle, probe = tempfile.mkstemp(dir=directory, prefix=".circuit-claims-probe-")
    except OSError as error:
        return error.strerror or str(error)
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def check_output_file(path: Path, flag: str) -> None:
    """``path`` can be written as a file: not a directory, under a writable directory."""
    if path.is_dir():
        raise ClaimSetupError(
            f"{flag} {path} is a directory; name a file, e.g. {flag} {path / 'report.json'}"
        )
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise ClaimSetupError(f"{flag} {path}: {ancestor} is a file, not a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise ClaimSetupError(f"{flag} {path}: the file is not writable")
    problem = _probe_writable(ancestor)
    if problem is not None:
        raise ClaimSetupError(f"{flag} {path}: cannot write in {ancestor} ({problem})")


def check_cache_dir(path: Path, flag: str) -> None:
    """``path`` is (or can become) a writable directory."""
    if path.exists() and not path.is_dir():
        raise ClaimSetupError(
            f"{flag} {path} is a file; name a directory for the measurement cache"
        )
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise ClaimSetupError(f"{flag} {path}: {ancestor} is a file, not a directory")
    problem = _probe_writable(ancestor)
    if problem is not None:
        raise ClaimSetupError(f"{flag} {path}: cannot write in {ancestor} ({problem})")


def check_output_dir(path: Path, flag: str) -> None:
    """``path`` is (or can become) a writable directory for a report."""
    if path.exists() and not path.is_dir():
        raise ClaimSetupError(f"{flag} {path} is a file; name a directory for the report")
    check_cache_dir(path, flag)


def _claim_files_text(claims_dir: Path) -> str:
    """The claim files of ``claims_dir`` and their models, for messages."""
    entries = []
    for path in discover_claim_files(claims_dir):
        try:
            model = load_claim_file(path).model
        except ClaimFileError:
            model = "unreadable"
        entries.append(f"{path.name} (model {model})")
    listed = ", ".join(entries) or "none"
    return f"claim files in {claims_dir}: {listed}"


def check_options(options: ClaimOptions) -> None:
    """Refuse unusable options before any model loads (:class:`ClaimSetupError`): output
    paths, dtype, device, the ``--model`` spec and ``--revision``, claim files that do not
    exist, and a model no claim file is about."""
    if options.json_path is not None:
        check_output_file(options.json_path, "--claims-json")
    if options.cache_dir is not None:
        check_cache_dir(options.cache_dir, "--claims-cache")
    if options.report_dir is not None:
        check_output_dir(options.report_dir, "--claims-report")
    try:
        parse_rules(options.baseline_rules)
    except BaselineError as error:
        raise ClaimSetupError(str(error)) from None
    if options.baseline_save is not None:
        check_cache_dir(options.baseline_dir, "--claims-baseline-save")
    for flag, value, parse in (
        ("--dtype", options.dtype, parse_dtype),
        ("--device", options.device, parse_device),
    ):
        try:
            parse(value)
        except ModelSpecError as error:
            raise ClaimSetupError(f"{flag} {value}: {error}") from None
    for path in options.claim_files:
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise ClaimSetupError(f"--claims {path} {what}; name a claim file (TOML)")
    if options.model is not None or not options.claim_files:
        model = options.effective_model
        try:
            revisions = (
                [None] if options.revision is None else (parse_revisions(options.revision, model))
            )
            for revision in revisions:
                try:
                    resolve(model, revision)
                except ModelUnavailableError:
                    continue  # its cases are skipped with the reason (an error unless allowed)
        except ModelSpecError as error:
            rev = f" --revision {options.revision}" if options.revision else ""
            files = "" if options.claim_files else f"; {_claim_files_text(options.claims_dir)}"
            raise ClaimSetupError(f"--model {model}{rev}: {error}{files}") from None
    if not options.claim_files:
        try:
            files = select_files(options)
        except ClaimFileError:
            return  # reported with the claim files (prepare_cases)
        if not files:
            raise ClaimSetupError(
                f"no claim file is about model {options.effective_model!r}, so nothing would "
                f"be judged; {_claim_files_text(options.claims_dir)}; pass --claims FILE to "
                f"judge a file's claims against {options.effective_model}"
            )


def select_files(options: ClaimOptions) -> list[ClaimFile]:
    """The claim files of the run: those named, or those whose model is the run's model.

    Raises :class:`circuit.claims.ClaimFileError` for a malformed file.
    """
    if options.claim_files:
        return [load_claim_file(path) for path in options.claim_files]
    files = [load_claim_file(path) for path in discover_claim_files(options.claims_dir)]
    return [f for f in files if f.model == options.effective_model]
