"""The family boundary (mpee_export/model/families): each family's layers against transformers' own model, the
user's classifier as the last exit, the frozen backbone, class order, and the refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cli_checks import click_error
from families import ALL_FAMILIES, tiny_family_folder
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from mpee_export.cli.train import train
from mpee_export.data.glue import Task, get_task
from mpee_export.errors import MpeeExportError
from mpee_export.model.checkpoint import from_backbone, from_classifier, load_backbone_config
from mpee_export.model.config import MpeeConfig
from mpee_export.model.families import FAMILIES as REGISTRY
from mpee_export.training.loop import classifier_task
from mpee_runtime.core.policy import ExitPolicy

TEXTS = ["the movie is great", "a boring film , not fun", "it was good and the plot was very fun !"]
PAIRS = ["very bad acting", "it", "the movie"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """Per family: the bare encoder (False) and a fine-tuned classifier with labels neg/pos (True)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for family in ALL_FAMILIES:
        out[family, False] = tiny_family_folder(family, root / family)
        out[family, True] = tiny_family_folder(family, root / f"{family}-clf", labels=["neg", "pos"], seed=1)
    return out


def _batch(folder: Path, pairs: bool):
    tok = AutoTokenizer.from_pretrained(str(folder))
    return tok(TEXTS, PAIRS if pairs else None, padding=True, return_tensors="pt")


def test_the_registry_is_the_issue_list():
    assert list(REGISTRY) == list(ALL_FAMILIES)


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("pairs", [False, True])
def test_layers_compute_what_transformers_computes(folders, family, pairs):
    """Without pruning, MPEE's layer steps (the family's parts, our attention) give transformers' own hidden
    states on a padded batch of texts or pairs: the boundary reads each family's modules right."""
    folder = folders[family, False]
    model = from_backbone(folder, MpeeConfig.build(num_layers=3, labels=["0", "1"], prune_layers=[])).eval()
    enc = _batch(folder, pairs)
    with torch.no_grad():
        want = AutoModel.from_pretrained(str(folder)).eval()(**enc).last_hidden_state
        state = model.embed(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
        for i in range(3):
            state, _ = model.layer_step(i, state)
    real = enc["attention_mask"].bool()
    assert torch.allclose(state.hidden[real], want[real], atol=1e-5)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_saved_weight_names_are_the_familys(folders, family):
    model = from_backbone(folders[family, False], MpeeConfig.build(num_layers=3, labels=["0", "1"]))
    prefix = REGISTRY[family].prefix
    names = [k for k in model.state_dict() if not k.startswith(("exits.", "teacher."))]
    assert names and all(k.startswith(prefix + ".") for k in names)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_users_classifier_is_the_last_exit(folders, family):
    """--from-classifier: at full depth without pruning the model's answer is the classifier's logits (lam_last 1),
    on a padded batch and one text at a time (the device's path)."""
    folder = folders[family, True]
    classifier = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    mpee = MpeeConfig.build(num_layers=3, labels=["neg", "pos"], lam_last=1.0)
    model = from_classifier(folder, mpee).eval()
    enc = _batch(folder, pairs=True)
    with torch.no_grad():
        want = classifier(**enc).logits
        got = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), keep_ratio=1.0).memories[:, -1]
    assert torch.allclose(got, want, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(str(folder))
    for text in TEXTS:
        one = tok(text, return_tensors="pt")
        pred = model.predict(one["input_ids"], one.get("token_type_ids"), policy=ExitPolicy("entropy", 0.0, 2),
                             keep_ratio=1.0)
        probs = classifier(**one).logits.softmax(-1)[0].detach().numpy()
        assert pred.exit_layer == 3 and abs(pred.probs - probs).max() < 1e-5


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_a_frozen_backbone_trains_only_the_exits(folders, family):
    """freeze_backbone: after optimizer steps the encoder and the last head are bit for bit the classifier's, and
    they stay in eval mode in training mode (no dropout); the other exits moved."""
    from mpee_export.training.loop import TrainArgs, make_optimizer
    folder = folders[family, True]
    model = from_classifier(folder, MpeeConfig.build(num_layers=3, labels=["neg", "pos"], lam_last=1.0))
    model.freeze_backbone()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(model, TrainArgs(data=None, backbone=folder, out=folder, mpee=model.mpee, lr=1e-2))
    model.train()
    assert not model.backbone.training and not model.exits[-1].training and model.exits[0].training
    enc = _batch(folder, pairs=False)
    for _ in range(3):
        opt.zero_grad()
        out = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
        model.loss(out, torch.tensor([1, 0, 1])).backward()
        opt.step()
    after = model.state_dict()
    frozen = [k for k in after if k.startswith((REGISTRY[family].prefix + ".", "exits.2."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["exits.0.classifier.weight"], after["exits.0.classifier.weight"])


@pytest.mark.parametrize("family", ["mpnet", "roberta"])
def test_pruned_rows_give_their_batch_one_answer(folders, family):
    """With pruning (keep ratio 0.5 after layers 0 and 1) each row of a padded batch gets the answer it gets alone:
    exit layer, label, tokens per layer, probabilities; for MPNet the relative position bias follows each kept
    token's original position through the pruning (`LayerState.positions`)."""
    folder = folders[family, False]
    mpee = MpeeConfig.build(num_layers=3, labels=["0", "1"], prune_layers=[0, 1], keep_ratio=0.5)
    model = from_backbone(folder, mpee).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    policy = ExitPolicy("entropy", 0.69, 2)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    rows = model.predict_batch(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), policy=policy)
    for text, row in zip(TEXTS, rows):
        one = tok(text, return_tensors="pt")
        alone = model.predict(one["input_ids"], one.get("token_type_ids"), policy=policy)
        assert (row.exit_layer, row.label, row.attn_lens, row.ffn_lens) == (
            alone.exit_layer, alone.label, alone.attn_lens, alone.ffn_lens)
        assert abs(row.probs - alone.probs).max() < 1e-5


def test_pruning_keeps_each_tokens_position():
    """prune_tokens moves positions with their tokens: kept ones keep theirs, the fused token takes the position of
    the highest-scored dropped token; padded and unpadded paths agree."""
    from mpee_export.model.modeling import LayerState, prune_tokens
    hidden = torch.arange(6, dtype=torch.float32)[None, :, None].expand(1, 6, 2).clone()   # token i holds i
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.15, 0.05]])                                    # tokens 1..5
    positions = torch.arange(6)[None]
    one = prune_tokens(LayerState(hidden, None, scores, None, positions), 0.4)
    padded = prune_tokens(LayerState(hidden, torch.ones(1, 6), scores, None, positions), 0.4)
    # keep ceil(0.4 * 5) = 2: tokens 2 and 3 by score; then the fused token, at token 4's position (score 0.15)
    assert one.positions.tolist() == [[0, 2, 3, 4]] == padded.positions.tolist()
    assert one.hidden[0, :3, 0].tolist() == [0.0, 2.0, 3.0]


def test_mpnet_position_bias_of_any_positions_is_transformers(folders):
    """The distance table gives, for positions as pruning leaves them (gaps, up to the last position), the bias
    transformers' bucketing gives: every distance from -(P - 1) to P - 1 is looked up."""
    from mpee_export.model.modeling import LayerState
    model = from_backbone(folders["mpnet", False], MpeeConfig.build(num_layers=3, labels=["0", "1"]))
    encoder, last = model.backbone.encoder, model.backbone.config.max_position_embeddings - 1
    positions = torch.tensor([[0, 1, 5, 17, last // 2, last - 1, last], [last, last // 3, 9, 3, 2, 1, 0]])
    got = model.family.attention_bias(model.backbone, 0, LayerState(None, None, positions=positions))
    relative = positions[:, None, :] - positions[:, :, None]
    buckets = encoder.relative_position_bucket(relative, num_buckets=model.backbone.config.relative_attention_num_buckets)
    want = encoder.relative_attention_bias(buckets).permute(0, 3, 1, 2)
    assert got.shape == want.shape and torch.equal(got, want)


def test_from_classifier_refuses_a_bare_encoder(folders):
    with pytest.raises(MpeeExportError, match="not a fine-tuned BertForSequenceClassification"):
        from_classifier(folders["bert", False], MpeeConfig.build(num_layers=3, labels=["0", "1"], lam_last=1.0))


def test_an_unsupported_model_type_is_one_error_naming_the_supported(tmp_path):
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(MpeeExportError, match="'gpt2' model; MPEE supports bert, roberta, xlm-roberta, electra, "
                                              "distilbert"):
        load_backbone_config(folder)
    click_error(train, ["--task", "sst2", "--data", str(tmp_path), "--backbone", str(folder), "--out",
                        str(tmp_path / "o")], "MPEE supports bert, roberta")


def test_train_refuses_freeze_without_a_classifier_and_both_sources(folders, tmp_path):
    common = ["--task", "sst2", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    click_error(train, common + ["--freeze-backbone"], "give --from-classifier")
    click_error(train, common + ["--backbone", str(folders["bert", False]), "--from-classifier",
                                 str(folders["bert", True])], "not both")
    click_error(train, common + ["--from-classifier", str(tmp_path / "missing")], "classifier folder not found")


def test_the_classifiers_class_order(folders, tmp_path):
    """Class i of the model is the classifier's class i: transformers' default names stand for the task's order;
    a task on the user's files takes the classifier's order; a GLUE task in another order, or other names,
    are refused."""
    folder = folders["bert", True]                      # id2label {0: neg, 1: pos}
    own = Task("reviews", None, "text", None, "label", ("pos", "neg"), "accuracy")
    assert classifier_task(own, folder).labels == ("neg", "pos")
    assert classifier_task(replace(own, labels=("neg", "pos")), folder).labels == ("neg", "pos")
    with pytest.raises(MpeeExportError, match="set the classifier's id2label"):
        classifier_task(get_task("sst2"), folder)
    default = tmp_path / "default"
    config = json.loads((folder / "config.json").read_text())
    default.mkdir()
    (default / "config.json").write_text(json.dumps(config | {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}))
    assert classifier_task(get_task("sst2"), default).labels == ("0", "1")
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "config.json").write_text(json.dumps(config | {"id2label": {"0": "1", "1": "0"}}))
    with pytest.raises(MpeeExportError, match="class i must be the task's label i"):
        classifier_task(get_task("sst2"), swapped)
