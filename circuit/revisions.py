"""Revisions as an axis of a run: which checkpoints a model declares, and in what order.

``--revision`` takes one revision, a comma-separated list, or ``all``: every revision the
model declares (the bundled model's ``revisions.json``, a local directory with the same
layout, or Pythia's published schedule of 154 checkpoints for hub Pythia models). Revisions
are ordered by training step when their names say it (``step400``), else as given.
"""

import re
from collections.abc import Sequence
from pathlib import Path

from circuit.data import BUNDLED_DIR
from circuit.models import RANDOM_PREFIX, ModelSpecError, bundled_revisions

ALL = "all"
PYTHIA_STEPS: tuple[int, ...] = (0, *(2**i for i in range(10)), *range(1000, 143001, 1000))
"""Pythia's published checkpoints: step 0, 1, 2, 4, ..., 512, then every 1000 to 143000."""
STEP = re.compile(r"^step(\d+)$")


def step_of(revision: str | None) -> int | None:
    """The training step a revision name states (``step400`` -> 400), else None."""
    match = STEP.match(revision or "")
    return int(match.group(1)) if match else None


def ordered(revisions: Sequence[str | None]) -> list[str | None]:
    """Distinct revisions, by training step where every name states one, else as given."""
    distinct = list(dict.fromkeys(revisions))
    steps = [step_of(r) for r in distinct]
    if all(step is not None for step in steps):
        return [r for _, r in sorted(zip(steps, distinct, strict=True))]
    return distinct


def declared_revisions(spec: str) -> list[str]:
    """Every revision ``spec`` declares, in training order; ModelSpecError when none."""
    if spec.startswith(RANDOM_PREFIX):
        raise ModelSpecError(f"{spec} has random weights and declares no revisions")
    directory = BUNDLED_DIR if spec == "bundled" else Path(spec).expanduser()
    if spec == "bundled" or directory.is_dir():
        names = list(bundled_revisions(directory))
        if not names:
            raise ModelSpecError(
                f"{spec} declares no revisions (no revisions.json or revisions/<name>/)"
            )
        return [r for r in ordered(names) if r is not None]
    if spec.count("/") == 1 and "pythia" in spec.lower():
        return [f"step{step}" for step in PYTHIA_STEPS]
    raise ModelSpecError(
        f"{spec} declares no revision list: name the revisions (--revision step1000,step2000)"
    )


def parse_revisions(text: str, spec: str) -> list[str]:
    """``--revision`` as a list: one name, ``a,b,c``, or ``all`` (see
    :func:`declared_revisions`). Names are stripped and deduplicated, in training order."""
    names = [part.strip() for part in text.split(",")]
    if any(not name for name in names):
        raise ModelSpecError(f"--revision {text!r} has an empty name in its list")
    if ALL in names:
        if len(names) > 1:
            raise ModelSpecError(f"--revision {text!r}: 'all' cannot be combined with names")
        return declared_revisions(spec)
    return [r for r in ordered(names) if r is not None]
