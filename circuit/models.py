"""Load models as TransformerBridges in the study's compatibility mode.

``load_model(spec)`` accepts:

- ``"bundled"``: the syllogism GPT-NeoX trained here and shipped under
  ``circuit/data/syllogism-neox`` (``revision="stepN"`` picks a training checkpoint);
- ``"random:pythia-70m"``, ``"random:pythia-160m"``, ``"random:pythia-410m"``: Pythia's
  published architecture with random weights from a fixed seed and the bundled tokenizer,
  built without any download; ``"random:bundled"``: the bundled architecture, random weights;
  ``"random:<shape>:<seed>"`` draws the weights from another seed (default 0);
- a local Hugging Face directory (``config.json``, weights, tokenizer files; ``revision``
  only when it has the bundled model's layout, ``revisions.json`` and ``revisions/<name>/``);
- a hub name such as ``"EleutherAI/pythia-410m"`` (with ``revision="step143000"``), loaded
  from the local Hugging Face cache only, unless ``CIRCUIT_ALLOW_DOWNLOAD=1`` is set (then a
  hub that cannot be reached fails at once, in one line).

Every model is booted with ``TransformerBridge.boot_transformers`` and then
``enable_compatibility_mode`` (fold_ln, center_writing_weights, center_unembed), as the
study processed Pythia-410m.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from circuit.data import BUNDLED_DIR

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

RANDOM_PREFIX = "random:"
RANDOM_SEED = 0
DOWNLOAD_OPT_IN = "CIRCUIT_ALLOW_DOWNLOAD"
HUB_TIMEOUT_S = 5.0
"""How long a download waits to reach the hub before failing (instead of retrying)."""

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
    random_seed: int = 0


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
    """Revision name -> directory for the bundled model (the final weights included), or for
    any local directory with the same layout (``revisions.json`` naming the ``final``
    revision, checkpoints under ``revisions/<name>/``); empty without that layout."""
    revisions: dict[str, Path] = {}
    manifest = directory / "revisions.json"
    if manifest.is_file():
        try:
            final = json.loads(manifest.read_text()).get("final")
        except (OSError, json.JSONDecodeError, AttributeError) as error:
            raise ModelSpecError(f"{manifest} is not readable JSON: {error}") from None
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
            "`python -m circuit.training --out circuit/data/syllogism-neox`"
        )
    if revision is None:
        return BUNDLED_DIR
    revisions = bundled_revisions()
    if revision not in revisions:
        raise ModelSpecError(
            f"bundled model has no revision {revision!r}; available: {sorted(revisions)}"
        )
    return revisions[revision]


def downloads_allowed() -> bool:
    """Whether hub models may be downloaded (``CIRCUIT_ALLOW_DOWNLOAD=1``)."""
    return os.environ.get(DOWNLOAD_OPT_IN) == "1"


def _check_hub_reachable(name: str, timeout: float = HUB_TIMEOUT_S) -> None:
    """Fail fast, in one line, when a download was asked for but the hub cannot be reached
    (instead of the Hugging Face client's retries)."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailableError(
            f"{name}: {DOWNLOAD_OPT_IN}=1 asks for a download but HF_HUB_OFFLINE=1 is set; "
            "unset HF_HUB_OFFLINE"
        )
    endpoint = urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise ModelUnavailableError(
            f"{name} is not in the local Hugging Face cache and the hub ({constants.ENDPOINT}) "
            f"cannot be reached to download it ({error.strerror or error}); "
            "pass a local directory instead"
        ) from None


def _resolve_hub(name: str, revision: str | None) -> Path | None:
    """The local snapshot of a hub model, or None when downloading is allowed instead."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        where = f"{name} (revision {revision or 'main'})"
        if downloads_allowed():
            _check_hub_reachable(where)
            return None
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
        shape, _, seed_text = spec.removeprefix(RANDOM_PREFIX).partition(":")
        if seed_text and not seed_text.isdigit():
            raise ModelSpecError(
                f"random model seed {seed_text!r} in {spec!r} is not a non-negative integer "
                "(write random:<shape> or random:<shape>:<seed>)"
            )
        known = sorted([*PYTHIA_SHAPES, "bundled"])
        if shape not in known:
            raise ModelSpecError(f"unknown random shape {shape!r}: use one of {known}")
        if revision is not None:
            raise ModelSpecError(f"{spec} has no revisions (got {revision!r})")
        seed = int(seed_text) if seed_text else RANDOM_SEED
        return ModelSource(spec, None, None, random_shape=shape, random_seed=seed)
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        return ModelSource(spec, revision, _resolve_directory(spec, path, revision))
    if spec.count("/") != 1:
        raise ModelSpecError(
            f"{spec!r} is neither 'bundled', a 'random:' shape, a local directory, nor a "
            "hub name like 'EleutherAI/pythia-410m'"
        )
    return ModelSource(spec, revision, _resolve_hub(spec, revision))


def _resolve_directory(spec: str, path: Path, revision: str | None) -> Path:
    """A local model directory (or, with ``revision``, its checkpoint's directory)."""
    if not path.exists():
        raise ModelSpecError(f"model directory {spec} does not exist")
    if not path.is_dir():
        raise ModelSpecError(f"{spec} is not a directory")
    if not (path / "config.json").is_file():
        raise ModelSpecError(f"{spec} is not a Hugging Face model directory: it has no config.json")
    if revision is not None:
        revisions = bundled_revisions(path)
        if not revisions:
            raise ModelSpecError(
                f"revision {revision!r} asked for the local directory {spec}, which has no "
                "revisions (no revisions.json or revisions/<name>/); pass the checkpoint's own "
                "directory instead"
            )
        if revision not in revisions:
            raise ModelSpecError(
                f"{spec} has no revision {revision!r}; available: {sorted(revisions)}"
            )
        path = revisions[revision]
    _check_model_config(path)
    return path


def default_revision(spec: str, revision: str | None = None) -> str | None:
    """The revision ``load_model(spec, revision)`` actually loads, by name: ``revision`` when
    given; else the final revision of the bundled model (or of a local directory with its
    layout, see :func:`bundled_revisions`), ``"main"`` for a hub name, None for random
    weights and plain local directories (which have no revisions). Never loads anything."""
    if revision is not None or not isinstance(spec, str):
        return revision
    if spec.startswith(RANDOM_PREFIX):
        return None
    directory = BUNDLED_DIR if spec == "bundled" else Path(spec).expanduser()
    if spec == "bundled" or directory.is_dir():
        manifest = directory / "revisions.json"
        try:
            final = json.loads(manifest.read_text()).get("final") if manifest.is_file() else None
        except (OSError, json.JSONDecodeError, AttributeError):
            final = None
        return str(final) if final else None
    return "main" if spec.count("/") == 1 else None


def model_shape(spec: str, revision: str | None = None) -> tuple[int, int] | None:
    """``(n_layers, n_heads)`` of the model ``load_model(spec, revision)`` would load, read
    from its ``config.json`` (or a random shape's table) without loading it; None when the
    config does not say (a model of another family). Raises as :func:`resolve` does."""
    source = resolve(spec, revision)
    if source.random_shape is not None and source.random_shape != "bundled":
        shape = PYTHIA_SHAPES[source.random_shape]
        return shape["num_hidden_layers"], shape["num_attention_heads"]
    directory = _resolve_bundled(None) if source.random_shape == "bundled" else source.directory
    if directory is None:
        return None
    try:
        config = json.loads((directory / "config.json").read_text())
        return int(config["num_hidden_layers"]), int(config["num_attention_heads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("vocab.json", "merges.txt"),
    ("tokenizer.model",),
    ("spiece.model",),
    ("vocab.txt",),
)
"""File sets any one of which gives a model directory its tokenizer."""


def _check_model_config(directory: Path) -> None:
    """A model directory holds a config naming its type, weights and tokenizer files."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelSpecError(f"{directory}/config.json is not readable JSON: {error}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelSpecError(f"{directory}/config.json names no model_type: not a model")
    weights = [*directory.glob("*.safetensors"), *directory.glob("*.bin")]
    if not weights:
        raise ModelSpecError(f"{directory} holds no weights (*.safetensors or *.bin)")
    if not any(all((directory / name).is_file() for name in files) for files in TOKENIZER_FILES):
        wanted = " or ".join(" + ".join(files) for files in TOKENIZER_FILES[:3])
        raise ModelSpecError(
            f"{directory} has no tokenizer files (missing {wanted}): save the tokenizer next "
            "to the weights (tokenizer.save_pretrained)"
        )


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
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    torch_dtype = parse_dtype(dtype)
    torch_device = parse_device(device)
    source = resolve(spec, revision)
    if source.random_shape is not None:
        hf_model = random_hf_model(source.random_shape, torch_dtype, source.random_seed)
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
