"""Shared fixtures of the unit tests: models and tokenizers loaded once per session."""

import pytest
import torch
from transformers import AutoTokenizer

from circuit.models import BUNDLED_DIR, load_model


@pytest.fixture(scope="session", autouse=True)
def _no_grad():
    """Analysis code never needs gradients; tests run without them."""
    with torch.no_grad():
        yield


@pytest.fixture(scope="session")
def bundled_tokenizer():
    """The bundled model's tokenizer (trained here, shipped in fixtures/)."""
    return AutoTokenizer.from_pretrained(BUNDLED_DIR)


@pytest.fixture(scope="session")
def bundled_model():
    """The bundled syllogism model, final revision, float32 on the CPU."""
    return load_model("bundled", device="cpu")


@pytest.fixture(scope="session")
def random_pythia_70m():
    """Pythia-70m's architecture with seeded random weights."""
    return load_model("random:pythia-70m", device="cpu")
