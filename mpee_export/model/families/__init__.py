"""The encoder families MPEE runs on, one registry keyed by `model_type` (base.py says what a family is)."""

from __future__ import annotations

from transformers import PretrainedConfig

from ...errors import MpeeExportError
from .base import AttentionParts, ClassifierHead, Family, Sizes, SpecialTokens
from .bert import BertFamily
from .distilbert import DistilBertFamily
from .electra import ElectraFamily
from .mpnet import MPNetFamily
from .roberta import RobertaFamily, XLMRobertaFamily

FAMILIES: dict[str, Family] = {f.model_type: f for f in (BertFamily(), RobertaFamily(), XLMRobertaFamily(),
                                                          ElectraFamily(), DistilBertFamily(), MPNetFamily())}

__all__ = ["FAMILIES", "AttentionParts", "ClassifierHead", "Family", "Sizes", "SpecialTokens", "family_named",
           "family_of"]


def family_named(model_type: object, where: str = "model") -> Family:
    """The family of `model_type`; one MpeeExportError listing the supported ones otherwise."""
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        raise MpeeExportError(f"{where} is a {model_type!r} model; MPEE supports {', '.join(FAMILIES)}")
    return family


def family_of(config: PretrainedConfig) -> Family:
    return family_named(config.model_type)
