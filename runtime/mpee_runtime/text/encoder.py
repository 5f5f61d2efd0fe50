"""Text to token ids, the device's way: the bundle's tokenizer with the model's length, its truncation rule
(truncation.py) and the input limit (readers.cut_text, docs/design.md "Input limits"). One text or a batch;
a batch is tokenized in one `Tokenizer.encode_batch` call where the rule allows it, with the same ids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tokenizers import Encoding, Tokenizer

from ..bundle.manifest import Manifest
from ..errors import MpeeRuntimeError
from . import truncation
from .readers import WORD_CHARS, cut_text, max_chars_for

NOT_UNICODE = "text is not valid Unicode (it holds a lone surrogate)"


class Encoded(NamedTuple):
    """One row, tokenized: ids and token type ids, int64 (1, T), and whether a text or pair was cut first."""

    ids: np.ndarray
    types: np.ndarray
    cut: bool


def open_tokenizer(bundle: Path, manifest: Manifest) -> Tokenizer:
    """The bundle's tokenizer, truncating to the model's length when the rule is `head` (head+tail truncates in
    truncation.encode); refused when unreadable or when its vocabulary is larger than the model's embedding
    table (ids past the table would crash onnxruntime)."""
    path = bundle / manifest.tokenizer.file
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception for malformed files
        raise MpeeRuntimeError(f"{path}: not a readable tokenizers file ({str(e)[:120]})") from None
    if tokenizer.get_vocab_size() > manifest.model.vocab_size:
        raise MpeeRuntimeError(f"{path}: vocabulary of {tokenizer.get_vocab_size()} tokens, but the model has "
                               f"{manifest.model.vocab_size} embeddings (a different model's tokenizer?)")
    tokenizer.no_padding()
    if manifest.model.truncation == "head":   # the library's own truncation is the head rule, and fastest
        tokenizer.enable_truncation(max_length=manifest.model.max_length)
    else:
        tokenizer.no_truncation()
    return tokenizer


def _encoded(enc: Encoding, cut: bool) -> Encoded:
    return Encoded(np.asarray([enc.ids], dtype=np.int64), np.asarray([enc.type_ids], dtype=np.int64), cut)


class TextEncoder:
    """A bundle's text rules: `encode` one text (and pair), `encode_batch` many, each row the same ids.

    Each text is first cut to `max_chars` characters (readers.cut_text: past it no text can add a token), then
    tokenized and truncated to `max_length` tokens by the rule `truncation` (`head` or `head+tail`)."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, truncation_rule: str) -> None:
        self.tokenizer, self.max_length, self.truncation = tokenizer, max_length, truncation_rule
        self.word_chars: int = getattr(tokenizer.model, "max_input_chars_per_word", WORD_CHARS)
        self.max_chars: int = max_chars_for(max_length, self.word_chars)
        self._whole: Tokenizer | None = None

    @classmethod
    def of_bundle(cls, bundle: Path, manifest: Manifest) -> TextEncoder:
        return cls(open_tokenizer(bundle, manifest), manifest.model.max_length, manifest.model.truncation)

    def _cut(self, text: str) -> tuple[str, bool]:
        return cut_text(text, self.max_chars, self.word_chars, tail=self.truncation != "head")

    def encode(self, text: str, pair: str | None = None) -> Encoded:
        """One row: `text` (and `pair`) cut, tokenized and truncated."""
        text, cut = self._cut(text)
        cut_pair = False
        if pair is not None:
            pair, cut_pair = self._cut(pair)
        try:
            if pair is not None and (cut or cut_pair):
                enc = self._encode_cut_pair(text, pair, cut, cut_pair)
            elif self.truncation != "head":
                enc = truncation.encode(self.tokenizer, text, pair, self.max_length, self.truncation)
            else:
                enc = self.tokenizer.encode(text, pair)
        except TypeError:   # tokenizers refuses str objects that are not valid Unicode (lone surrogates)
            raise MpeeRuntimeError(NOT_UNICODE) from None
        return _encoded(enc, cut or cut_pair)

    def encode_batch(self, texts: Sequence[str], pairs: Sequence[str | None]) -> list[Encoded]:
        """Every row as `encode` gives it. Rows the tokenizer's own truncation handles (the `head` rule, no pair
        cut by the input limit) go to one `encode_batch` call; the others, row by row."""
        if self.truncation != "head":
            return [self.encode(t, p) for t, p in zip(texts, pairs)]
        cuts = [self._cut(t) for t in texts]
        cut_pairs = [(None, False) if p is None else self._cut(p) for p in pairs]
        out: list[Encoded | None] = [None] * len(texts)
        together = [i for i, ((_, a), (p, b)) in enumerate(zip(cuts, cut_pairs)) if p is None or not (a or b)]
        if together:
            inputs = [cuts[i][0] if cut_pairs[i][0] is None else (cuts[i][0], cut_pairs[i][0]) for i in together]
            try:
                encs = self.tokenizer.encode_batch(inputs)
            except TypeError:   # tokenizers refuses str objects that are not valid Unicode (lone surrogates)
                raise MpeeRuntimeError(NOT_UNICODE) from None
            for i, enc in zip(together, encs):
                out[i] = _encoded(enc, cuts[i][1])
        for i, row in enumerate(out):
            if row is None:
                out[i] = self.encode(texts[i], pairs[i])
        return out

    def _whole_tokenizer(self) -> Tokenizer:
        """The tokenizer without truncation, made on first use (two racing threads make two)."""
        if self._whole is None:
            whole = Tokenizer.from_str(self.tokenizer.to_str())
            whole.no_truncation()
            self._whole = whole
        return self._whole

    def _encode_cut_pair(self, text: str, pair: str, cut: bool, cut_pair: bool) -> Encoding:
        """A pair with a cut side, shared out longest-first as the tokenizer shares the whole pair
        (truncation.pair_budgets). A cut side counts as the longer (its whole text has more tokens than its
        kept part); two cut sides are compared by their kept parts (the whole lengths are unknown:
        docs/design.md "Input limits")."""
        whole = self._whole_tokenizer()
        a_longer = cut
        if cut == cut_pair:   # both cut: the kept parts' whole token counts (at most max_chars characters each)
            a_longer = len(whole.encode(text, add_special_tokens=False).ids) > len(
                whole.encode(pair, add_special_tokens=False).ids)   # a tie goes to the pair, as in tokenizers
        return truncation.encode(whole, text, pair, self.max_length, self.truncation, a_longer=a_longer)
