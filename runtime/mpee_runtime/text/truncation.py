"""Which tokens of a long text the model reads: the one truncation rule, used by the runtime and by training.

`head` keeps the first tokens (the tokenizers library's own longest-first truncation). `head+tail` keeps
the first quarter of the budget (rounded up) and the last three quarters: 128 + 382 tokens at
max_length 512, the split Sun et al. (2019, "How to Fine-Tune BERT for Text Classification?") found best
on IMDB. The budget is max_length minus the special tokens ([CLS], [SEP]). A pair is first shared out
longest-first, exactly as `head` shares it (`pair_budgets`); each side then keeps its own head and tail.
A text within the budget is never changed, so the two rules differ only on texts that are cut.

PyTorch (mpee_export.data.batching) calls `encode` with the training tokenizer's backend, the runtime with the
bundle's tokenizer.json: the same function on the same tokenizer gives the same ids.
"""

from __future__ import annotations

import json
import pickle

from tokenizers import Encoding, Tokenizer

from ..bundle.contract import TRUNCATIONS
from ..errors import MpeeRuntimeError


def check_truncation(truncation: str) -> str:
    if truncation not in TRUNCATIONS:
        raise MpeeRuntimeError(f"truncation must be one of {list(TRUNCATIONS)}, got {truncation!r}")
    return truncation


def head_tokens(keep: int) -> int:
    """Tokens `head+tail` keeps from the start of a side cut to `keep` tokens: ceil(keep / 4)."""
    return (keep + 3) // 4


def pair_budgets(na: int, nb: int, budget: int, a_longer: bool | None = None) -> tuple[int, int]:
    """The tokens each side of a pair keeps, longest-first: the shorter side stays whole when the longer
    can take the rest; otherwise each gets half and, for an odd budget, the longer side the extra token.
    `a_longer` (default na > nb: a tie counts the pair as the longer, as in tokenizers) decides which is
    which when the caller knows more than the kept lengths."""
    if na + nb <= budget:
        return na, nb
    a_longer = na > nb if a_longer is None else a_longer
    short = nb if a_longer else na
    if 2 * short > budget:
        short, long = budget // 2, budget - budget // 2
    else:
        long = budget - short
    return (long, short) if a_longer else (short, long)


def _without_overflow(enc: Encoding) -> Encoding:
    """`enc` without the pieces `truncate` keeps as `overflowing`: merging and post-processing pair every piece
    of one side with every piece of the other (a pair of about 100 characters each took 1.2 s and 3,499 pieces,
    and two long sides all memory). Through the Encoding's own pickling state: it has no setter."""
    state = json.loads(enc.__getstate__())
    if not state["overflowing"]:
        return enc
    state["overflowing"] = []
    out = Encoding()
    out.__setstate__(json.dumps(state).encode())
    return out


def _cut(enc: Encoding, keep: int, truncation: str) -> Encoding:
    """`enc` cut to `keep` tokens: its first `keep` (head), or its first head_tokens(keep) and its last rest."""
    if len(enc.ids) <= keep:
        return enc
    if truncation == "head" or keep < 2:
        enc.truncate(keep, direction="right")
        return _without_overflow(enc)
    head = head_tokens(keep)
    tail = pickle.loads(pickle.dumps(enc))   # Encoding has no copy(); truncate works in place
    enc.truncate(head, direction="right")
    tail.truncate(keep - head, direction="left")
    return Encoding.merge([_without_overflow(enc), _without_overflow(tail)], growing_offsets=False)


def encode(tokenizer: Tokenizer, text: str, pair: str | None, max_length: int, truncation: str, *,
           a_longer: bool | None = None) -> Encoding:
    """`text` (and `pair`) with special tokens, at most `max_length` tokens by the rule `truncation`.

    `tokenizer` must not truncate itself (no_truncation); `a_longer` as in `pair_budgets`."""
    a = tokenizer.encode(text, add_special_tokens=False)
    b = None if pair is None else tokenizer.encode(pair, add_special_tokens=False)
    budget = max_length - tokenizer.num_special_tokens_to_add(b is not None)
    if b is None:
        a = _cut(a, budget, truncation)
    else:
        ka, kb = pair_budgets(len(a.ids), len(b.ids), budget, a_longer)
        a, b = _cut(a, ka, truncation), _cut(b, kb, truncation)
    return tokenizer.post_process(a, b, add_special_tokens=True)
