"""Train the bundled model's byte-level BPE tokenizer and save it in Hugging Face format.

The tokenizer is trained with the ``tokenizers`` library on a synthetic, morpheme-segmented
text, so that it splits words the way Pythia splits the study's words:

* categories and lowercase nouns with a leading space are one token (" birds", " dogs");
* capitalised nouns are two tokens, the capital letter and the rest (" D" "ogs");
* descriptors are three tokens (" ex" "os" "keletal"), given by
  :data:`circuit.training.words.DESCRIPTOR_MORPHEMES`.

Segmentation is taught by joining pieces with hyphens in the training text (byte-level
pre-tokenization splits at the hyphen, so no merge is ever learned across a piece boundary),
and descriptor pieces are weighted heavily so that their merges rank before any merge learned
from other words. Held-out words are part of this text (they must tokenize like the others);
they are never part of the model's corpus.
"""

from collections.abc import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from circuit.training.words import (
    ALL_CATEGORIES,
    ALL_NOUNS,
    DESCRIPTOR_MORPHEMES,
    TEMPLATE_WORDS,
)

SPECIAL_TOKEN = "<|endoftext|>"
"""The only special token, id 0: BOS, EOS, PAD and UNK, as in Pythia."""

DEFAULT_VOCAB_SIZE = 1024
MORPHEME_WEIGHT = 2000
WORD_WEIGHT = 4


def tokenizer_training_lines() -> Iterator[str]:
    """Yield the tokenizer's training text, one line at a time (deterministic order)."""
    for pieces in DESCRIPTOR_MORPHEMES.values():
        line = " " + "-".join(pieces)
        for _ in range(MORPHEME_WEIGHT):
            yield line
    words: list[str] = list(TEMPLATE_WORDS)
    words += [category for category in ALL_CATEGORIES]
    words += [noun.lower() for noun in ALL_NOUNS]
    capitalised = [f"{noun[0]}-{noun[1:]}" for noun in ALL_NOUNS]
    for _ in range(WORD_WEIGHT):
        yield " ".join(f" {word}" for word in words) + "."
        yield " ".join(f" {word}" for word in capitalised) + "."
        yield "All Therefore, So, Hence, Thus, not. but, and; a: is!"


def train_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train the byte-level BPE tokenizer; ``<|endoftext|>`` gets id 0."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_training_lines(), trainer=trainer)
    if tokenizer.token_to_id(SPECIAL_TOKEN) != 0:
        raise RuntimeError(f"{SPECIAL_TOKEN} must have id 0")
    return tokenizer


def to_hf_tokenizer(tokenizer: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """Wrap a trained tokenizer as a ``PreTrainedTokenizerFast`` (no BOS added on encode)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
    )


def token_count(tokenizer: PreTrainedTokenizerFast, word: str) -> int:
    """Number of tokens of ``" " + word`` (no special tokens)."""
    return len(tokenizer(" " + word, add_special_tokens=False)["input_ids"])


def word_class_token_counts(tokenizer: PreTrainedTokenizerFast) -> dict[str, dict[int, int]]:
    """Per word class, a histogram {token count: number of words} of ``" " + word``.

    Classes: categories, capitalised nouns, lowercase nouns (study, training-only and
    held-out words together) and descriptors.
    """
    classes = {
        "categories": list(ALL_CATEGORIES),
        "nouns (capitalised)": list(dict.fromkeys(ALL_NOUNS)),
        "nouns (lowercase)": [noun.lower() for noun in dict.fromkeys(ALL_NOUNS)],
        "descriptors": list(DESCRIPTOR_MORPHEMES),
    }
    histograms: dict[str, dict[int, int]] = {}
    for name, words in classes.items():
        histogram: dict[int, int] = {}
        for word in words:
            count = token_count(tokenizer, word)
            histogram[count] = histogram.get(count, 0) + 1
        histograms[name] = dict(sorted(histogram.items()))
    return histograms
