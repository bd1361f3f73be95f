"""``python -m circuit fuzz-repro``: judge one claim on one recipe, as the fuzzer did.

``python -m circuit fuzz-repro --claims claims/bundled.toml --claim word-movers --recipe R``
where ``R`` is a recipe file (the ``recipe:`` line the fuzz summary prints, saved as JSON) or
a claims JSON report (its ``fuzz`` counterexample of that claim). The claim is judged alone
(Benjamini-Hochberg over its own checks only, the least correction it can get) with the claim
file's verdict settings; a counterexample the fuzzer reported fails again whatever the
correction. Exit status: 0 CONFIRMED, 1 not CONFIRMED (the failure reproduces), 2 usage error.
"""

import argparse
import json
import sys
from pathlib import Path

from circuit.claims import ClaimFileError, load_claim_file
from circuit.fuzzing.engine import FuzzTarget, fails
from circuit.fuzzing.recipes import RecipeError, build_checked, recipe_from_json, recipe_json
from circuit.kinds.measurements import Subject
from circuit.measurement_store import MeasurementStore, SubjectKey
from circuit.models import ModelSpecError, default_revision
from circuit.pipeline.judging import judge_run, measure_case
from circuit.pipeline.model_cache import ModelCache
from circuit.reports import ClaimRecord
from circuit.syllogisms import Recipe


def load_recipe(path: Path, claim_id: str) -> Recipe:
    """The recipe in ``path``: a recipe object, or a JSON report's counterexample of
    ``claim_id``. Raises :class:`RecipeError` (one line)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RecipeError(f"--recipe {path}: cannot read JSON: {error}") from None
    if isinstance(data, dict) and "fuzz" in data:
        for entry in data["fuzz"] or []:
            if entry.get("claim_id") == claim_id and entry.get("counterexample"):
                return recipe_from_json(entry["counterexample"])
        raise RecipeError(f"--recipe {path}: the report has no counterexample of {claim_id!r}")
    return recipe_from_json(data)


def reproduce(
    claims: Path,
    claim_id: str,
    recipe: Recipe,
    model: str | None = None,
    revision: str | None = None,
    device: str | None = None,
    dtype: str = "float32",
) -> tuple[ClaimRecord, bool]:
    """The claim judged alone on the recipe's dataset, and whether it :func:`fails` (not
    CONFIRMED whatever the correction, on a judgeable dataset)."""
    claim_file = load_claim_file(claims)
    claim = next((c for c in claim_file.claims if c.id == claim_id), None)
    if claim is None:
        known = [c.id for c in claim_file.claims]
        raise RecipeError(f"--claim {claim_id!r} is not in {claims}; its claims: {known}")
    spec = model or claim_file.model
    rev = (
        revision
        if revision is not None
        else claim_file.revision
        if spec == claim_file.model
        else None
    )
    rev = default_revision(spec, rev)
    models = ModelCache(device, dtype)
    loaded = models.get(spec, rev)
    if loaded is None:
        raise RecipeError(models.unavailable_reason(spec, rev) or f"model {spec} unavailable")
    dataset = build_checked(loaded.tokenizer, recipe, claim_file.verdict.min_clusters)
    if isinstance(dataset, str):
        raise RecipeError(f"the recipe's dataset is rejected ({dataset}), as a draw would be")
    target = FuzzTarget(claim_file, claim, spec, rev)
    case = target.case(recipe)
    key = SubjectKey(
        spec, rev, dtype, str(loaded.cfg.device), case.variant, recipe.seed, recipe.n_pairs
    )
    measured = measure_case(
        case, Subject(loaded, dataset, key, MeasurementStore()), claim_file.verdict
    )
    return judge_run([measured])[0], fails(measured)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m circuit fuzz-repro", description=__doc__)
    parser.add_argument("--claims", required=True, type=Path, help="the claim file")
    parser.add_argument("--claim", required=True, help="the claim's id")
    parser.add_argument("--recipe", required=True, type=Path, help="recipe or report JSON")
    parser.add_argument("--model", default=None, help="default: the claim file's model")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.claim)
        record, failed = reproduce(
            args.claims, args.claim, recipe, args.model, args.revision, args.device, args.dtype
        )
    except (RecipeError, ClaimFileError, ModelSpecError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"recipe: {json.dumps(recipe_json(recipe), separators=(',', ':'))}")
    print(record.failure_message() if not record.passed else f"{record.test_id}: CONFIRMED")
    if failed:
        print("fails whatever the correction: the fuzzer's counterexample reproduces")
    return 0 if record.passed else 1
