"""Item IDs as text, and the tokenizer that reads prompts.

Items are written in prompts by a numeric ID. P5 numbered items in order of appearance, which
leaks the answer (the next item is often "the largest ID so far + 1"), so the default here is a
random permutation of 1..N (``sequential`` keeps P5's indexing as an option). An ID is tokenised
either digit by digit (``digits``: every ID is a short sequence of shared digit tokens, the
paper's design) or as one new token per item (``single``: the next-item step is one softmax).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from kp4sr.errors import ConfigError

PAD, EOS, UNK, MASK = "<pad>", "</s>", "<unk>", "<mask>"
INDEX_CHOICES = ("random", "sequential")
TOKEN_CHOICES = ("digits", "single")


def assign_item_numbers(
    sequences: list[np.ndarray], n_items: int, scheme: str, seed: int
) -> np.ndarray:
    """Number items 1..N: a seeded random permutation, or by first appearance (P5's leaky way).

    ``sequences`` are in the dataset's user order; items never seen get the remaining numbers.
    """
    if scheme == "random":
        return np.random.default_rng(seed).permutation(n_items).astype(np.int64) + 1
    if scheme != "sequential":
        raise ConfigError(f"unknown --item-index {scheme!r}: expected {' or '.join(INDEX_CHOICES)}")
    order = np.concatenate(
        [np.asarray(s, dtype=np.int64) for s in sequences] + [np.arange(n_items)]
    )
    _, first = np.unique(order, return_index=True)  # first position of each item
    ranks = np.empty(n_items, dtype=np.int64)
    ranks[np.argsort(first, kind="stable")] = np.arange(1, n_items + 1)
    return ranks


def item_texts(numbers: np.ndarray, scheme: str) -> list[str]:
    """The text that stands for each item in prompts and targets."""
    if scheme == "digits":
        return [str(int(n)) for n in numbers]
    if scheme == "single":
        return [f"<item_{int(n)}>" for n in numbers]
    raise ConfigError(f"unknown --item-tokens {scheme!r}: expected {' or '.join(TOKEN_CHOICES)}")


def word_counts(
    corpus: Iterable[str],
    normalizer: normalizers.Normalizer,
    pre_tokenizer: pre_tokenizers.PreTokenizer,
    chunk: int = 4096,
) -> Counter[str]:
    """How often each pre-tokenized word occurs in the normalized corpus.

    Exactly what normalizing and pre-tokenizing every text would count, but the Rust calls run
    once per distinct space-separated piece instead of once per word: a space is a word
    boundary for the whitespace pre-tokenizer, and NFKC and lowercasing never act across it.
    A corpus of a million knowledge sentences has a few hundred thousand distinct pieces.
    """
    pieces: Counter[str] = Counter()
    texts = iter(corpus)
    while batch := list(islice(texts, chunk)):
        pieces.update(" ".join(batch).split(" "))
    counts: Counter[str] = Counter()
    for piece, n in pieces.items():
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(piece)):
            counts[word] += n
    return counts


def train_tokenizer(
    corpus: Iterable[str], extra_tokens: list[str], vocab_size: int = 8000
) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer built from the dataset's own prompt text, deterministically.

    Digits are split one per token, so a numeric item ID always becomes the same short sequence
    of digit tokens whatever the text around it; ``extra_tokens`` (one per item in the ``single``
    scheme) are whole tokens that are never split.
    """
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    # Built here rather than by tokenizers' WordPiece trainer, whose result changes from run to
    # run (hash-map order and merge ties): every character (alone and as a word continuation)
    # so that any word can be spelled, then whole words by frequency, ties by spelling.
    counts = word_counts(corpus, normalizer, pre_tokenizer)
    specials = [PAD, EOS, UNK, MASK]
    chars = sorted({c for w in counts for c in w} | set("0123456789"))
    base = [*specials, *chars, *("##" + c for c in chars)]
    known = set(base)
    words = sorted((w for w in counts if w not in known), key=lambda w: (-counts[w], w))
    words = words[: max(0, vocab_size - len(base))]
    vocab = {t: i for i, t in enumerate([*base, *words])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    if extra_tokens:
        tok.add_special_tokens(extra_tokens)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, mask_token=MASK
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a saved tokenizer (a run folder's, or a local Hugging Face checkpoint's)."""
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load a tokenizer from {path}: {e}") from None


def mask_token(tokenizer: PreTrainedTokenizerBase) -> str:
    """The cloze slot of the MPP: the tokenizer's mask token, or T5's first sentinel."""
    if tokenizer.mask_token is not None:
        return tokenizer.mask_token
    if "<extra_id_0>" in tokenizer.get_vocab():
        return "<extra_id_0>"
    raise ConfigError("the tokenizer has neither a mask token nor T5's <extra_id_0>")


@dataclass(frozen=True)
class ItemCodes:
    """Each item's ID token sequence, padded: ``codes[i, :lengths[i]]`` (without </s>)."""

    codes: np.ndarray  # int64 [n_items, max_len]
    lengths: np.ndarray  # int64 [n_items]

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> ItemCodes:
        ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        if (lengths == 0).any():
            raise ConfigError("the tokenizer maps an item ID to no token")
        codes = np.full((len(ids), int(lengths.max())), tokenizer.pad_token_id, dtype=np.int64)
        for i, x in enumerate(ids):
            codes[i, : len(x)] = x
        seen: dict[tuple[int, ...], int] = {}
        for i, x in enumerate(ids):
            if tuple(x) in seen:
                raise ConfigError(
                    f"items {seen[tuple(x)]} and {i} get the same ID tokens {x}: "
                    "the tokenizer cannot tell their IDs apart"
                )
            seen[tuple(x)] = i
        return cls(codes, lengths)

    def of(self, item: int) -> np.ndarray:
        return self.codes[item, : self.lengths[item]]
