"""The cases of a run: claim files bound to the model and revision each runs against.

A case is one claim x dataset variant (:class:`~circuit.claims.ClaimCase`). Models load here
once each (:class:`~circuit.pipeline.model_cache.ModelCache`) so that heads can be checked
against their shapes before any test runs.
"""

from collections.abc import Sequence

from circuit.claims import ClaimCase, ClaimFile, ClaimFileError, validate_for_model
from circuit.models import ModelSpecError, default_revision
from circuit.pipeline.model_cache import ModelCache
from circuit.pipeline.options import ClaimOptions, ClaimSetupError, select_files


def select_cases(files: Sequence[ClaimFile], options: ClaimOptions) -> list[ClaimCase]:
    """Every claim x variant of ``files``, bound to the model and revision it runs against.

    With explicit claim files and no ``--model``, each file runs against its own model; a
    model other than the file's takes ``--revision`` (or its default), never the file's.
    """
    prefix_needed = len(files) > 1
    cases: list[ClaimCase] = []
    for claim_file in files:
        model = options.model if options.model else claim_file.model
        if options.revision is not None:
            revision = options.revision
        else:
            revision = claim_file.revision if model == claim_file.model else None
        revision = default_revision(model, revision)  # the revision actually loaded, by name
        prefix = f"{claim_file.path.stem}:" if prefix_needed else ""
        for claim, variant in claim_file.cases():
            cases.append(ClaimCase(claim_file, claim, variant, model, revision, prefix))
    return cases


def validate_cases(cases: Sequence[ClaimCase], models: ModelCache) -> None:
    """Check heads against each available model's shape (ClaimFileError when out of range);
    a model spec or revision that cannot be used is a :class:`ClaimSetupError`."""
    seen: set[tuple[str, str, str | None]] = set()
    for case in cases:
        key = (str(case.file.path), case.model, case.revision)
        if key in seen:
            continue
        seen.add(key)
        try:
            model = models.get(case.model, case.revision)
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
            validate_for_model(case.file, int(model.cfg.n_layers), int(model.cfg.n_heads))


def prepare_cases(options: ClaimOptions, models: ModelCache) -> list[ClaimCase]:
    """The run's cases: claim files parsed, bound to their models, heads checked against each
    available model (which loads it). Raises :class:`ClaimSetupError` with one line."""
    try:
        cases = select_cases(select_files(options), options)
        validate_cases(cases, models)
    except ClaimFileError as error:
        raise ClaimSetupError(f"invalid claim file: {error}") from None
    return cases
