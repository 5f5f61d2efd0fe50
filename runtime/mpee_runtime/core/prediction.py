"""`Prediction`, the engine's answer for one row: immutable, built once when the row's answer is known."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .flops import FlopsModel


@dataclass(frozen=True)
class Prediction:
    label: str
    label_index: int
    probs: list[float]
    exit_layer: int                      # 1-based
    tokens_per_layer: list[int]          # tokens entering each executed layer's attention
    ffn_tokens_per_layer: list[int]      # tokens in each executed layer's FFN (after pruning)
    flops: int
    rho: float
    rho_pad128: float
    timings_us: dict                     # embeddings, layers (list), total, tokenize (single graph: graph, total, tokenize)
    layer_probs: list[list[float]] | None = None    # with record=True: every executed layer's probs
    layer_entropies: list[float] | None = None
    chars_cut: bool = False                         # the text or pair was cut to max_chars (readers.cut_text)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def of_row(cls, labels: Sequence[str], flops_model: FlopsModel, input_len: int, attn_lens: Sequence[int],
               ffn_lens: Sequence[int], probs: np.ndarray, timings_us: dict, *, chars_cut: bool = False,
               trace: tuple[list, list] | None = None) -> Prediction:
        """A row's answer from what its executed layers gave: the last layer's probabilities (C,), the tokens
        entering each layer's attention and FFN (Python ints), and its FLOPs and rho at its own input length."""
        p = probs.astype(float)
        label = int(p.argmax())
        flops = flops_model.executed_flops(attn_lens, ffn_lens)
        rho, rho128 = flops_model.speedups(input_len, flops)
        return cls(labels[label], label, p.tolist(), len(attn_lens), list(attn_lens), list(ffn_lens), flops, rho,
                   rho128, timings_us,
                   trace[0] if trace else None, trace[1] if trace else None, chars_cut)
