"""A word-level caption vocabulary built from the training captions.

Words come from :func:`ptb_tokenize`, a pure-Python form of what pycocoevalcap does before scoring
(Stanford PTBTokenizer with lowercasing, then removal of the punctuation tokens in
``pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS``). The decoder therefore generates exactly the
token stream that BLEU and CIDEr see, and a decoded caption is the words joined by spaces.

Ids 0..3 are reserved: ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``. The vocabulary is saved as JSON.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dsanchor.errors import DataError
from dsanchor.files import write_json

__all__ = ["VocabConfig", "Vocabulary", "ptb_tokenize", "PAD", "BOS", "EOS", "UNK"]

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
VOCAB_NAME = "vocab.json"

# PTB splits these off a word ("don't" -> "do n't", "cat's" -> "cat 's")
_CONTRACTION = re.compile(r"(?i)(n't|'s|'re|'ve|'ll|'d|'m)\b")
# a token: a split-off contraction, a word (hyphens and dots inside it stay, as in PTB), or one other char
_TOKEN = re.compile(r"n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.]\w+)*|\S")


def ptb_tokenize(text: str) -> list[str]:
    """Lowercased PTB-style tokens with punctuation removed, as pycocoevalcap scores captions."""
    t = _CONTRACTION.sub(r" \1", text.lower())
    return [w for w in _TOKEN.findall(t) if any(ch.isalnum() for ch in w)]


@dataclass
class VocabConfig:
    min_count: int = field(default=1, metadata={"help": "words seen fewer times in train captions become <unk>"})
    max_len: int = field(default=24, metadata={"help": "longest caption in tokens, <bos>/<eos> excluded"})


class Vocabulary:
    """Word <-> id mapping with the four reserved ids (see module docstring).

    Args:
        words: the non-special words, in id order (id = 4 + position).
        max_len: longest caption in tokens (without <bos>/<eos>); longer captions are cut.
    """

    def __init__(self, words: Sequence[str], max_len: int = VocabConfig.max_len):
        self.itos: list[str] = list(SPECIALS) + list(words)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.max_len = int(max_len)

    @classmethod
    def build(cls, captions: Iterable[str], config: VocabConfig) -> Vocabulary:
        """Words of ``captions`` seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(w for c in captions for w in ptb_tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= config.min_count), key=lambda w: (-counts[w], w))
        return cls(words, config.max_len)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """``[<bos>, w_1, ..., w_n, <eos>]`` with n <= max_len."""
        ids = [self.stoi.get(w, UNK) for w in ptb_tokenize(text)[: self.max_len]]
        return [BOS, *ids, EOS]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first <eos>, joined by spaces; <bos> and <pad> are skipped."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else SPECIALS[UNK])
        return " ".join(words)

    def save(self, path: str | Path) -> Path:
        """Write ``vocab.json`` into directory ``path`` (or to ``path`` if it ends in .json)."""
        p = Path(path)
        p = p if p.suffix == ".json" else p / VOCAB_NAME
        return write_json(p, {"words": self.itos[len(SPECIALS):], "max_len": self.max_len}, indent=None)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        p = Path(path)
        p = p if p.suffix == ".json" else p / VOCAB_NAME
        if not p.is_file():
            raise DataError(p, "caption vocabulary not found (train a decoder with `dsanchor caption train`)")
        try:
            data = json.loads(p.read_text())
            return cls(list(data["words"]), int(data["max_len"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise DataError(p, "not a caption vocabulary: expected JSON with 'words' and 'max_len'") from None
