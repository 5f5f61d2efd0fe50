"""A tiny stand-in for `mpee-export reference`'s full-model graph (needs onnx): the benchmark and server tests
feed it as they feed model_fused.onnx (input_ids, attention_mask, token_type_ids -> logits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

HIDDEN = 8


def bag_weights(vocab: int, seed: int) -> dict[str, np.ndarray]:
    """Word and type embeddings (HIDDEN wide) and a 2-class head."""
    rng = np.random.default_rng(seed)
    return {"words": rng.normal(size=(vocab, HIDDEN)).astype(np.float32),
            "types": rng.normal(size=(2, HIDDEN)).astype(np.float32),
            "head": rng.normal(size=(HIDDEN, 2)).astype(np.float32)}


def write_bag_model(path: Path, weights: dict[str, np.ndarray]) -> None:
    """logits (batch, 2) = sum over unmasked tokens of (word + type embedding) @ head: padding-invariant, so a
    padded batch must give each row its unpadded answer (`bag_labels`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    inits = [numpy_helper.from_array(w, n) for n, w in weights.items()]
    inits += [numpy_helper.from_array(np.asarray([a], np.int64), f"ax{a}") for a in (1, 2)]
    nodes = [helper.make_node("Gather", ["words", "input_ids"], ["w"]),
             helper.make_node("Gather", ["types", "token_type_ids"], ["t"]),
             helper.make_node("Add", ["w", "t"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "ax2"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["x"]),
             helper.make_node("ReduceSum", ["x", "ax1"], ["s"], keepdims=0),
             helper.make_node("MatMul", ["s", "head"], ["logits"])]
    out = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])]
    model = helper.make_model(helper.make_graph(nodes, "bag", inputs, out, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
