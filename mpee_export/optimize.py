"""Optional graph optimisation of the layer graphs with onnxruntime's transformer fusions.

`onnxruntime.transformers.optimizer` fuses LayerNorm, GELU, SkipLayerNorm and (where the pattern
matches) attention. Our layer graphs read the attention probabilities for token scoring, so the
attention fusion cannot apply; whether the rest helps beyond what onnxruntime already does at session
creation is measured by benchmarks/bench_export.py (see the README). Off by default.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mpee_runtime import schema as S


def optimize_layers(folder: Path, entries: list[S.GraphEntry], *, num_heads: int, hidden: int
                    ) -> list[S.GraphEntry]:
    """Apply the offline transformer fusions to every layer graph in place; return the entries (the caller
    seals them: export.seal_graphs stamps and hashes the rewritten files)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    options = FusionOptions("bert")
    # Our graphs read the attention probabilities for token scoring, so attention cannot be fused;
    # trying to (the default) leaves a broken graph ("Graph is not a DAG").
    options.enable_attention = False
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    for e in entries:
        if e.layer is not None:
            path = folder / e.file
            optimized = optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden,
                                       optimization_options=options, opt_level=0)
            optimized.save_model_to_file(str(path))
    return entries
