"""The tiny encoder-family folders of tests/families.py load with transformers and tokenizers as real ones do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from families import FAMILIES, tiny_family_folder
from safetensors.torch import load_file

LABELS = ["neg", "pos", "neutral"]
TEXT, PAIR = "the movie is great , not boring !", "it was a very good film ."
TOKENIZERS = {"bert": "BertTokenizerFast", "roberta": "RobertaTokenizerFast",
              "xlm-roberta": "XLMRobertaTokenizerFast", "electra": "ElectraTokenizerFast",
              "distilbert": "DistilBertTokenizerFast"}
PAD_ID = {"bert": 0, "electra": 0, "distilbert": 0, "roberta": 1, "xlm-roberta": 1}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """(family, classifier?) -> its folder, built once for the module."""
    root = tmp_path_factory.mktemp("families")
    return {(f, c): tiny_family_folder(f, root / f"{f}-{'cls' if c else 'bare'}", labels=LABELS if c else None)
            for f in FAMILIES for c in (False, True)}


@pytest.mark.parametrize("family", FAMILIES)
def test_bare_folder_loads_with_auto_classes(family, folders):
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    folder = folders[family, False]
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == family
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    assert type(model).__name__.lower() == family.replace("-", "") + "model"
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(tok).__name__ == TOKENIZERS[family]
    assert tok.model_max_length == 64


@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_folder_loads_without_new_weights(family, folders):
    from transformers import AutoModelForSequenceClassification
    model, info = AutoModelForSequenceClassification.from_pretrained(folders[family, True],
                                                                     output_loading_info=True)
    assert not any(info.values()), info
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {label: i for i, label in enumerate(LABELS)}
    assert model.config.num_labels == len(LABELS)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights(family, folders, tmp_path):
    again = load_file(tiny_family_folder(family, tmp_path / "again") / "model.safetensors")
    first = load_file(folders[family, False] / "model.safetensors")
    assert again.keys() == first.keys()
    assert all(torch.equal(again[k], first[k]) for k in first)
    other = load_file(tiny_family_folder(family, tmp_path / "other", seed=1) / "model.safetensors")
    assert not all(torch.equal(other[k], first[k]) for k in first)


@pytest.mark.parametrize("family", FAMILIES)
def test_special_token_layout(family, folders):
    from transformers import AutoConfig, AutoTokenizer
    folder = folders[family, False]
    tok, config = AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder)
    assert tok.pad_token_id == PAD_ID[family] == config.pad_token_id
    ids = tok(TEXT, PAIR)["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    n_a = len(tok(TEXT, add_special_tokens=False)["input_ids"])
    if family in ("roberta", "xlm-roberta"):
        assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
        assert tok.cls_token_id == tok.bos_token_id and tok.sep_token_id == tok.eos_token_id
        assert ids[n_a + 1:n_a + 3] == [2, 2]                      # <s> A </s></s> B </s>
    else:
        assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        assert ids[n_a + 1] == tok.sep_token_id and ids[n_a + 2] != tok.sep_token_id   # [CLS] A [SEP] B [SEP]
    assert tok.unk_token_id not in ids


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_json_round_trip(family, folders, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folders[family, False])
    tok.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    for path in (folders[family, False] / "tokenizer.json", tmp_path / "tokenizer.json"):
        raw = Tokenizer.from_file(str(path))
        assert raw.encode(TEXT).ids == tok(TEXT)["input_ids"]
        assert raw.encode(TEXT, PAIR).ids == tok(TEXT, PAIR)["input_ids"]
        if "token_type_ids" in tok.model_input_names:
            assert raw.encode(TEXT, PAIR).type_ids == tok(TEXT, PAIR)["token_type_ids"]


@pytest.mark.parametrize("family", FAMILIES)
def test_vocabulary_and_positions_fit_the_model(family, folders):
    from transformers import AutoModel, AutoTokenizer
    folder = folders[family, False]
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    assert len(tok) <= model.config.vocab_size
    assert max(tok.get_vocab().values()) < model.config.vocab_size
    # model_max_length tokens (the longest the tokenizer gives) fit the position embeddings.
    batch = tok([" ".join([TEXT] * 20), PAIR], truncation=True, padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] == tok.model_max_length
    with torch.no_grad():
        assert model(**batch).last_hidden_state.shape == (2, tok.model_max_length, 32)


def test_electra_projects_its_embeddings(folders):
    from transformers import AutoModel
    model = AutoModel.from_pretrained(folders["electra", False])
    assert model.config.embedding_size == 16 != model.config.hidden_size == 32
    assert tuple(model.embeddings_project.weight.shape) == (32, 16)


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_vary_with_the_input(family, folders):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(folders[family, False])
    batch = tok(["the movie is great", "a boring film", "it was very bad acting"], padding=True,
                return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(folders[family, False]).eval()(**batch, output_hidden_states=True)
        logits = AutoModelForSequenceClassification.from_pretrained(folders[family, True]).eval()(**batch).logits
    for layer in hidden.hidden_states[1:]:                     # the first token's state, after every layer
        first = layer[:, 0]
        assert torch.cdist(first, first)[torch.triu_indices(3, 3, 1).unbind()].min() > 0.1
    assert torch.cdist(logits, logits)[torch.triu_indices(3, 3, 1).unbind()].min() > 1e-2


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown family"):
        tiny_family_folder("gpt2", tmp_path / "x")
