"""FLOPs of MPEE inference (docs/design.md 2.4): the one formula the exporter, evaluator and runtime share.

Convention: one multiply-add (MAC) = 2 FLOPs. Only matrix products are counted: the Q/K/V/output
projections, the two attention products (QK^T and AV), the two FFN matrices and the exit head
(pooler d x d on the pooled vector and classifier d x C). Embedding lookups, softmax, LayerNorm, GELU,
top-k, gathers, the fused-token sum, the exit head's mean pooling (additions only) and the token score
computed on the side from one query row (d*a multiply-adds, under 0.1% of a layer) are not counted. This is the convention of the MPEE and LTP papers
and is what `torch.utils.flop_counter.FlopCounterMode` counts on the eager model.

Per layer with attention length a and FFN length f (they differ at a pruning layer):
    MACs = 4*d^2*a + 2*d*a^2 + 2*d*d_ff*f
Exit head: MACs = d^2 + d*C.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FLOPS_PER_MAC = 2
PAD_LEN = 128  # the research code's baseline length (rho_pad128)
FLOPS_CONVENTION = (
    "FLOPs = 2 x multiply-adds of matrix products (QKV/output projections, QK^T, AV, FFN, exit heads); "
    "embeddings, softmax, LayerNorm, GELU, top-k, fusion and mean pooling not counted. rho = FLOPs of the full model "
    "(all layers, real length, no pruning, one classifier head) / FLOPs executed; rho_pad128 uses the "
    "full model at padded length 128 as the baseline (research code's convention)."
)


@dataclass(frozen=True)
class FlopsModel:
    """Model facts the formula needs: hidden size d, FFN size d_ff, classes C, layers L."""

    hidden: int
    ffn: int
    num_labels: int
    num_layers: int

    def layer_flops(self, attn_len: int, ffn_len: int) -> int:
        """FLOPs of one transformer layer with attention on `attn_len` tokens and FFN on `ffn_len`."""
        d, a, f = self.hidden, attn_len, ffn_len
        return FLOPS_PER_MAC * (4 * d * d * a + 2 * d * a * a + 2 * d * self.ffn * f)

    def exit_flops(self) -> int:
        """FLOPs of one exit head (pooler on [CLS], then classifier)."""
        d = self.hidden
        return FLOPS_PER_MAC * (d * d + d * self.num_labels)

    def executed_flops(self, attn_lens: Sequence[int], ffn_lens: Sequence[int]) -> int:
        """FLOPs of the layers actually run (one entry per executed layer), each with its exit head."""
        if len(attn_lens) != len(ffn_lens):
            raise ValueError(f"attn_lens has {len(attn_lens)} layers, ffn_lens {len(ffn_lens)}")
        return sum(self.layer_flops(a, f) + self.exit_flops() for a, f in zip(attn_lens, ffn_lens))

    def full_flops(self, seq_len: int) -> int:
        """FLOPs of the ordinary full model: all L layers on `seq_len` tokens and one classifier head."""
        return self.num_layers * self.layer_flops(seq_len, seq_len) + self.exit_flops()

    def speedups(self, seq_len: int, executed: int, pad_len: int = PAD_LEN) -> tuple[float, float]:
        """(rho, rho_pad128) of one sample of real length `seq_len` that executed `executed` FLOPs."""
        return self.full_flops(seq_len) / executed, self.full_flops(pad_len) / executed

    def dataset_speedups(self, seq_lens: Sequence[int], executed: Sequence[int]) -> tuple[float, float]:
        """(rho, rho_pad128) of a data set: the full model's FLOPs on every sample over the FLOPs executed,
        each summed over the data set (a ratio of sums, not a mean of per-sample ratios)."""
        if len(seq_lens) != len(executed) or not len(seq_lens):
            raise ValueError(f"{len(seq_lens)} sequence lengths for {len(executed)} FLOPs counts")
        total = sum(int(x) for x in executed)
        full = sum(self.full_flops(int(n)) for n in seq_lens)
        return full / total, len(seq_lens) * self.full_flops(PAD_LEN) / total
