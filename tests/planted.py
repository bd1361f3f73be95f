"""Ground-truth models: a GPT-NeoX with a hand-planted circuit, and small random models.

The planted model (3 layers x 4 heads, d_model 64, d_head 16, rotary on 4 of 16 head dims,
parallel attention + MLP, like Pythia) is written as Hugging Face weights, saved with a tokenizer
and booted through ``TransformerBridge.boot_transformers`` + ``enable_compatibility_mode``, the
same path as every other model. Its circuit:

* ``L0H0`` previous-token head: query and key read a direction every token embedding shares and
  place it in the first rotary pair with a phase of one radian, so the score is
  ``cos(distance - 1)`` (rotary frequency 1): each position attends to the one before it. Its
  OV copies the previous token's identity into a "previous token" subspace.
* ``L2H0`` mover head: its query (non-rotary dims) reads the ``END`` token; its KEY reads
  "previous token was ``M``" from ``L0H0``'s output, so the final position attends to the token
  right after the marker ``M``; its OV copies that token into an output subspace that the
  unembedding reads as that token's logit.
* every other head and every MLP has small random weights (distractors).

Prompts ``[BOS, M, A, N, B, END]`` (clean, answer ``A``) and ``[BOS, N, A, M, B, END]``
(corrupted, answer ``B``) swap which token is marked. ``L0H0``'s output at ``A`` and ``B`` is
exactly what differs between the runs, and it reaches the answer only through the mover's key.
"""

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens.model_bridge import TransformerBridge
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

VOCAB: tuple[str, ...] = ("<bos>", "M", "N", "END", "a", "b", "c", "d", "e", "f", "g", "h")
BOS, MARK, FILLER, END = 0, 1, 2, 3
CONTENT: tuple[int, ...] = tuple(range(4, len(VOCAB)))
PREV_TOKEN_HEAD = (0, 0)
MOVER_HEAD = (2, 0)
D_MODEL, N_LAYERS, N_HEADS = 64, 3, 4
D_HEAD = D_MODEL // N_HEADS


def neox_config(**overrides: object) -> GPTNeoXConfig:
    """The planted model's architecture (also used for its random control)."""
    settings: dict[str, object] = {
        "vocab_size": len(VOCAB),
        "hidden_size": D_MODEL,
        "num_hidden_layers": N_LAYERS,
        "num_attention_heads": N_HEADS,
        "intermediate_size": 4 * D_MODEL,
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "max_position_embeddings": 64,
        "hidden_act": "gelu",
        "bos_token_id": BOS,
        "eos_token_id": BOS,
    }
    settings.update(overrides)
    return GPTNeoXConfig(**settings)


def save_and_boot(model: GPTNeoXForCausalLM, directory: Path) -> TransformerBridge:
    """Save ``model`` with a word-level tokenizer to ``directory`` and boot it as a bridge."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab_size = model.config.vocab_size
    words = {word: index for index, word in enumerate(VOCAB)}
    words.update({f"t{index}": index for index in range(len(VOCAB), vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(words, unk_token=VOCAB[BOS]))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token=VOCAB[BOS], bos_token=VOCAB[BOS], eos_token=VOCAB[BOS]
    ).save_pretrained(directory)
    model.save_pretrained(directory)
    bridge = TransformerBridge.boot_transformers(str(directory), device="cpu")
    bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    return bridge


def random_neox(directory: Path, seed: int = 0, **overrides: object) -> TransformerBridge:
    """A GPT-NeoX of the planted shape (or ``overrides``) with seeded HF-initialised weights.

    LayerNorm weights are randomised too, so that folding them is exercised.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(neox_config(**overrides))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "layernorm" in name or "layer_norm" in name:
                    offset = 1.0 if name.endswith("weight") else 0.0
                    parameter.copy_(offset + 0.2 * torch.randn_like(parameter))
    return save_and_boot(model.eval(), directory)


def _directions(count: int, seed: int) -> torch.Tensor:
    """``count`` orthonormal zero-mean directions in d_model (LayerNorm's centring keeps them)."""
    generator = torch.Generator().manual_seed(seed)
    centring = torch.eye(D_MODEL) - torch.full((D_MODEL, D_MODEL), 1.0 / D_MODEL)
    basis, _ = torch.linalg.qr(centring @ torch.randn(D_MODEL, count, generator=generator))
    return basis.T


def _set_head(
    model: GPTNeoXForCausalLM,
    layer: int,
    head: int,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    w_o: torch.Tensor,
) -> None:
    """Write one head's ``W_Q/W_K/W_V [d_model, d_head]`` and ``W_O [d_head, d_model]``.

    HF's fused ``query_key_value`` rows hold, per head, ``[q | k | v]`` blocks of ``d_head``.
    """
    attention = model.gpt_neox.layers[layer].attention
    rows = slice(3 * D_HEAD * head, 3 * D_HEAD * (head + 1))
    attention.query_key_value.weight[rows] = torch.cat([w_q.T, w_k.T, w_v.T])
    attention.query_key_value.bias[rows] = 0.0
    attention.dense.weight[:, D_HEAD * head : D_HEAD * (head + 1)] = w_o.T


@dataclass(frozen=True)
class PlantedTask:
    """Clean/corrupted prompts and answers for the planted circuit."""

    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    answers: torch.Tensor


def planted_task(n_prompts: int = 16) -> PlantedTask:
    """``[BOS, M, A, N, B, END]`` vs ``[BOS, N, A, M, B, END]`` over ordered content pairs."""
    pairs = list(itertools.permutations(CONTENT, 2))[:n_prompts]
    clean = torch.tensor([[BOS, MARK, a, FILLER, b, END] for a, b in pairs])
    corrupted = torch.tensor([[BOS, FILLER, a, MARK, b, END] for a, b in pairs])
    return PlantedTask(clean, corrupted, torch.tensor(pairs))


def planted_neox(directory: Path, seed: int = 0, noise: float = 0.02) -> TransformerBridge:
    """The planted-circuit model (see the module docstring), booted as a bridge."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(neox_config()).eval()
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "layernorm" in name or "layer_norm" in name:
                    parameter.copy_(torch.ones_like(parameter) if "weight" in name else 0.0)
                elif parameter.ndim == 2:
                    parameter.copy_(noise * torch.randn_like(parameter))
                else:
                    parameter.zero_()
            _plant(model, seed)
    return save_and_boot(model, directory)


def _plant(model: GPTNeoXForCausalLM, seed: int) -> None:
    n_tokens = len(VOCAB)
    directions = _directions(1 + 3 * n_tokens, seed)
    shared = directions[0]
    token_dir = directions[1 : 1 + n_tokens]
    prev_dir = directions[1 + n_tokens : 1 + 2 * n_tokens]
    out_dir = directions[1 + 2 * n_tokens :]
    alpha, beta = 1.0, 1.0
    model.gpt_neox.embed_in.weight[:] = alpha * shared + beta * token_dir
    # After the first LayerNorm every coordinate of an embedding is scaled by this factor.
    ln_scale = D_MODEL**0.5 / (alpha**2 + beta**2) ** 0.5
    zero = torch.zeros(D_MODEL, D_HEAD)

    # L0H0: q = a along rotary dim 0; k = a * (cos 1, sin 1) on the first rotary pair (dims 0, 2).
    amplitude = 14.0
    w_q, w_k = zero.clone(), zero.clone()
    w_q[:, 0] = amplitude / (ln_scale * alpha) * shared
    w_k[:, 0] = amplitude * torch.cos(torch.tensor(1.0)) / (ln_scale * alpha) * shared
    w_k[:, 2] = amplitude * torch.sin(torch.tensor(1.0)) / (ln_scale * alpha) * shared
    w_v = zero.clone()
    w_v[:, :n_tokens] = token_dir.T / (ln_scale * beta)
    w_o = torch.zeros(D_HEAD, D_MODEL)
    w_o[:n_tokens] = prev_dir
    _set_head(model, *PREV_TOKEN_HEAD, w_q, w_k, w_v, w_o)

    # L2H0: q reads END, k reads "previous token was M" (non-rotary dim 8); v copies the token.
    gain = 3.0
    w_q, w_k, w_v = zero.clone(), zero.clone(), zero.clone()
    w_q[:, 8] = gain * token_dir[END]
    w_k[:, 8] = gain * prev_dir[MARK]
    w_v[:, :n_tokens] = token_dir.T
    w_o = torch.zeros(D_HEAD, D_MODEL)
    w_o[:n_tokens] = 4.0 * out_dir
    _set_head(model, *MOVER_HEAD, w_q, w_k, w_v, w_o)

    model.get_output_embeddings().weight[:] = out_dir


def random_pythia_70m(directory: Path) -> TransformerBridge:
    """``load_model("random:pythia-70m")``, or the same weights with a stand-in tokenizer.

    ``load_model`` borrows the bundled model's tokenizer; where the bundled model is not built
    yet, the same seeded HF model is saved with a word-level tokenizer and booted from disk.
    """
    from circuit.models import ModelUnavailableError, load_model, random_hf_model

    try:
        return load_model("random:pythia-70m", device="cpu")
    except ModelUnavailableError:
        return save_and_boot(random_hf_model("pythia-70m"), directory)
