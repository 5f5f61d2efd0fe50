"""Build the tiny bundle the runtime tests use, plus PyTorch's answers for it (needs torch).

    python tests/runtime/make_bundle.py DIR     writes DIR/bundle and DIR/expected.json

CI builds it with the full install, then runs tests/runtime in a virtual environment without torch
(MPEE_TEST_BUNDLE=DIR), so the runtime is checked against PyTorch without importing it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TEXTS = [("the movie is great", None), ("a boring film", "it was bad"), ("very good acting and plot", None),
         ("it", "the plot is not fun , not very good , and the acting was awful !"),
         ("great great great fun fun film film plot acting very good !", None)]
SETTINGS = [(0.0, None), (0.0, 0.3), (0.6, None), (0.69, 1.0), (0.66, 0.5)]   # (threshold, keep ratio)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)] + [
    "the", "movie", "good", "bad", "great", "awful", "film", "is", "not", "fun", "boring", "##s", "##ing",
    "##ly", ".", ",", "!", "it", "and", "was", "very", "plot", "acting"]


def make_tiny_bundle(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertTokenizerFast

    from mpee_export.export.bundle import ExportOptions, export_bundle
    from mpee_export.model.config import MpeeConfig
    from mpee_export.model.modeling import MpeeModel
    from mpee_runtime.core.policy import ExitPolicy

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=24)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64)
    mpee = MpeeConfig.build(num_layers=3, labels=["entailment", "not_entailment"], task="rte",
                            prune_layers=[0, 1], keep_ratio=0.6,
                            max_length=24)
    model = MpeeModel(config, mpee).eval()
    for p in model.bert.encoder.parameters():
        if p.ndim == 2:
            p.data.normal_(0, 0.2)
    export_bundle(model, tok, folder / "bundle", ExportOptions(force=True), texts=TEXTS, log=lambda m: None)
    expected = []
    for text, pair in TEXTS:
        enc = tok(text, pair, return_tensors="pt", truncation=True, max_length=24)
        for threshold, ratio in SETTINGS:
            pred = model.predict(enc["input_ids"], enc["token_type_ids"], policy=ExitPolicy("entropy", threshold, 2),
                                 keep_ratio=ratio)
            expected.append({"text": text, "pair": pair, "threshold": threshold, "keep_ratio": ratio,
                             "label": mpee.labels[pred.label], "exit_layer": pred.exit_layer,
                             "probs": pred.probs.tolist(), "tokens_per_layer": pred.attn_lens})
    (folder / "expected.json").write_text(json.dumps(expected, indent=1))
    return folder / "bundle"


if __name__ == "__main__":
    make_tiny_bundle(Path(sys.argv[1]))
