"""The family boundary (docs/design.md, "Encoder families"): what differs between encoder families, said once
per family by one small `Family` class, the way optimum's exporters give each `model_type` an ONNX config.

Everything else (the MPEE model, training, evaluation, the subgraphs, fusion, int8, the reference export,
calibration and validation) reads a family only through this interface:

- the backbone: its transformers classes, the attribute that holds it (`prefix`, also the prefix of every
  saved weight name, as in the family's own `XxxForSequenceClassification`), its sizes under the family's
  config names;
- the embeddings: which token tensors they read (`embedding_inputs`: the embeddings graph's inputs) and how;
- a layer's parts: the Q/K/V projections, the attention output (projection, residual, LayerNorm) and the
  feed-forward block (with its own activation and residual LayerNorm);
- an attention bias the family adds to the attention logits (`attention_bias`; None for every family here.
  A relative-position family such as MPNet computes it from the tokens' original positions, which must
  then travel with the tokens through pruning);
- the classification head of the family's `XxxForSequenceClassification` (pooler/dense, its activation,
  classifier/out_proj), which every exit head copies in shape and the last one in weights;
- the special token ids, and the model type onnxruntime's transformer optimizer is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from mpee_runtime.bundle.contract import INPUT_IDS, TOKEN_TYPE_IDS
from mpee_runtime.bundle.manifest import SpecialTokens


def load_quietly(cls, folder: str, **kwargs):
    """`cls.from_pretrained(folder, output_loading_info=True)` without transformers' warnings about weights it
    leaves out or initialises (the caller reads the loading info)."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return cls.from_pretrained(folder, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


@dataclass(frozen=True)
class Sizes:
    """A backbone's shape, under one set of names whatever the family calls them."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    positions: int        # the longest input the position embeddings allow, special tokens included


@dataclass(frozen=True)
class AttentionParts:
    """What `modeling.attention_block` needs of one layer's self-attention."""

    query: nn.Module
    key: nn.Module
    value: nn.Module
    heads: int
    dropout: nn.Module                                       # on the attention probabilities
    output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (context, block input) -> block output


@dataclass(frozen=True)
class ClassifierHead:
    """The two Linears of an `XxxForSequenceClassification` head on the first token: dense -> activation ->
    classifier. `modeling.ExitHead` holds them as `pooler` and `classifier`."""

    dense: nn.Linear
    classifier: nn.Linear


class Family:
    """One encoder family. Subclasses set the class attributes and override what their modules do differently.
    Register a new family in `families/__init__.py`; docs/design.md says what its tests must cover."""

    model_type: str                                   # config.model_type
    prefix: str                                       # the backbone's attribute (base_model_prefix)
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]                # the bare encoder
    classifier_class: type[PreTrainedModel]           # XxxForSequenceClassification
    embedding_inputs: tuple[str, ...] = (INPUT_IDS, TOKEN_TYPE_IDS)
    head_activation: str = "tanh"                     # between the classification head's two Linears
    relative_positions: bool = False                  # whether `attention_bias` reads the tokens' positions
    ort_model_type: str = "bert"                      # onnxruntime.transformers.optimizer's model_type

    # ------------------------------------------------------------ backbone
    def build_backbone(self, config: PretrainedConfig) -> nn.Module:
        return self.model_class(config)

    def sizes(self, config: PretrainedConfig) -> Sizes:
        return Sizes(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                     config.num_attention_heads, config.vocab_size, config.max_position_embeddings)

    def special_tokens(self, config: PretrainedConfig, tokenizer) -> SpecialTokens:
        """The tokenizer's ids (the config's pad id when the tokenizer names none)."""
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id or 0
        return SpecialTokens(tokenizer.cls_token_id, tokenizer.sep_token_id, pad)

    def head_dropout(self, config: PretrainedConfig) -> float:
        return config.hidden_dropout_prob

    def initializer_range(self, config: PretrainedConfig) -> float:
        return config.initializer_range

    # ------------------------------------------------------------ embeddings
    def embed(self, backbone: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Hidden states (B, T, d) of right-padded token ids; `token_type_ids` only for families that read them,
        `attention_mask` None for one unpadded row."""
        return backbone.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    # ------------------------------------------------------------ layers (BERT's module tree)
    def layers(self, backbone: nn.Module) -> nn.ModuleList:
        return backbone.encoder.layer

    def attention_parts(self, layer: nn.Module) -> AttentionParts:
        sa = layer.attention.self
        return AttentionParts(sa.query, sa.key, sa.value, sa.num_attention_heads, sa.dropout,
                              layer.attention.output)

    def feed_forward(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The layer's FFN with its residual and LayerNorm: (B, N, d) -> (B, N, d)."""
        return layer.output(layer.intermediate(hidden), hidden)

    def attention_bias(self, backbone: nn.Module, layer_index: int, state) -> torch.Tensor | None:
        """An additive bias (B or 1, H, N, N) on the attention logits of layer `layer_index` for the tokens of
        `state` (a `modeling.LayerState`), None when the family has none. A family with a relative position bias
        (MPNet) computes it from the tokens' original positions, which then travel in the state through pruning
        (docs/design.md 3.1)."""
        return None

    def load_pretrained(self, folder: str) -> tuple[dict[str, torch.Tensor], nn.Linear | None]:
        """A backbone folder's encoder weights (under the bare encoder's names, no pooler) and its trained pooler
        dense, to start every exit head's pooler from (None when the family has none or the folder holds no
        trained one). OSError when the folder has no loadable weights."""
        model, info = load_quietly(self.model_class, folder)
        pooler = getattr(model, "pooler", None)
        trained = pooler is not None and not any(k.startswith("pooler.") for k in info["missing_keys"])
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("pooler.")}
        return state, pooler.dense if trained else None

    # ------------------------------------------------------------ the user's classifier
    def classifier_head(self, classifier: PreTrainedModel) -> ClassifierHead:
        """The head of an `XxxForSequenceClassification` (BERT: the pooler's dense and the classifier)."""
        return ClassifierHead(classifier.bert.pooler.dense, classifier.classifier)

    def classifier_backbone_state(self, classifier: PreTrainedModel) -> dict[str, torch.Tensor]:
        """The classifier's encoder weights under the bare encoder's names (no pooler: the head owns it)."""
        encoder = getattr(classifier, self.prefix)
        return {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}

    def to_classifier(self, config: PretrainedConfig, backbone: nn.Module, head: ClassifierHead) -> PreTrainedModel:
        """An `XxxForSequenceClassification` with `backbone`'s weights and `head` as its head (eval mode)."""
        model = self.classifier_class(config)
        result = getattr(model, self.prefix).load_state_dict(backbone.state_dict(), strict=False)
        if result.unexpected_keys or any(not k.startswith("pooler.") for k in result.missing_keys):
            raise ValueError(f"{self.model_type} backbone does not fit {self.classifier_class.__name__}: {result}")
        target = self.classifier_head(model)
        target.dense.load_state_dict(head.dense.state_dict())
        target.classifier.load_state_dict(head.classifier.state_dict())
        return model.eval()
