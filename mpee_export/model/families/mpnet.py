"""MPNet (all-mpnet-base-v2): RoBERTa-like embeddings (positions from `padding_idx + 1`, no token types), its own
module names (attention.attn.{q,k,v,o}, attention.LayerNorm), and a relative position bias (32 buckets, one
embedding shared by every layer) added to the attention logits. The bias is computed at each layer from the
tokens' original positions (`LayerState.positions`), so that after pruning every kept token keeps its own and
the fused token takes the position of the highest-scored token it replaces."""

from __future__ import annotations

import torch
from torch import nn
from transformers import MPNetConfig, MPNetForSequenceClassification, MPNetModel

from mpee_runtime.bundle.contract import INPUT_IDS

from .base import AttentionParts, ClassifierHead, Family, Sizes


def distance_bias(backbone: nn.Module) -> tuple[torch.Tensor, int]:
    """The relative position bias of every distance d = key - query in [-span, span] (span = P - 1, P the
    position embeddings): a (2 span + 1, H) table whose row d + span is the bias of d, and span."""
    config = backbone.config
    span = config.max_position_embeddings - 1
    distances = torch.arange(-span, span + 1, device=backbone.encoder.relative_attention_bias.weight.device)
    buckets = backbone.encoder.relative_position_bucket(distances, num_buckets=config.relative_attention_num_buckets)
    return backbone.encoder.relative_attention_bias(buckets), span


class MPNetFamily(Family):
    model_type = "mpnet"
    prefix = "mpnet"
    config_class = MPNetConfig
    model_class = MPNetModel
    classifier_class = MPNetForSequenceClassification
    embedding_inputs = (INPUT_IDS,)
    relative_positions = True

    def build_backbone(self, config: MPNetConfig) -> nn.Module:
        return MPNetModel(config, add_pooling_layer=False)

    def sizes(self, config: MPNetConfig) -> Sizes:
        sizes = super().sizes(config)   # positions start at padding_idx + 1, as RoBERTa's
        return Sizes(sizes.layers, sizes.hidden, sizes.intermediate, sizes.heads, sizes.vocab,
                     config.max_position_embeddings - config.pad_token_id - 1)

    def embed(self, backbone: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is not None:   # positions count the non-padding ids: padding must hold that id
            input_ids = input_ids.masked_fill(attention_mask == 0, backbone.embeddings.padding_idx)
        return backbone.embeddings(input_ids=input_ids)

    def attention_parts(self, layer: nn.Module) -> AttentionParts:
        attention = layer.attention
        sa = attention.attn

        def output(context: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
            return attention.LayerNorm(attention.dropout(sa.o(context)) + hidden)

        return AttentionParts(sa.q, sa.k, sa.v, sa.num_attention_heads, sa.dropout, output)

    def attention_bias(self, backbone: nn.Module, layer_index: int, state) -> torch.Tensor:
        """MPNetEncoder.compute_position_bias on the tokens' original positions: (B, H, N, N).

        The bias of every distance a pair of positions can have is one (2P - 1, H) table (`distance_bias`), and
        each pair looks its distance up in it: the same values as bucketing the (B, N, N) distances, but the
        bucket arithmetic runs on constants, which the ONNX export folds into the table, instead of on N x N
        distances in every layer graph (eight elementwise ops on (B, N, N) a layer: about 6% of an int8 MPNet on
        IMDB reviews, benchmarks/results/map_imdb/profile_mpnet_int8.md)."""
        positions = state.positions
        table, span = distance_bias(backbone)
        relative = positions[:, None, :] - positions[:, :, None] + span          # key - query + span, (B, N, N)
        # rows of H floats gathered, then one transpose: a Gather along the table's second axis copies element by
        # element (1.2-1.3x slower on IMDB reviews, int8)
        return table[relative].permute(0, 3, 1, 2)

    def classifier_head(self, classifier) -> ClassifierHead:
        return ClassifierHead(classifier.classifier.dense, classifier.classifier.out_proj)
