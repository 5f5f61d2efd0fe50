"""Tiny random Hugging Face model folders of five encoder families, each with a tiny tokenizer of its real kind.

`tiny_family_folder(family, folder)` saves a random tiny model (safetensors) and a tokenizer built from scratch
with the `tokenizers` library (tokenizer.json included) into `folder`; `transformers.Auto*.from_pretrained(folder)`
load it. Texts used with these tokenizers should be made of `WORDS` (and the punctuation in it):

- bert / electra / distilbert: WordPiece, uncased, vocab.txt = [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4 + words;
  pairs are `[CLS] A [SEP] B [SEP]` (DistilBERT's transformers tokenizer returns no token_type_ids).
- roberta: byte-level BPE, <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4; RobertaProcessing, pairs `<s> A </s></s> B </s>`.
- xlm-roberta: SentencePiece-style Unigram (Metaspace), same special ids and pair layout as RoBERTa.
"""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert")   # model_type strings
# Families with a relative position bias: their layer graphs carry the tokens' positions (schema 7).
RELATIVE_FAMILIES = ("mpnet",)
ALL_FAMILIES = FAMILIES + RELATIVE_FAMILIES

# The tiny vocabulary of tests/conftest.py's backbone (letters, a few words, suffixes, punctuation).
WORDS = [chr(c) for c in range(97, 123)] + [
    "the", "movie", "good", "bad", "great", "awful", "film", "is", "not", "fun", "boring",
    "##s", "##ing", "##ly", ".", ",", "!", "it", "and", "was", "very", "plot", "acting"]
SENTENCES = [
    "the movie is great", "a fun film", "very good acting", "great plot and fun", "it was good",
    "the movie is awful", "a boring film", "very bad acting", "awful plot and boring", "it was bad",
    "the film was not good .", "the plot is very boring !", "it is fun , and the acting is great .",
    "movies and films", "the acting was awful , not fun .", "a great movie !", "boring , bad , awful .",
]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
HIDDEN, HEADS, INTERMEDIATE, ELECTRA_EMBEDDING = 32, 4, 37, 16


def corpus() -> list[str]:
    """The training corpus of the BPE and Unigram tokenizers: every plain word, then the sentences."""
    return [w for w in WORDS if not w.startswith("##")] + SENTENCES


def _wordpiece_tokenizer(family: str, folder: Path, max_positions: int):
    from transformers import BertTokenizerFast, DistilBertTokenizerFast, ElectraTokenizerFast
    cls = {"bert": BertTokenizerFast, "electra": ElectraTokenizerFast, "distilbert": DistilBertTokenizerFast}[family]
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(BERT_SPECIALS + WORDS) + "\n")
    return cls(vocab_file=str(vocab), do_lower_case=True, model_max_length=max_positions)


def _roberta_tokenizer(max_positions: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=1, special_tokens=ROBERTA_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    return RobertaTokenizerFast(tokenizer_object=tok, model_max_length=max_positions)


def _xlm_roberta_tokenizer(max_positions: int):
    import json

    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    # The Unigram trainer seeds its pieces with substrings seen in >= 2 *distinct* pre-tokenized words, so on
    # a tiny corpus split into words it keeps almost only characters: train on whole sentences instead, then
    # drop the pieces that span words (unreachable once the pre-tokenizer splits on spaces again).
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=ROBERTA_SPECIALS, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    pieces = [(piece, score) for piece, score in json.loads(tok.to_str())["model"]["vocab"]
              if "▁" not in piece[1:]]
    tok.model = models.Unigram(pieces, unk_id=ROBERTA_SPECIALS.index("<unk>"), byte_fallback=False)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=max_positions)


def _mpnet_tokenizer(folder: Path, max_positions: int):
    from transformers import MPNetTokenizerFast
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(ROBERTA_SPECIALS[:3] + ["<unk>", "<mask>"] + WORDS) + "\n")
    return MPNetTokenizerFast(vocab_file=str(vocab), do_lower_case=True, unk_token="<unk>",
                              model_max_length=max_positions)


def family_tokenizer(family: str, folder: Path, max_positions: int = 64):
    """The family's tiny fast tokenizer (the WordPiece ones write their vocab.txt into `folder`)."""
    if family in ("bert", "electra", "distilbert"):
        return _wordpiece_tokenizer(family, folder, max_positions)
    if family == "mpnet":
        return _mpnet_tokenizer(folder, max_positions)
    if family == "roberta":
        return _roberta_tokenizer(max_positions)
    if family == "xlm-roberta":
        return _xlm_roberta_tokenizer(max_positions)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def family_config(family: str, vocab_size: int, *, layers: int = 3, max_positions: int = 64, **kw):
    """The family's tiny config (transformers' own config class); `kw` overrides."""
    from transformers import (
        BertConfig,
        DistilBertConfig,
        ElectraConfig,
        MPNetConfig,
        RobertaConfig,
        XLMRobertaConfig,
    )
    common = {"vocab_size": vocab_size, "hidden_size": HIDDEN, "num_hidden_layers": layers,
              "num_attention_heads": HEADS, "intermediate_size": INTERMEDIATE}
    if family == "bert":
        return BertConfig(**common, max_position_embeddings=max_positions, type_vocab_size=2, **kw)
    if family == "electra":
        return ElectraConfig(**common, embedding_size=ELECTRA_EMBEDDING, max_position_embeddings=max_positions,
                             type_vocab_size=2, **kw)
    if family in ("roberta", "xlm-roberta"):
        cls = RobertaConfig if family == "roberta" else XLMRobertaConfig
        # Positions start at padding_idx + 1 = 2, so max_positions usable tokens need two more embeddings.
        return cls(**common, max_position_embeddings=max_positions + 2, type_vocab_size=1,
                   pad_token_id=1, bos_token_id=0, eos_token_id=2, **kw)
    if family == "mpnet":
        return MPNetConfig(**common, max_position_embeddings=max_positions + 2, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, **kw)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=vocab_size, dim=HIDDEN, n_heads=HEADS, hidden_dim=INTERMEDIATE,
                                n_layers=layers, max_position_embeddings=max_positions,
                                sinusoidal_pos_embds=False, pad_token_id=0, **kw)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def _model_class(family: str, classifier: bool):
    import transformers as t
    bare = {"bert": t.BertModel, "roberta": t.RobertaModel, "xlm-roberta": t.XLMRobertaModel,
            "electra": t.ElectraModel, "distilbert": t.DistilBertModel, "mpnet": t.MPNetModel}
    head = {"bert": t.BertForSequenceClassification, "roberta": t.RobertaForSequenceClassification,
            "xlm-roberta": t.XLMRobertaForSequenceClassification,
            "electra": t.ElectraForSequenceClassification,
            "distilbert": t.DistilBertForSequenceClassification, "mpnet": t.MPNetForSequenceClassification}
    return (head if classifier else bare)[family]


def tiny_family_folder(family: str, folder: Path, *, layers: int = 3, labels: list[str] | None = None,
                       seed: int = 0, max_positions: int = 64) -> Path:
    """Save a random tiny `family` model + its tokenizer into `folder` (created); return folder.
    labels None: the bare encoder (XxxModel, what `mpee-train --backbone` reads);
    labels given: an XxxForSequenceClassification with config.id2label/label2id from them (a user's fine-tuned
    classifier)."""
    import torch
    if family not in ALL_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {ALL_FAMILIES}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = family_tokenizer(family, folder, max_positions)
    kw = {}
    if labels is not None:
        labels = [str(label) for label in labels]
        kw = {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}
    config = family_config(family, len(tok), layers=layers, max_positions=max_positions, **kw)
    torch.manual_seed(seed)
    model = _model_class(family, labels is not None)(config)
    # Larger random weights than the default init (std 0.02): outputs then vary clearly with the input.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                module.weight.normal_(0, 0.2)
    model.eval().save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
