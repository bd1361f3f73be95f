"""The weights the engine runs on, extracted once from a TransformerBridge.

:func:`weights_of` reads the bridge's processed weights (compatibility mode: LayerNorm folded
into the following matrices) of the GPT-NeoX family into one :class:`ForwardWeights` per model
and dtype, with ``q``/``k``/``v`` also fused into one matrix per layer and the rotary ``cos`` /
``sin`` tables computed as Hugging Face's ``GPTNeoXRotaryEmbedding`` does.
"""

from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Float


class ForwardError(ValueError):
    """The functional forward cannot run with the given inputs."""


@dataclass(frozen=True, eq=False)
class ForwardWeights:
    """Every weight the forward needs, extracted once from a bridge (see :func:`weights_of`).

    Shapes: ``W_Q/W_K/W_V [L, H, D, dh]``, ``b_Q/b_K/b_V [L, H, dh]``, ``W_O [L, H, dh, D]``,
    ``b_O [L, D]``, ``W_QKV [L, D, 3 * H * dh]`` and ``b_QKV [L, 3 * H * dh]`` (``W_Q``, ``W_K``,
    ``W_V`` side by side, head-major, for one fused projection), ``W_in [L, D, M]``,
    ``b_in [L, M]``, ``W_out [L, M, D]``, ``b_out [L, D]``,
    ``ln{1,2}_w/b [L, D]``, ``ln_final_w/b [D]``, ``W_E [V, D]``, ``W_U [D, V]``, ``b_U [V]``,
    ``cos/sin [n_ctx, rotary_dim]`` (GPT-NeoX ``rotate_half`` layout).
    """

    W_E: Float[torch.Tensor, "vocab d_model"]
    W_Q: Float[torch.Tensor, "layer head d_model d_head"]
    W_K: Float[torch.Tensor, "layer head d_model d_head"]
    W_V: Float[torch.Tensor, "layer head d_model d_head"]
    b_Q: Float[torch.Tensor, "layer head d_head"]
    b_K: Float[torch.Tensor, "layer head d_head"]
    b_V: Float[torch.Tensor, "layer head d_head"]
    W_O: Float[torch.Tensor, "layer head d_head d_model"]
    b_O: Float[torch.Tensor, "layer d_model"]
    W_QKV: Float[torch.Tensor, "layer d_model qkv_head_d_head"]
    b_QKV: Float[torch.Tensor, "layer qkv_head_d_head"]
    W_in: Float[torch.Tensor, "layer d_model d_mlp"]
    b_in: Float[torch.Tensor, "layer d_mlp"]
    W_out: Float[torch.Tensor, "layer d_mlp d_model"]
    b_out: Float[torch.Tensor, "layer d_model"]
    ln1_w: Float[torch.Tensor, "layer d_model"]
    ln1_b: Float[torch.Tensor, "layer d_model"]
    ln2_w: Float[torch.Tensor, "layer d_model"]
    ln2_b: Float[torch.Tensor, "layer d_model"]
    ln_final_w: Float[torch.Tensor, " d_model"]
    ln_final_b: Float[torch.Tensor, " d_model"]
    W_U: Float[torch.Tensor, "d_model vocab"]
    b_U: Float[torch.Tensor, " vocab"]
    cos: Float[torch.Tensor, "n_ctx rotary_dim"]
    sin: Float[torch.Tensor, "n_ctx rotary_dim"]
    eps: float
    act_name: str
    parallel: bool

    @property
    def n_layers(self) -> int:
        return int(self.W_Q.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.W_Q.shape[1])

    @property
    def d_model(self) -> int:
        return int(self.W_Q.shape[2])

    @property
    def d_head(self) -> int:
        return int(self.W_Q.shape[3])

    @property
    def d_mlp(self) -> int:
        return int(self.W_in.shape[2])

    @property
    def d_vocab(self) -> int:
        return int(self.W_U.shape[1])

    @property
    def n_ctx(self) -> int:
        return int(self.cos.shape[0])

    @property
    def rotary_dim(self) -> int:
        return int(self.cos.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.W_Q.dtype

    @property
    def device(self) -> torch.device:
        return self.W_Q.device

    @property
    def bytes_per_element(self) -> int:
        return self.W_Q.element_size()


_WEIGHTS_CACHE: "WeakKeyDictionary[torch.nn.Module, dict]" = WeakKeyDictionary()


def _norm_params(module: torch.nn.Module, d_model: int, like: torch.Tensor):
    original = getattr(module, "original_component", None)
    weight = getattr(original, "weight", None)
    bias = getattr(original, "bias", None)
    w = torch.ones(d_model) if weight is None else weight.detach()
    b = torch.zeros(d_model) if bias is None else bias.detach()
    return w.to(like), b.to(like)


def _rotary_tables(model: torch.nn.Module, d_head: int, n_ctx: int, dtype: torch.dtype):
    """cos/sin tables computed as HF's GPTNeoXRotaryEmbedding does (float32, then cast)."""
    rotary = getattr(getattr(model, "rotary_emb", None), "original_component", None)
    if rotary is not None and hasattr(rotary, "inv_freq"):
        inv_freq = rotary.inv_freq.detach().float().cpu()
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
    else:
        raise ForwardError("the model has no rotary embedding module with inv_freq")
    positions = torch.arange(n_ctx, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    if emb.shape[-1] > d_head:
        raise ForwardError(f"rotary dim {emb.shape[-1]} exceeds d_head {d_head}")
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


def weights_of(model: torch.nn.Module, dtype: torch.dtype | None = None) -> ForwardWeights:
    """Extract (once per model and dtype) the processed weights of a TransformerBridge.

    The bridge must be in compatibility mode with folded LayerNorm (``circuit.models.load_model``
    does this). ``dtype`` defaults to the bridge's own dtype.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "cfg"):
        raise ForwardError(
            f"model must be a TransformerBridge (circuit.models.load_model), got "
            f"{type(model).__name__}"
        )
    cfg = model.cfg
    if getattr(cfg, "positional_embedding_type", "rotary") != "rotary":
        raise ForwardError(
            f"only rotary models are supported, got {cfg.positional_embedding_type!r}"
        )
    if getattr(cfg, "normalization_type", "LN") not in ("LN", "LNPre"):
        raise ForwardError(f"only LayerNorm models are supported, got {cfg.normalization_type!r}")
    W_Q = model.W_Q.detach()
    dtype = dtype or W_Q.dtype
    per_model = _WEIGHTS_CACHE.setdefault(model, {})
    key = (dtype, str(W_Q.device))
    if key in per_model:
        return per_model[key]

    def grab(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(dtype).contiguous()

    n_layers, d_model = cfg.n_layers, cfg.d_model
    like = torch.empty(0, dtype=dtype, device=W_Q.device)
    ln1 = [_norm_params(model.blocks[i].ln1, d_model, like) for i in range(n_layers)]
    ln2 = [_norm_params(model.blocks[i].ln2, d_model, like) for i in range(n_layers)]
    lnf_w, lnf_b = _norm_params(model.ln_final, d_model, like)
    hf_cfg = getattr(getattr(model, "original_model", None), "config", None)
    act_name = getattr(hf_cfg, "hidden_act", None) or cfg.act_fn
    n_ctx = int(getattr(hf_cfg, "max_position_embeddings", None) or cfg.n_ctx)
    cos, sin = _rotary_tables(model, cfg.d_head, n_ctx, dtype)
    projections = [grab(getattr(model, f"W_{s}")) for s in "QKV"]
    biases = [grab(getattr(model, f"b_{s}")) for s in "QKV"]
    fused = torch.stack(projections, dim=2).permute(0, 3, 2, 1, 4)  # [L, D, 3, H, dh]
    weights = ForwardWeights(
        W_E=grab(model.W_E),
        W_Q=projections[0],
        W_K=projections[1],
        W_V=projections[2],
        b_Q=biases[0],
        b_K=biases[1],
        b_V=biases[2],
        W_O=grab(model.W_O),
        b_O=grab(model.b_O),
        W_QKV=fused.reshape(n_layers, d_model, -1).contiguous(),
        b_QKV=torch.stack(biases, dim=1).reshape(n_layers, -1).contiguous(),
        W_in=grab(model.W_in),
        b_in=grab(model.b_in),
        W_out=grab(model.W_out),
        b_out=grab(model.b_out),
        ln1_w=torch.stack([w for w, _ in ln1]),
        ln1_b=torch.stack([b for _, b in ln1]),
        ln2_w=torch.stack([w for w, _ in ln2]),
        ln2_b=torch.stack([b for _, b in ln2]),
        ln_final_w=lnf_w,
        ln_final_b=lnf_b,
        W_U=grab(model.W_U),
        b_U=grab(model.b_U),
        cos=cos.to(W_Q.device),
        sin=sin.to(W_Q.device),
        eps=float(cfg.eps),
        act_name=str(act_name),
        parallel=bool(cfg.parallel_attn_mlp),
    )
    per_model[key] = weights
    return weights
