"""DistilBERT: no token types and no pooler; its own module names (q_lin / k_lin / v_lin / out_lin, sa_layer_norm,
ffn.lin1 / lin2, output_layer_norm), its own config names (dim, n_heads, hidden_dim, n_layers), and a head of
pre_classifier -> ReLU -> classifier."""

from __future__ import annotations

import torch
from torch import nn
from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertModel

from mpee_runtime.bundle.contract import INPUT_IDS

from .base import AttentionParts, ClassifierHead, Family, Sizes


class DistilBertFamily(Family):
    model_type = "distilbert"
    prefix = "distilbert"
    config_class = DistilBertConfig
    model_class = DistilBertModel
    classifier_class = DistilBertForSequenceClassification
    embedding_inputs = (INPUT_IDS,)
    head_activation = "relu"

    def sizes(self, config: DistilBertConfig) -> Sizes:
        return Sizes(config.n_layers, config.dim, config.hidden_dim, config.n_heads, config.vocab_size,
                     config.max_position_embeddings)

    def head_dropout(self, config: DistilBertConfig) -> float:
        return config.seq_classif_dropout

    def embed(self, backbone: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor | None) -> torch.Tensor:
        return backbone.embeddings(input_ids)

    def layers(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.transformer.layer

    def attention_parts(self, layer: nn.Module) -> AttentionParts:
        sa = layer.attention

        def output(context: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
            return layer.sa_layer_norm(sa.out_lin(context) + hidden)

        return AttentionParts(sa.q_lin, sa.k_lin, sa.v_lin, sa.n_heads, sa.dropout, output)

    def feed_forward(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        ffn = layer.ffn
        return layer.output_layer_norm(ffn.dropout(ffn.lin2(ffn.activation(ffn.lin1(hidden)))) + hidden)

    def classifier_head(self, classifier) -> ClassifierHead:
        return ClassifierHead(classifier.pre_classifier, classifier.classifier)

    def classifier_backbone_state(self, classifier) -> dict[str, torch.Tensor]:
        return classifier.distilbert.state_dict()
