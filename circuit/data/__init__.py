"""Files shipped inside the package: the bundled model, a Hugging Face directory with its
training checkpoints (``revisions.json``, ``revisions/stepN/``) and its model card."""

from pathlib import Path

BUNDLED_NAME = "syllogism-neox"
BUNDLED_DIR = Path(__file__).resolve().parent / BUNDLED_NAME
"""The bundled model's directory (its final revision; checkpoints under ``revisions/``)."""
