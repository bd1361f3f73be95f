"""Shared fixtures of the unit tests: models and tokenizers loaded once per session."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from circuit.models import BUNDLED_DIR, load_model
from circuit.pipeline.model_cache import ModelCache
from fixtures.tiny_model import boot, pythia_70m, save_tiny_neox, write_tiny_model


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


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A saved 3-layer, 4-head GPT-NeoX with random weights and perturbed LayerNorms."""
    return save_tiny_neox(tmp_path_factory.mktemp("tiny-neox"))


@pytest.fixture(scope="session")
def tiny32(tiny_dir):
    return boot(tiny_dir, torch.float32)


@pytest.fixture(scope="session")
def tiny64(tiny_dir):
    return boot(tiny_dir, torch.float64)


@pytest.fixture(scope="session")
def tiny_sequential(tmp_path_factory):
    """The tiny model's shape with sequential (not parallel) attention and MLP."""
    return boot(save_tiny_neox(tmp_path_factory.mktemp("tiny-seq"), parallel=False))


@pytest.fixture(scope="session")
def pythia70():
    """Pythia-70m's shape with random weights (see ``fixtures.tiny_model.pythia_70m``)."""
    return pythia_70m()


@pytest.fixture(scope="module")
def models() -> ModelCache:
    """A model cache for judging claim cases (skips when the bundled model is absent)."""
    cache = ModelCache(device="cpu")
    reason = cache.unavailable_reason("bundled", None)
    if reason is not None:
        pytest.skip(reason)
    return cache


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-NeoX directory (config, weights, the bundled tokenizer)."""
    return write_tiny_model(tmp_path_factory.mktemp("bad-inputs") / "tiny")
