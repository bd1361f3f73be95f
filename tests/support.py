"""Helpers shared by the test modules (the one support module; no test module imports another).

Pytester projects for end-to-end runs of the plugin: a project is a directory with an ini
file (which fixes its rootdir) and a ``claims/`` directory; the plugin is loaded through its
``pytest11`` entry point, as in a user's repository.
"""

import os
from pathlib import Path

import pytest

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
MOVERS = """
[[claims]]
id = "movers"
kind = "word-movers"
heads = ["L1H0", "L1H1"]
roles = { attends_to = "descriptor" }
thresholds = { share = 0.5, top_k = 2, spearman = 0.3 }
"""
QUERIES = """
[[claims]]
id = "queries"
kind = "query-influencers"
heads = ["L0H1"]
receivers = ["L1H0"]
thresholds = { top_k = 1, effect = 0.01 }
"""
