"""The shipped layout of the bundled model and its ``revisions.json`` manifest.

::

    circuit/data/syllogism-neox/
        config.json, model.safetensors, tokenizer.json, tokenizer_config.json, ...  (final)
        revisions.json      {"final": "stepN", "revisions": [{"name", "step", "path"}...]}
        training_log.json   loss per step and the periodic study-template probe
        README.md           model card
        revisions/stepK/    complete HF directories (weights + tokenizer) of checkpoints
"""

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from circuit.data import BUNDLED_DIR, BUNDLED_NAME

MODEL_NAME = BUNDLED_NAME
DEFAULT_DIR = BUNDLED_DIR
MANIFEST = "revisions.json"


@dataclass(frozen=True)
class Revision:
    """A named checkpoint: ``step`` optimiser steps, stored at ``path`` (relative to the root)."""

    name: str
    step: int
    path: str


def revision_name(step: int) -> str:
    """``step{N}``, the revision name of a checkpoint after ``N`` steps."""
    return f"step{step}"


def save_hf_dir(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path
) -> None:
    """Write a complete, offline-loadable HF directory: config, safetensors, tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


def write_manifest(root: Path, revisions: list[Revision], final: str) -> None:
    """Write ``revisions.json``: every revision (final included) and which one is final."""
    payload = {
        "final": final,
        "revisions": [vars(revision) for revision in sorted(revisions, key=lambda r: r.step)],
    }
    (root / MANIFEST).write_text(json.dumps(payload, indent=2) + "\n")


def read_manifest(root: Path = DEFAULT_DIR) -> tuple[str, list[Revision]]:
    """(final revision name, all revisions sorted by step) from ``revisions.json``."""
    payload = json.loads((root / MANIFEST).read_text())
    revisions = [Revision(**item) for item in payload["revisions"]]
    return str(payload["final"]), revisions


def revision_dir(revision: str | None, root: Path = DEFAULT_DIR) -> Path:
    """Directory of a revision by name; ``None`` or the final's name give ``root``."""
    final, revisions = read_manifest(root)
    if revision is None or revision == final:
        return root
    for item in revisions:
        if item.name == revision:
            return root / item.path
    names = [item.name for item in revisions]
    raise ValueError(f"no revision {revision!r} in {root}; available: {names}")
