"""RoBERTa and XLM-RoBERTa: BERT's layers; positions counted from `padding_idx + 1` over the non-padding tokens,
no token types in use (one type embedding, always 0), and a classification head of its own (dense, out_proj)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from mpee_runtime.bundle.contract import INPUT_IDS

from .base import ClassifierHead, Family, Sizes


class RobertaFamily(Family):
    model_type = "roberta"
    prefix = "roberta"
    config_class = RobertaConfig
    model_class = RobertaModel
    classifier_class = RobertaForSequenceClassification
    embedding_inputs = (INPUT_IDS,)

    def build_backbone(self, config: RobertaConfig) -> nn.Module:
        return self.model_class(config, add_pooling_layer=False)

    def sizes(self, config: RobertaConfig) -> Sizes:
        # Positions start at padding_idx + 1: 514 position embeddings hold 512 tokens.
        sizes = super().sizes(config)
        return Sizes(sizes.layers, sizes.hidden, sizes.intermediate, sizes.heads, sizes.vocab,
                     config.max_position_embeddings - config.pad_token_id - 1)

    def embed(self, backbone: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor | None) -> torch.Tensor:
        # The position ids count the tokens that are not padding_idx: padding must hold that id (whatever the
        # caller padded with), so that a row's positions are the ones it has alone.
        if attention_mask is not None:
            input_ids = input_ids.masked_fill(attention_mask == 0, backbone.embeddings.padding_idx)
        return backbone.embeddings(input_ids=input_ids)

    def classifier_head(self, classifier) -> ClassifierHead:
        return ClassifierHead(classifier.classifier.dense, classifier.classifier.out_proj)


class XLMRobertaFamily(RobertaFamily):
    model_type = "xlm-roberta"
    prefix = "roberta"
    config_class = XLMRobertaConfig
    model_class = XLMRobertaModel
    classifier_class = XLMRobertaForSequenceClassification
