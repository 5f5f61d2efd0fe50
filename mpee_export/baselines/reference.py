"""The baselines our users would deploy without MPEE: the same fine-tuned BERT as an ordinary
`BertForSequenceClassification` (all layers, no pruning, the last exit head as its pooler + classifier),
exported the ordinary way with optimum, then fused and quantized the way a user tuning for CPU would.
The folder's file names and record are the runtime's contract (mpee_runtime.bundle.reference):

    OUT/hf/                    BertForSequenceClassification + tokenizer (the PyTorch eager baseline)
    OUT/model.onnx             optimum's plain export (fp32), run by onnxruntime
    OUT/model_fused.onnx       model.onnx after onnxruntime's offline transformer optimizer
                               (`onnxruntime.transformers.optimizer.optimize_model`, model_type bert, opt_level 0):
                               Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization fused (fp32);
                               an attention it cannot match (MPNet's, with its relative position bias) is fused by
                               ours (export/optimize.py) into MultiHeadAttention with the bias as attention_bias.
                               onnxruntime's session-level optimizer does not fuse attention, so without this
                               file the fp32 baseline would be slower than what users deploy.
    OUT/model_fused_int8.onnx  model_fused.onnx quantized to dynamic int8 with optimum's recipe for this CPU
                               (`AutoQuantizationConfig.<recipe>(is_static=False)` + `ORTQuantizer`)
    OUT/reference.json         recipe and quantization settings, fused node counts, environment, files + sha256

The fused graph carries the tensor types of onnxruntime's symbolic shape inference (onnx's own inference
cannot type the com.microsoft ops, and optimum's quantizer then stops with "Unable to find data type").
Should optimum's quantizer still fail, `onnxruntime.quantization.quantize_dynamic` runs with the same settings
plus `DefaultTensorType` FLOAT, and reference.json says so.

A model with mean-pooled exits (`exit_pooling: mean`) has no BertForSequenceClassification form: its
reference is what a sentence-transformers user deploys, the encoder exported by optimum
(feature-extraction) with exit L's head on the mean of the real tokens appended to the graph.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import metadata
from pathlib import Path

import torch
from transformers import PreTrainedModel

from mpee_runtime.bench.env import environment
from mpee_runtime.bundle.contract import OPSET
from mpee_runtime.bundle.integrity import sha256_of
from mpee_runtime.bundle.reference import (
    FUSED,
    FUSED_INT8,
    PLAIN,
    REFERENCE_HF,
    ReferenceRecord,
)
from mpee_runtime.files import AtomicFolder

from ..errors import MpeeExportError
from ..export.recipe import config_settings, quantization_config, quantization_recipe
from ..model.modeling import MpeeModel

# Fused operators counted in the record, by kind (the optimizer picks one of each kind's ops).
FUSED_KINDS = {"attention": ("Attention", "MultiHeadAttention"),
               "skip_layer_norm": ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"),
               "gelu": ("BiasGelu", "FastGelu", "Gelu", "GemmFastGelu"),
               "embed_layer_norm": ("EmbedLayerNormalization",)}


# What the third-party export prints that a user of `mpee-export reference` cannot act on, each checked
# harmless, silenced by its text (and its logger or warning category) while the export runs; everything else
# still shows.
KNOWN_HARMLESS_LOGS = {
    # transformers, when optimum's export reads BertConfig.torch_dtype (renamed dtype); nothing of ours sets it.
    "transformers.configuration_utils": r"^`torch_dtype` is deprecated! Use `dtype` instead!$",
    # optimum recommends opset 18 for BERT (and the other families); the reference is exported at the bundle's opset (17 by default,
    # --opset otherwise) so that the two are compared at one opset, and gets every fusion at 17
    # (`fuse` records and checks them).
    "optimum.exporters.onnx.convert":
        r"^Opset \d+ is lower than the recommended minimum opset \(\d+\) to export [\w-]+\.",
    # optimum's feature-extraction export (a mean-pooled reference) loads the bare encoder with a pooler the saved
    # classifier never had (MPNet: its pooler.dense); the graph's output is last_hidden_state, so the fresh
    # pooler is pruned from it. Only when the pooler is all that is missing.
    "transformers.modeling_utils":
        r"^Some weights of \w+Model were not initialized from the model checkpoint at .* and are newly "
        r"initialized: \['pooler\.dense\.bias', 'pooler\.dense\.weight'\]",
}
# transformers' attention-mask helper builds torch.tensor(1.0) during tracing: a constant, which it is.
# Each: (category, message, the module that warns: "" for any).
KNOWN_HARMLESS_WARNINGS = (
    (torch.jit.TracerWarning, r"torch\.tensor results are registered as constants in the trace", ""),
    # torch's F.embedding checks padding_idx against the table's size, which the tracer sees as a tensor
    # (RoBERTa / XLM-R: their embeddings have a padding_idx); the check passes and leaves nothing in the graph.
    # Only from torch.nn.functional: the same warning elsewhere may mean a wrong trace, and still shows.
    (torch.jit.TracerWarning, r"Converting a tensor to a Python boolean might cause the trace to be incorrect",
     r"torch\.nn\.functional"),
)


class _DropMessages(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


@contextmanager
def known_harmless_messages_silenced() -> Iterator[None]:
    """Within the block: the KNOWN_HARMLESS_LOGS records dropped at their loggers, the KNOWN_HARMLESS_WARNINGS
    ignored by category and message; restored afterwards."""
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        for category, message, module in KNOWN_HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        for name, pattern in KNOWN_HARMLESS_LOGS.items():
            logger, drop = logging.getLogger(name), _DropMessages(pattern)
            logger.addFilter(drop)
            stack.callback(logger.removeFilter, drop)
        yield


def to_hf_classifier(model: MpeeModel) -> PreTrainedModel:
    """The MPEE backbone with exit L as an ordinary classification head of its family (prediction = z_L, no
    memory): a BertForSequenceClassification, RobertaForSequenceClassification, ... For a model built on the
    user's classifier with a frozen backbone, that classifier itself."""
    return model.family.to_classifier(model.config, model.backbone, model.exits[-1].as_classifier_head())


# The exit head's activation as an ONNX operator, for the mean-pooled reference's appended head.
HEAD_OPS = {"tanh": "Tanh", "relu": "Relu"}


def append_mean_pooled_head(path: Path, head, activation: str = "tanh") -> None:
    """Append exit L's head on the mean of the real tokens to an encoder graph whose output is
    last_hidden_state (1, T, d): the graph's only output becomes `logits` (1, C)."""
    if activation not in HEAD_OPS:
        raise MpeeExportError(f"a mean-pooled reference with a {activation} head is not supported "
                              f"(supported: {', '.join(HEAD_OPS)})")
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    proto = onnx.load(str(path))
    g = proto.graph
    hidden = next(o.name for o in g.output if o.name == "last_hidden_state")
    weights = {"head_w1": head.pooler.weight.detach().numpy().T, "head_b1": head.pooler.bias.detach().numpy(),
               "head_w2": head.classifier.weight.detach().numpy().T, "head_b2": head.classifier.bias.detach().numpy(),
               "head_axis1": np.array([1], dtype=np.int64), "head_axis2": np.array([2], dtype=np.int64)}
    g.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in weights.items())
    g.node.extend([
        helper.make_node("Cast", ["attention_mask"], ["head_mask"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["head_mask", "head_axis2"], ["head_mask3"]),
        helper.make_node("Mul", [hidden, "head_mask3"], ["head_masked"]),
        helper.make_node("ReduceSum", ["head_masked", "head_axis1"], ["head_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["head_mask", "head_axis1"], ["head_count"], keepdims=1),
        helper.make_node("Div", ["head_sum", "head_count"], ["head_pooled"]),
        helper.make_node("MatMul", ["head_pooled", "head_w1"], ["head_h1"]),
        helper.make_node("Add", ["head_h1", "head_b1"], ["head_h2"]),
        helper.make_node(HEAD_OPS[activation], ["head_h2"], ["head_h3"]),
        helper.make_node("MatMul", ["head_h3", "head_w2"], ["head_h4"]),
        helper.make_node("Add", ["head_h4", "head_b2"], ["logits"]),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch_size", len(weights["head_b2"])]))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


# ---------------------------------------------------------------- graphs
def op_counts(path: Path) -> Counter:
    import onnx
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def fused_counts(counts: Counter) -> dict:
    """Fused node counts by kind (attention, skip_layer_norm, gelu, embed_layer_norm), plus the node total."""
    out = {kind: sum(counts[op] for op in ops) for kind, ops in FUSED_KINDS.items()}
    return out | {"nodes": sum(counts.values())}


def fuse(plain: Path, dst: Path, *, num_heads: int, hidden_size: int, num_layers: int,
         model_type: str = "bert") -> dict:
    """Write `dst` = `plain` after onnxruntime's offline transformer fusions for `model_type` (the family's
    `ort_model_type`) and, for the attentions those leave, ours (`export.optimize.fuse_attention`); return the
    record of what fused."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    from ..export.optimize import fuse_attention
    optimized = optimize_model(str(plain), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                               opt_level=0, use_gpu=False)
    # What onnxruntime's optimizer leaves unfused, our attention fusion takes (MPNet: its optimizer does not
    # match an attention with a relative position bias); a no-op where every attention is already fused.
    ours = fuse_attention(optimized, num_heads)
    if ours:
        optimized.prune_graph()
        optimized.topological_sort()
    optimized.save_model_to_file(str(dst))   # adds the com.microsoft opset import the fused ops need
    typed = True
    try:   # type every tensor (onnx's own inference stops at the com.microsoft ops) for the quantizer
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
        onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(dst)), auto_merge=True), str(dst))
    except Exception:  # noqa: BLE001 -- symbolic inference raises bare Exceptions; the quantizer falls back then
        typed = False
    counts = fused_counts(op_counts(dst))
    expected = {"attention": num_layers, "skip_layer_norm": 2 * num_layers, "gelu": num_layers}
    missing = {k: f"{counts[k]}/{n}" for k, n in expected.items() if counts[k] < n}
    record = {"optimizer": "onnxruntime.transformers.optimizer.optimize_model", "model_type": model_type,
              "num_heads": num_heads, "hidden_size": hidden_size, "opt_level": 0,
              "fused_nodes": counts, "plain_nodes": sum(op_counts(plain).values()), "attention_fused_by_mpee": ours,
              "expected_per_model": expected, "fully_fused": not missing, "typed_value_info": typed}
    if missing:
        record["warning"] = ("the offline optimizer did not fuse every layer (" +
                             ", ".join(f"{k} {v}" for k, v in missing.items()) +
                             "): the fused baseline is slower than a fully fused one would be")
    return record


def _optimum_quantize(src: Path, dst: Path, qconfig, hf_config, work: Path) -> None:
    from optimum.onnxruntime import ORTQuantizer
    quantizer = ORTQuantizer(src, config=hf_config)
    quantizer.quantize(qconfig, work, file_suffix="quantized")
    shutil.move(str(work / f"{src.stem}_quantized.onnx"), str(dst))


def _ort_quantize(src: Path, dst: Path, qconfig) -> dict:
    """quantize_dynamic with the settings optimum's quantizer passes to onnxruntime for `qconfig`."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic
    extra = {"WeightSymmetric": qconfig.weights_symmetric, "ActivationSymmetric": qconfig.activations_symmetric,
             "ForceSymmetric": qconfig.activations_symmetric and qconfig.weights_symmetric,
             "EnableSubgraph": False,
             "MatMulConstBOnly": False,                     # optimum does not set it; quantize_dynamic would
             "DefaultTensorType": onnx.TensorProto.FLOAT}   # types of the fused ops' outputs
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(qconfig.operators_to_quantize),
                     per_channel=qconfig.per_channel, reduce_range=qconfig.reduce_range,
                     weight_type=qconfig.weights_dtype, extra_options=extra)
    return {k: v for k, v in extra.items() if k != "DefaultTensorType"} | {"DefaultTensorType": "FLOAT"}


def quantize_fused(src: Path, dst: Path, *, recipe: str, per_channel: bool, hf_config, work: Path) -> dict:
    """Write `dst` = `src` in dynamic int8 with optimum's `recipe`; fall back to quantize_dynamic with the
    same settings when optimum's quantizer cannot process the graph. Return the record."""
    qconfig = quantization_config(recipe, per_channel)
    record = {"recipe": recipe, "call": f"AutoQuantizationConfig.{recipe}(is_static=False, per_channel={per_channel})",
              "settings": config_settings(qconfig)}
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)   # both quantizers log per-node chatter
    try:
        _optimum_quantize(src, dst, qconfig, hf_config, work)
        record["quantizer"] = "optimum.onnxruntime.ORTQuantizer"
    except Exception as e:  # noqa: BLE001 -- onnxruntime's quantizer raises RuntimeError/KeyError/...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        record["quantizer"] = "onnxruntime.quantization.quantize_dynamic"
        record["fallback_reason"] = f"ORTQuantizer failed: {first}"
        record["extra_options"] = _ort_quantize(src, dst, qconfig)
    finally:
        logging.getLogger().setLevel(level)
        shutil.rmtree(work, ignore_errors=True)
    record["quantized_nodes"] = {op: n for op, n in sorted(op_counts(dst).items())
                                 if op in ("QAttention", "MatMulInteger", "DynamicQuantizeMatMul",
                                           "QEmbedLayerNormalization", "DynamicQuantizeLinear")}
    return record


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def export_reference(model: MpeeModel, tokenizer, out: Path, *, opset: int = OPSET, per_channel: bool = False,
                     recipe: str | None = None) -> ReferenceRecord:
    """Write the reference folder of the contract (mpee_runtime.bundle.reference: REFERENCE_HF, FULL_MODELS'
    files, REFERENCE_RECORD), all or nothing; return the record. `recipe` overrides the choice from the
    CPU flags (`export.recipe`). The third-party messages a user cannot act on are silenced
    (`known_harmless_messages_silenced`)."""
    try:
        from optimum.exporters.onnx import main_export
        from optimum.onnxruntime import ORTQuantizer  # noqa: F401 -- checked here, used in quantize_fused
    except ImportError:
        raise MpeeExportError("the reference export needs optimum: pip install 'optimum-onnx[onnxruntime]'") from None
    if recipe is None:
        recipe, why = quantization_recipe()
    else:
        quantization_config(recipe, per_channel)   # refuse an unknown name before any work
        why = "given"
    with AtomicFolder(Path(out)) as tmp, known_harmless_messages_silenced():
        hf = to_hf_classifier(model)
        hf.save_pretrained(str(tmp / REFERENCE_HF))
        tokenizer.save_pretrained(str(tmp / REFERENCE_HF))
        # A [CLS]-pooled model is an ordinary BertForSequenceClassification. A mean-pooled one is what a
        # sentence-transformers user deploys: the encoder exported by optimum (feature-extraction) and the
        # mean-pooled head appended to that graph, which leaves the encoder's pattern for the optimizer.
        last_pooling = model.mpee.pooling_of(model.mpee.num_layers - 1)   # the full model's head is exit L's
        mean = last_pooling == "mean"
        with torch.no_grad():
            main_export(str(tmp / REFERENCE_HF), output=str(tmp / "onnx"), opset=opset, device="cpu", no_post_process=True,
                        task="feature-extraction" if mean else "text-classification")
        shutil.move(str(tmp / "onnx" / PLAIN), str(tmp / PLAIN))
        shutil.rmtree(tmp / "onnx")
        if mean:
            append_mean_pooled_head(tmp / PLAIN, model.exits[-1], model.family.head_activation)
        sizes = model.sizes
        fused = fuse(tmp / PLAIN, tmp / FUSED, num_heads=sizes.heads, hidden_size=sizes.hidden,
                     num_layers=sizes.layers, model_type=model.family.ort_model_type)
        quant = quantize_fused(tmp / FUSED, tmp / FUSED_INT8, recipe=recipe, per_channel=per_channel,
                               hf_config=hf.config, work=tmp / "quant")
        quant["recipe_reason"] = why
        files = {name: {"sha256": sha256_of(tmp / name), "bytes": (tmp / name).stat().st_size}
                 for name in (PLAIN, FUSED, FUSED_INT8)}
        record = ReferenceRecord(
            exit_pooling=last_pooling, opset=opset, fusion=fused, quantization=quant, files=files,
            warnings=[w for w in (fused.get("warning"),) if w],
            environment=environment() | {"tools": {"optimum": _version("optimum"), "onnx": _version("onnx"),
                                                    "exporter": "optimum main_export"}})
        record.dump(tmp)
    return record
