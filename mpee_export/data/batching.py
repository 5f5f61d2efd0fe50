"""Tokenised examples and right-padded batches, grouped by length so CPU time goes to real tokens."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from mpee_runtime.text import truncation as truncation_rule

from .glue import TaskExample


@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], pairs: Sequence[str] | None,
             max_length: int, truncation: str = "head") -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and token type ids of each text (and pair), at most `max_length` tokens by the rule
    `truncation` (mpee_runtime.text.truncation): `head` is the tokenizer's own truncation; `head+tail` runs the
    runtime's rule on this tokenizer's backend, so PyTorch and the device keep the same tokens."""
    if truncation == "head":
        enc = tokenizer(list(texts), None if pairs is None else list(pairs), truncation=True,
                        max_length=max_length, return_token_type_ids=True)
        return enc["input_ids"], enc["token_type_ids"]
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    encs = [truncation_rule.encode(backend, a, None if pairs is None else pairs[i], max_length, truncation)
            for i, a in enumerate(texts)]
    return [e.ids for e in encs], [e.type_ids for e in encs]


def encode(examples: Sequence[TaskExample], tokenizer: PreTrainedTokenizerBase, max_length: int,
           truncation: str = "head") -> Encoded:
    """Tokenise to at most `max_length` tokens (`tokenize`); sentence pairs get token type ids 0/1."""
    a = [ex.text_a for ex in examples]
    b = [ex.text_b for ex in examples] if examples and examples[0].text_b is not None else None
    ids, types = tokenize(tokenizer, a, b, max_length, truncation)
    return Encoded(ids, types, [ex.label for ex in examples])


def collate(data: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Right-padded int64 tensors (B, T) for the given examples, T = the longest of them."""
    width = max(len(data.input_ids[i]) for i in indices)
    ids = torch.zeros(len(indices), width, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        types[row, :n] = torch.tensor(data.token_type_ids[i])
        mask[row, :n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
            "labels": torch.tensor([data.labels[i] for i in indices])}


def train_batches(data: Encoded, batch_size: int, generator: torch.Generator,
                  group: int = 50) -> list[list[int]]:
    """Shuffled batches; within chunks of `group` batches, examples are sorted by length (less padding)."""
    order = torch.randperm(len(data), generator=generator).tolist()
    chunk = batch_size * group
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: len(data.input_ids[i]))
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def eval_batches(data: Encoded, batch_size: int) -> Iterator[list[int]]:
    """Batches in length order (results are re-ordered by index by the caller)."""
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]
