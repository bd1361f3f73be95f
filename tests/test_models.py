import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from circuit.models import (
    ModelSpecError,
    ModelUnavailableError,
    bundled_revisions,
    load_model,
    parse_device,
    parse_dtype,
    random_hf_model,
    resolve,
)

PYTHIA_PARAMETERS = {"pythia-70m": 70_426_624, "pythia-410m": 405_334_016}
"""Parameter counts of EleutherAI's published checkpoints (embedding and unembedding included)."""


@pytest.mark.parametrize(("shape", "expected"), sorted(PYTHIA_PARAMETERS.items()))
def test_random_pythia_shapes_have_the_published_parameter_counts(shape, expected):
    model = random_hf_model(shape)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_random_weights_are_seeded():
    first = random_hf_model("pythia-70m").gpt_neox.layers[0].attention.query_key_value.weight
    second = random_hf_model("pythia-70m").gpt_neox.layers[0].attention.query_key_value.weight
    assert torch.equal(first, second)


def test_random_pythia_70m_boots_as_a_bridge_without_network(random_pythia_70m):
    cfg = random_pythia_70m.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model) == (6, 8, 512)
    tokens = torch.tensor([[0, 5, 6, 7]])
    assert random_pythia_70m(tokens).shape == (1, 4, 50304)


def test_hub_name_offline_fails_fast_with_a_clear_message():
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as raised:
        load_model("EleutherAI/pythia-410m", revision="step143000")
    assert time.perf_counter() - start < 5.0
    message = str(raised.value)
    assert "EleutherAI/pythia-410m" in message
    assert "step143000" in message
    assert "CIRCUIT_ALLOW_DOWNLOAD=1" in message


def test_bundled_loads_offline_in_compatibility_mode(bundled_model):
    assert bundled_model.compatibility_mode
    tokens = torch.tensor([[0, 5, 6, 7]])
    assert bundled_model(tokens).shape[:2] == (1, 4)


def test_bundled_has_at_least_four_revisions_that_all_load():
    revisions = bundled_revisions()
    assert len(revisions) >= 4
    for name in revisions:
        model = load_model("bundled", revision=name)
        assert model.cfg.n_layers >= 1


def test_bundled_revisions_differ_in_weights():
    names = sorted(bundled_revisions(), key=lambda name: int(name.removeprefix("step")))
    first = load_model("bundled", revision=names[0]).W_U
    last = load_model("bundled", revision=names[-1]).W_U
    assert not torch.allclose(first, last)


def test_local_directory_loads(tmp_path, bundled_model):
    model = random_hf_model("bundled")
    model.save_pretrained(tmp_path)
    bundled_model.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    tokens = torch.tensor([[0, 5, 6]])
    assert loaded(tokens).shape == bundled_model(tokens).shape


def test_float64_works():
    model = load_model("random:bundled", dtype="float64")
    assert model.cfg.dtype == torch.float64
    assert model(torch.tensor([[0, 5, 6]])).dtype == torch.float64


@pytest.mark.parametrize(
    ("spec", "revision", "message"),
    [
        ("random:gpt2", None, "unknown random shape 'gpt2'"),
        ("random:pythia-70m", "step1", "has no revisions"),
        ("bundled", "step999999999", "no revision 'step999999999'"),
        ("/definitely/not/here", None, "does not exist"),
        ("not a model name", None, "neither 'bundled'"),
        ("", None, "non-empty string"),
    ],
)
def test_bad_specs_raise_one_line_errors(spec, revision, message):
    with pytest.raises(ModelSpecError, match=message) as raised:
        load_model(spec, revision=revision)
    assert "\n" not in str(raised.value)


def test_directory_that_is_not_a_model_raises(tmp_path):
    with pytest.raises(ModelSpecError, match=r"no config\.json"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelSpecError, match="not readable JSON"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelSpecError, match="no model_type"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "gpt_neox"}')
    with pytest.raises(ModelSpecError, match="holds no weights"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("dtype", ["float8", "int64", torch.int32])
def test_unknown_dtype_raises(dtype):
    with pytest.raises(ModelSpecError, match="dtype"):
        parse_dtype(dtype)


@pytest.mark.parametrize("device", ["tpu", "gpu:0"])
def test_unknown_device_raises(device):
    with pytest.raises(ModelSpecError, match="unknown device"):
        parse_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present on this machine")
def test_cuda_asked_without_cuda_raises():
    with pytest.raises(ModelSpecError, match="CUDA is not available"):
        parse_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_is_used_when_asked_and_present():
    model = load_model("random:bundled", device="cuda")
    assert next(model.parameters()).device.type == "cuda"


ROOT = Path(__file__).resolve().parent.parent
CLAIMS_DIR = ROOT / "claims"
NO_CUDA = not torch.cuda.is_available()
MISSING_HUB_MODEL = "circuit-claims-test/no-such-model"


# Downloads -----------------------------------------------------------------------------------


def test_the_download_switch_turns_offline_mode_off() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    code = "import os, conftest; print(os.environ.get('HF_HUB_OFFLINE'))"
    for allow, expected in (("1", "None"), ("0", "1")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**env, "CIRCUIT_ALLOW_DOWNLOAD": allow},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == expected


@pytest.mark.parametrize("offline", [False, True], ids=["hub unreachable", "HF_HUB_OFFLINE"])
def test_a_download_fails_fast_in_one_line(monkeypatch, offline: bool) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("CIRCUIT_ALLOW_DOWNLOAD", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as raised:
        resolve(MISSING_HUB_MODEL)
    assert time.perf_counter() - start < 5.0
    message = str(raised.value)
    assert "\n" not in message
    assert MISSING_HUB_MODEL in message
    assert ("HF_HUB_OFFLINE=1" if offline else "cannot be reached") in message
