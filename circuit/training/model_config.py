"""Architecture and optimisation settings of the bundled model, and its HF config."""

from dataclasses import asdict, dataclass, field

from transformers import GPTNeoXConfig


@dataclass(frozen=True)
class ModelShape:
    """GPT-NeoX shape with Pythia's choices (partial rotary 0.25, parallel residual, untied)."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8
    d_mlp: int = 96
    max_positions: int = 64
    rotary_pct: float = 0.25

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
    steps: int = 800
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    random_opposite_rate: float = 0.9
    extra_descriptors: bool = True
    vocab_size: int = 1024
    revision_steps: tuple[int, ...] = (2, 8, 32, 64, 100, 150, 400)
    eval_every: int = 25
    eval_prompts: int = 128
    threads: int = 1
    answer_weight: float = 1.0
    """Loss weight of each conclusion's answer token (every other token: 1)."""
    corpus: str = "v3"
    """Training corpus (``circuit.training.corpus.CORPORA``): ``v3`` single-premise, the
    shipped model's; ``v4`` multi-premise (needs ``max_positions`` >= 96)."""
    shape: ModelShape = field(default_factory=ModelShape)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (nested shape included)."""
        return asdict(self)
