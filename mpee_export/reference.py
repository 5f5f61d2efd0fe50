"""The baseline our users would deploy without MPEE: the same fine-tuned BERT as an ordinary
`BertForSequenceClassification` (all layers, no pruning, the last exit head as its pooler + classifier),
saved as a Hugging Face folder and exported the ordinary way with optimum.

    OUT/hf/          BertForSequenceClassification + tokenizer (for the PyTorch eager baseline)
    OUT/model.onnx   optimum's export of it, run by onnxruntime (the speed-up reference)
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from transformers import BertForSequenceClassification

from .errors import MpeeExportError
from .modeling import MpeeModel


def to_hf_classifier(model: MpeeModel) -> BertForSequenceClassification:
    """The MPEE backbone with exit L as an ordinary classification head (prediction = z_L, no memory)."""
    config = model.config
    hf = BertForSequenceClassification(config)
    hf.bert.embeddings.load_state_dict(model.bert.embeddings.state_dict())
    hf.bert.encoder.load_state_dict(model.bert.encoder.state_dict())
    last = model.exits[-1]
    hf.bert.pooler.dense.load_state_dict(last.pooler.state_dict())
    hf.classifier.load_state_dict(last.classifier.state_dict())
    return hf.eval()


def export_reference(model: MpeeModel, tokenizer, out: Path, *, opset: int = 17) -> Path:
    """Write OUT/hf and OUT/model.onnx (optimum, task text-classification); return the ONNX path."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError:
        raise MpeeExportError("the reference export needs optimum: pip install 'optimum-onnx[onnxruntime]'") from None
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise MpeeExportError(f"{out} is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        hf = to_hf_classifier(model)
        hf.save_pretrained(str(tmp / "hf"))
        tokenizer.save_pretrained(str(tmp / "hf"))
        with torch.no_grad():
            main_export(str(tmp / "hf"), output=str(tmp / "onnx"), task="text-classification", opset=opset,
                        device="cpu", no_post_process=True)
        shutil.move(str(tmp / "onnx" / "model.onnx"), str(tmp / "model.onnx"))
        shutil.rmtree(tmp / "onnx")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "model.onnx"
