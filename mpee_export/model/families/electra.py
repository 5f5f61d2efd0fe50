"""ELECTRA (the discriminator): BERT's layers; embeddings of their own width, projected to the hidden size by
`embeddings_project` when the two differ; a classification head with GELU where BERT has tanh."""

from __future__ import annotations

import torch
from torch import nn
from transformers import ElectraConfig, ElectraForSequenceClassification, ElectraModel

from .base import ClassifierHead, Family


class ElectraFamily(Family):
    model_type = "electra"
    prefix = "electra"
    config_class = ElectraConfig
    model_class = ElectraModel
    classifier_class = ElectraForSequenceClassification
    head_activation = "gelu"

    def embed(self, backbone: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor | None) -> torch.Tensor:
        hidden = backbone.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        if hasattr(backbone, "embeddings_project"):
            hidden = backbone.embeddings_project(hidden)
        return hidden

    def head_dropout(self, config: ElectraConfig) -> float:
        return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob

    def classifier_head(self, classifier) -> ClassifierHead:
        return ClassifierHead(classifier.classifier.dense, classifier.classifier.out_proj)
