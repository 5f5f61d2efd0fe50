"""BERT: the reference family (every default in `Family` is BERT's)."""

from __future__ import annotations

from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel

from .base import Family


class BertFamily(Family):
    model_type = "bert"
    prefix = "bert"
    config_class = BertConfig
    model_class = BertModel
    classifier_class = BertForSequenceClassification

    def build_backbone(self, config: BertConfig) -> nn.Module:
        return BertModel(config, add_pooling_layer=False)
