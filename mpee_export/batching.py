"""Tokenised GLUE examples and right-padded batches, grouped by length so CPU time goes to real tokens."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from .glue import GlueExample


@dataclass
class Encoded:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


def encode(examples: Sequence[GlueExample], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Encoded:
    """Tokenise with truncation to `max_length`; sentence pairs get token type ids 0/1."""
    a = [ex.text_a for ex in examples]
    b = [ex.text_b for ex in examples] if examples and examples[0].text_b is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_length, return_token_type_ids=True)
    return Encoded(enc["input_ids"], enc["token_type_ids"], [ex.label for ex in examples])


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
