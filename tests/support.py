"""Helpers shared by the test modules (the one support module; no test module imports another).

Pytester projects for end-to-end runs of the plugin: a project is a directory with an ini
file (which fixes its rootdir) and a ``claims/`` directory; the plugin is loaded through its
``pytest11`` entry point, as in a user's repository.
"""

import os
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

WORD_MOVERS = """
[[claims]]
id = "word-movers"
kind = "word-movers"
heads = ["L1H0", "L1H1"]
roles = { attends_to = "descriptor" }
thresholds = { share = 0.5, top_k = 2, spearman = 0.3 }
"""

MORE_CLAIMS = """
[[claims]]
id = "other-movers"
kind = "word-movers"
heads = ["L1H2"]
roles = { attends_to = "descriptor" }
thresholds = { share = 0.5, top_k = 1, spearman = 0.3 }
variants = ["heldout"]

[[claims]]
id = "values"
kind = "value-position"
heads = ["L1H0"]
roles = { position = "descriptor" }
thresholds = { share = 0.5 }

[[claims]]
id = "queries"
kind = "query-influencers"
heads = ["L0H1"]
receivers = ["L1H0"]
thresholds = { top_k = 1, effect = 0.01 }
"""


def claim_file(model: str | Path, claims: str = WORD_MOVERS, revision: str | None = None) -> str:
    """A claim file's text about ``model`` (small datasets: 6 pairs, seed 1)."""
    head = f'model = "{model}"\n'
    if revision is not None:
        head += f'revision = "{revision}"\n'
    recipe = '[dataset]\nvariants = ["heldout", "unfiltered"]\nseed = 1\nn_pairs = 6\n'
    return head + recipe + claims


def claims_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A project with an ini file and an empty ``claims/`` directory."""
    pytester.makeini("[pytest]\n")
    (pytester.path / "claims").mkdir()
    return pytester


def write_claims(project: pytest.Pytester, name: str, text: str) -> Path:
    """Write a claim file into the project's ``claims/`` directory."""
    path = project.path / "claims" / name
    path.write_text(text)
    return path


def run_claims(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    """``pytest claims ARGS`` in the project, in process."""
    return project.runpytest("-p", "no:cacheprovider", "claims", *args)


def collected_cases(result: pytest.RunResult) -> list[str]:
    """Test ids of the claim cases a ``--collect-only -q`` run listed (``file.toml::id``)."""
    return [line.split("::", 1)[1] for line in result.stdout.lines if ".toml::" in line]


def read_only_dir(tmp_path: Path) -> Path:
    """A directory no file can be created in (root ignores permission bits: use sysfs)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/sys")
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o500)
    return directory


# A claim file's header about the bundled model (small: 6 pairs), a word-mover and a
# query-influencer claim, for the validation batteries.
CLAIM_HEADER = 'model = "bundled"\n[dataset]\nvariants = ["heldout"]\nseed = 1\nn_pairs = 6\n'
MOVERS = WORD_MOVERS.replace('id = "word-movers"', 'id = "movers"')
QUERIES = """
[[claims]]
id = "queries"
kind = "query-influencers"
heads = ["L0H1"]
receivers = ["L1H0"]
thresholds = { top_k = 1, effect = 0.01 }
"""


def toml_value(value: object) -> str:
    """A TOML literal for the values claim files use (strings, numbers, lists, tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML literal for {value!r}")


def shipped_claim_file(kind: str = "word-movers", variant: str = "heldout", **dataset) -> str:
    """The first claim of ``kind`` in ``claims/bundled.toml``, alone, judged on ``variant``
    (the shipped file's dataset recipe, with ``dataset`` overrides): a claim the bundled model
    is known to carry, whatever its heads are after retraining."""
    raw = tomllib.loads((ROOT / "claims" / "bundled.toml").read_text())
    claim = dict(next(c for c in raw["claims"] if c["kind"] == kind))
    claim.pop("variants", None)
    recipe = {**raw.get("dataset", {}), **dataset, "variants": [variant]}
    lines = [f"model = {toml_value(raw['model'])}", "", "[dataset]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in recipe.items()]
    lines += ["", "[[claims]]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in claim.items()]
    return "\n".join(lines) + "\n"


# --- fuzzing (tests/fuzzing) ----------------------------------------------------------------

FUZZ_CLAIM = """model = "bundled"
[dataset]
variants = ["heldout"]
[fuzz]
examples = 10
shrink = 40

[[claims]]
id = "planted"
kind = "word-movers"
heads = ["L3H6"]
roles = { attends_to = "descriptor" }
thresholds = { share = 0.5 }
"""
"""A claim file for the fuzz engine's planted tests (its kind is replaced by
:func:`planted_measure`, so the model's circuit plays no part)."""


def planted_measure(broken: frozenset[str] = frozenset(), value: float = -10.0):
    """A measure function for :func:`circuit.fuzzing.engine.judge_with_fuzz` whose one check
    holds (per-prompt rows near 1, claimed >= 0.5) except on prompts whose category is in
    ``broken`` (rows ``value``): ground truth for the fuzzer, judged by the real rule."""
    import numpy as np

    from circuit.pipeline.judging import MeasuredCase
    from circuit.statistics import Evidence, Side, measure_with_draws, weighted_mean

    def measure(case, subject, settings, keep_draws=False):
        categories = subject.dataset.factors["category"]
        index = np.arange(len(categories))
        rows = np.where([c in broken for c in categories], value, 1.0 + 0.1 * np.sin(index))
        evidence = Evidence(
            "planted", rows, subject.clusters, weighted_mean, 0.5, Side.AT_LEAST, None, "none"
        )
        identity = (case.claim.id, case.claim.kind, case.variant)
        measured, _ = measure_with_draws(evidence, settings, *identity)
        return MeasuredCase(case, settings, (measured,), n_prompts=len(categories))

    return measure
