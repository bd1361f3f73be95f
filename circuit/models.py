"""Load models as TransformerBridges in the study's compatibility mode.

``load_model(spec)`` accepts:

- ``"bundled"``: the syllogism GPT-NeoX trained here and shipped under
  ``fixtures/models/syllogism-neox`` (``revision="stepN"`` picks a training checkpoint);
- ``"random:pythia-70m"``, ``"random:pythia-160m"``, ``"random:pythia-410m"``: Pythia's
  published architecture with random weights from a fixed seed and the bundled tokenizer,
  built without any download; ``"random:bundled"``: the bundled architecture, random weights;
- a local Hugging Face directory (``config.json``, weights, tokenizer files);
- a hub name such as ``"EleutherAI/pythia-410m"`` (with ``revision="step143000"``), loaded
  from the local Hugging Face cache only, unless ``CIRCUIT_ALLOW_DOWNLOAD=1`` is set.

Every model is booted with ``TransformerBridge.boot_transformers`` and then
``enable_compatibility_mode`` (fold_ln, center_writing_weights, center_unembed), as the
study processed Pythia-410m.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

BUNDLED_NAME = "syllogism-neox"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "models" / BUNDLED_NAME
RANDOM_PREFIX = "random:"
RANDOM_SEED = 0
DOWNLOAD_OPT_IN = "CIRCUIT_ALLOW_DOWNLOAD"

PYTHIA_SHAPES: dict[str, dict[str, int]] = {
    "pythia-70m": {"hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8},
    "pythia-160m": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "pythia-410m": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
}
"""Pythia's published sizes (EleutherAI/pythia-*/config.json); the rest is shared."""

PYTHIA_COMMON: dict[str, object] = {
    "vocab_size": 50304,
    "max_position_embeddings": 2048,
    "rotary_pct": 0.25,
    "rotary_emb_base": 10000,
    "use_parallel_residual": True,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "attention_bias": True,
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class ModelSpecError(ValueError):
    """The model spec, revision, device or dtype is not usable."""


class ModelUnavailableError(RuntimeError):
    """The model's weights are not on this machine (and downloading is not allowed)."""


@dataclass(frozen=True)
class ModelSource:
    """Where a spec resolved to: a local directory, or an in-memory random model."""

    spec: str
    revision: str | None
    directory: Path | None
    random_shape: str | None = None


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from a dtype or its name (``"float64"``, ``"torch.float32"``)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ModelSpecError(f"unsupported dtype {dtype}: use one of {sorted(DTYPES)}")
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ModelSpecError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPES)}")
    return DTYPES[name]


def parse_device(device: str | torch.device | None) -> torch.device:
    """The device to load onto: the given one if it exists here, else cpu (or cuda if present)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelSpecError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ModelSpecError(f"device {device!r} was asked for but CUDA is not available here")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ModelSpecError(f"unsupported device {device!r}: use cpu or cuda")
    return parsed


def bundled_revisions(directory: Path = BUNDLED_DIR) -> dict[str, Path]:
    """Revision name -> directory for the bundled model (the final weights included)."""
    revisions: dict[str, Path] = {}
    manifest = directory / "revisions.json"
    if manifest.is_file():
        final = json.loads(manifest.read_text()).get("final")
        if final:
            revisions[str(final)] = directory
    root = directory / "revisions"
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if (child / "config.json").is_file():
                revisions[child.name] = child
    return revisions


def _resolve_bundled(revision: str | None) -> Path:
    if not (BUNDLED_DIR / "config.json").is_file():
        raise ModelUnavailableError(
            f"the bundled model is missing at {BUNDLED_DIR}; retrain it with "
            "`python -m circuit.training --out fixtures/models/syllogism-neox`"
        )
    if revision is None:
        return BUNDLED_DIR
    revisions = bundled_revisions()
    if revision not in revisions:
        raise ModelSpecError(
            f"bundled model has no revision {revision!r}; available: {sorted(revisions)}"
        )
    return revisions[revision]


def _resolve_hub(name: str, revision: str | None) -> Path | None:
    """The local snapshot of a hub model, or None when downloading is allowed instead."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        if os.environ.get(DOWNLOAD_OPT_IN) == "1":
            return None
        where = f"{name} (revision {revision or 'main'})"
        raise ModelUnavailableError(
            f"{where} is not in the local Hugging Face cache and downloads are off. "
            f"Set {DOWNLOAD_OPT_IN}=1 on a machine with network access to fetch it, or pass "
            "a local directory holding its config.json, weights and tokenizer."
        ) from None


def resolve(spec: str, revision: str | None = None) -> ModelSource:
    """Turn a spec and revision into a local directory or a random-weights shape."""
    if not isinstance(spec, str) or not spec:
        raise ModelSpecError(f"model spec must be a non-empty string, got {spec!r}")
    if spec == "bundled":
        return ModelSource(spec, revision, _resolve_bundled(revision))
    if spec.startswith(RANDOM_PREFIX):
        shape = spec.removeprefix(RANDOM_PREFIX)
        known = sorted([*PYTHIA_SHAPES, "bundled"])
        if shape not in known:
            raise ModelSpecError(f"unknown random shape {shape!r}: use one of {known}")
        if revision is not None:
            raise ModelSpecError(f"{spec} has no revisions (got {revision!r})")
        return ModelSource(spec, None, None, random_shape=shape)
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ModelSpecError(f"{spec} is not a directory")
        if not (path / "config.json").is_file():
            raise ModelSpecError(
                f"{spec} is not a Hugging Face model directory: it has no config.json"
            )
        return ModelSource(spec, revision, path)
    if spec.count("/") != 1:
        raise ModelSpecError(
            f"{spec!r} is neither 'bundled', a 'random:' shape, a local directory, nor a "
            "hub name like 'EleutherAI/pythia-410m'"
        )
    return ModelSource(spec, revision, _resolve_hub(spec, revision))


def random_hf_model(shape: str, dtype: torch.dtype = torch.float32, seed: int = RANDOM_SEED):
    """An untrained ``GPTNeoXForCausalLM`` of a Pythia shape or the bundled shape."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    if shape == "bundled":
        config = GPTNeoXConfig.from_pretrained(_resolve_bundled(None))
    else:
        config = GPTNeoXConfig(
            **PYTHIA_COMMON,
            **PYTHIA_SHAPES[shape],
            intermediate_size=4 * PYTHIA_SHAPES[shape]["hidden_size"],
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config)
    return model.to(dtype).eval()


def _bundled_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_resolve_bundled(None))


def _check_model_config(directory: Path) -> None:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelSpecError(f"{directory}/config.json is not readable JSON: {error}") from None
    if "model_type" not in config:
        raise ModelSpecError(f"{directory}/config.json names no model_type: not a model")
    weights = [*directory.glob("*.safetensors"), *directory.glob("*.bin")]
    if not weights:
        raise ModelSpecError(f"{directory} holds no weights (*.safetensors or *.bin)")


def load_model(
    spec: str = "bundled",
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
) -> TransformerBridge:
    """A TransformerBridge in compatibility mode with the study's weight processing.

    Raises ``ModelSpecError`` for a bad spec, revision, device or dtype, and
    ``ModelUnavailableError`` when the weights are not on this machine.
    """
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch_dtype = parse_dtype(dtype)
    torch_device = parse_device(device)
    source = resolve(spec, revision)
    if source.random_shape is not None:
        hf_model = random_hf_model(source.random_shape, torch_dtype)
        bridge = TransformerBridge.boot_transformers(
            f"{RANDOM_PREFIX}{source.random_shape}",
            hf_model=hf_model.to(torch_device),
            tokenizer=_bundled_tokenizer(),
            device=torch_device,
            dtype=torch_dtype,
        )
    elif source.directory is not None:
        _check_model_config(source.directory)
        bridge = TransformerBridge.boot_transformers(
            str(source.directory), device=torch_device, dtype=torch_dtype
        )
    else:
        bridge = TransformerBridge.boot_transformers(
            spec, revision=revision, device=torch_device, dtype=torch_dtype
        )
    bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    return bridge


def describe(model: TransformerBridge) -> str:
    """One line naming the model's shape, for headers and errors."""
    cfg = model.cfg
    return (
        f"{cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, "
        f"vocab {cfg.d_vocab}, {cfg.dtype}, {cfg.device}"
    )
