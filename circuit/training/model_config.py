"""Architecture and optimisation settings of the bundled model, and its HF config."""

from dataclasses import asdict, dataclass, field

from transformers import GPTNeoXConfig

from circuit.training.supervision import Supervision


@dataclass(frozen=True)
class ModelShape:
    """GPT-NeoX shape with Pythia's choices (partial rotary 0.25, parallel residual, untied)."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8
    d_mlp: int = 96
    max_positions: int = 160
    rotary_pct: float = 1.0
    """Share of each head's dims that rotate: all of them (Pythia rotates 0.25 of 64 dims; a
    quarter of this model's 16 leaves 2 frequencies, too few for heads that find a token by
    its offset)."""

    def __post_init__(self) -> None:
        if self.d_mlp == self.d_model:
            raise ValueError(
                "d_mlp must differ from d_model: with square MLP matrices TransformerBridge's "
                "compatibility mode (fold_ln, center_writing_weights) guesses their orientation "
                "wrongly and computes wrong logits"
            )

    def hf_config(self, vocab_size: int) -> GPTNeoXConfig:
        """The ``GPTNeoXConfig`` for this shape; id 0 is BOS and EOS, as in Pythia."""
        return GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=self.d_model,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            intermediate_size=self.d_mlp,
            hidden_act="gelu",
            max_position_embeddings=self.max_positions,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": self.rotary_pct,
            },
            use_parallel_residual=True,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            attention_dropout=0.0,
            hidden_dropout=0.0,
            initializer_range=0.02,
            layer_norm_eps=1e-5,
        )


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with the tokenizer and corpus code)."""

    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    qk_decay: float = 4.0
    """Decoupled decay (as AdamW's, scaled by the step's learning rate) of the query and key
    projections alone, weights and biases, in :attr:`qk_decay_layers`: it bounds how sharply
    those layers' heads can attend without shrinking what they read or write."""
    qk_decay_layers: tuple[int, ...] = (3,)
    """Layers whose query and key projections :attr:`qk_decay` shrinks."""
    grad_clip: float = 1.0
    random_opposite_rate: float = 0.9
    extra_descriptors: bool = True
    vocab_size: int = 1024
    revision_steps: tuple[int, ...] = (10, 40, 150, 300, 800, 1100, 1500)
    eval_every: int = 100
    eval_prompts: int = 128
    threads: int = 1
    answer_weight: float = 1.0
    """Loss weight of each conclusion's answer token (every other token: 1)."""
    corpus: str = "v6"
    """Training corpus (``circuit.training.corpus.CORPORA``): ``v3`` single-premise (the
    previous organism's); ``v4``-``v7`` mostly multi-premise (need ``max_positions`` >= 96;
    ``v6``, the shipped model's, up to 137 tokens)."""
    supervision: Supervision | None = field(default_factory=Supervision)
    """Attention supervision of three heads (:mod:`circuit.training.supervision`), or none."""
    mover_supervision_steps: int | None = 1500
    """The supervision's mover term applies in the first this-many steps only (then the
    mover's attention is left to the next-token loss and any :attr:`qk_decay`); ``None``:
    in every step."""
    freeze_embeddings: bool = True
    """Keep the token embeddings at their random initialisation: a training word's embedding
    is then no different from a held-out word's, so what the model learns about words it
    must learn for any token (the multi-premise look-up, on held-out categories)."""
    fresh_categories: bool = True
    """In training, replace each category token's embedding with a fresh random vector per
    sequence (:func:`circuit.training.supervision.fresh_category_embeddings`); needs
    ``freeze_embeddings``, whose initial vectors have the same distribution."""
    shape: ModelShape = field(default_factory=ModelShape)

    def __post_init__(self) -> None:
        if self.supervision is not None:
            heads = {
                "key": self.supervision.key,
                "query": self.supervision.query,
                "mover": self.supervision.mover,
            }
            for role, supervised in heads.items():
                if supervised is None:
                    continue
                layer, head = supervised
                if not (0 <= layer < self.shape.n_layers and 0 <= head < self.shape.n_heads):
                    raise ValueError(
                        f"supervised {role} head L{layer}H{head} is not in a model of "
                        f"{self.shape.n_layers} layers x {self.shape.n_heads} heads"
                    )
        if self.qk_decay and not all(
            0 <= layer < self.shape.n_layers for layer in self.qk_decay_layers
        ):
            raise ValueError(
                f"qk_decay_layers {self.qk_decay_layers} are not all in a model of "
                f"{self.shape.n_layers} layers"
            )
        if self.mover_supervision_steps is not None and (
            self.supervision is None or self.supervision.mover is None
        ):
            raise ValueError("mover_supervision_steps needs a supervision with a mover head")
        if self.mover_supervision_steps is not None and self.mover_supervision_steps < 0:
            raise ValueError(
                f"mover_supervision_steps must be at least 0, got {self.mover_supervision_steps}"
            )
        if self.qk_decay and not self.qk_decay_layers:
            raise ValueError("qk_decay needs qk_decay_layers (the layers it shrinks)")
        if self.fresh_categories and not self.freeze_embeddings:
            raise ValueError(
                "fresh_categories needs freeze_embeddings: trained category embeddings would "
                "differ from the random draws the model saw in training"
            )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (nested shape included)."""
        return asdict(self)
