"""The cases of a run: claim files bound to the model and revision each runs against.

A case is one claim x dataset variant (:class:`~circuit.claims.ClaimCase`). Models load here
once each (:class:`~circuit.pipeline.model_cache.ModelCache`) so that heads can be checked
against their shapes before any test runs.
"""

from collections.abc import Sequence

from circuit.claims import ClaimCase, ClaimFile, ClaimFileError, validate_for_model
from circuit.models import (
    ModelSpecError,
    ModelUnavailableError,
    default_revision,
    model_shape,
    resolve,
)
from circuit.pipeline.model_cache import ModelCache
from circuit.pipeline.options import ClaimOptions, ClaimSetupError, select_files
from circuit.revisions import parse_revisions


def select_cases(files: Sequence[ClaimFile], options: ClaimOptions) -> list[ClaimCase]:
    """Every claim x variant x revision of ``files``, bound to the model it runs against.

    With explicit claim files and no ``--model``, each file runs against its own model; a
    model other than the file's takes ``--revision`` (or its default), never the file's.
    ``--revision`` may name several revisions or ``all`` (:mod:`circuit.revisions`); test
    ids then carry the revision.
    """
    prefix_needed = len(files) > 1
    bound: list[tuple[ClaimFile, str, list[str | None]]] = []
    for claim_file in files:
        model = options.model if options.model else claim_file.model
        if options.revision is not None:
            revisions: list[str | None] = list(run_revisions(options.revision, model))
        else:
            own = claim_file.revision if model == claim_file.model else None
            revisions = [default_revision(model, own)]  # the revision actually loaded
        bound.append((claim_file, model, revisions))
    several = len({r for _, _, revisions in bound for r in revisions}) > 1
    cases: list[ClaimCase] = []
    for claim_file, model, revisions in bound:
        prefix = f"{claim_file.path.stem}:" if prefix_needed else ""
        for revision in revisions:
            for claim, variant in claim_file.cases():
                case = ClaimCase(claim_file, claim, variant, model, revision, prefix, several)
                cases.append(case)
    return cases


def run_revisions(text: str, model: str) -> list[str]:
    """The revisions ``--revision text`` names for ``model`` (a ClaimSetupError if none)."""
    try:
        return parse_revisions(text, model)
    except ModelSpecError as error:
        raise ClaimSetupError(f"--revision {text}: {error}") from None


def validate_cases(cases: Sequence[ClaimCase], models: ModelCache, load: bool = True) -> None:
    """Check heads against each available model's shape (ClaimFileError when out of range),
    loading one revision per file and model; a model spec or revision that cannot be used is
    a :class:`ClaimSetupError`. With ``load=False`` (a pytest-xdist controller, which measures
    nothing) the shape is read from the model's config where it says, without loading."""
    seen: set[tuple[str, str, str | None]] = set()
    shaped: set[tuple[str, str]] = set()
    for case in cases:
        key = (str(case.file.path), case.model, case.revision)
        if key in seen:
            continue
        seen.add(key)
        try:
            if (str(case.file.path), case.model) in shaped:  # one load per file and model:
                resolve(case.model, case.revision)  # other revisions share its shape
                continue
            shape = None if load else model_shape(case.model, case.revision)
            model = None if shape is not None else models.get(case.model, case.revision)
        except ModelUnavailableError:
            continue  # its cases are skipped with the reason
        except ModelSpecError as error:
            raise ClaimSetupError(
                f"{case.file.path}: model {case.model} revision {case.revision or 'default'}: "
                f"{error}"
            ) from None
        except (OSError, ValueError, RuntimeError) as error:  # unreadable weights, config...
            first_line = (str(error).splitlines() or [""])[0]
            raise ClaimSetupError(
                f"model {case.model} revision {case.revision or 'default'} cannot be loaded: "
                f"{type(error).__name__}: {first_line}"
            ) from None
        if model is not None:
            shape = int(model.cfg.n_layers), int(model.cfg.n_heads)
        if shape is not None:
            shaped.add((str(case.file.path), case.model))
            validate_for_model(case.file, *shape)


def prepare_cases(options: ClaimOptions, models: ModelCache, load: bool = True) -> list[ClaimCase]:
    """The run's cases: claim files parsed, bound to their models, heads checked against each
    available model (which loads it unless ``load`` is False, see :func:`validate_cases`).
    Raises :class:`ClaimSetupError` with one line."""
    try:
        cases = select_cases(select_files(options), options)
        validate_cases(cases, models, load)
    except ClaimFileError as error:
        raise ClaimSetupError(f"invalid claim file: {error}") from None
    return cases
