"""Per-graph modules whose forward signatures are the bundle schema's: embeddings, one per layer, and
the whole chain as one graph (the single-graph reference for size and latency comparisons).

All run `MpeeModel.layer_step`, the same code as training and evaluation: the batch-1 graphs on one
unpadded sample (the pruning step's tensor-only path, so N and k stay dynamic in the ONNX graph), the batch
layer graphs on a right-padded batch described by each row's real length.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.onnx.operators import shape_as_tensor

from mpee_runtime.bundle import contract as S

from ..model.modeling import LayerState, MpeeModel, blended_outputs, first_positions


def exit_head_weights(module: nn.Module, head: nn.Module) -> list[str]:
    """The names in `module` (its ONNX export's initializer names) of the exit head `head`'s weight matrices:
    the head's products are the nodes that read them (`quantize.exit_head_nodes`). Matched by identity with
    `head.parameters()`, so the names follow the module structure whatever the attributes are called; weight
    matrices only, because the exporter may store an equal bias (zeros) under another parameter's name."""
    mine = {id(p) for p in head.parameters() if p.ndim == 2}
    return sorted(name for name, p in module.named_parameters() if id(p) in mine)


class EmbeddingsGraph(nn.Module):
    """The family's embeddings on the token tensors it reads (`Family.embedding_inputs`), any batch: rows padded
    with the pad id (RoBERTa's positions skip it), so no mask is needed."""

    def __init__(self, model: MpeeModel) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(model.family.embedding_inputs)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs))
        return self.model.family.embed(self.model.backbone, named[S.INPUT_IDS], named.get(S.TOKEN_TYPE_IDS), None)


def start_positions(model: MpeeModel, named: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The tokens' positions a layer graph starts from: its `positions` input, or at layer 0 of a relative-position
    family `first_positions`; None for the other families."""
    if not model.family.relative_positions:
        return None
    return named[S.POSITIONS] if S.POSITIONS in named else first_positions(named[S.HIDDEN][..., 0])


class LayerGraph(nn.Module):
    """Layer i with its pruning step (if scheduled), score memory, exit head and classifier memory; in a
    relative-position family also the tokens' positions, in and out (`contract.layer_outputs`)."""

    def __init__(self, model: MpeeModel, i: int) -> None:
        super().__init__()
        self.model, self.i = model, i
        self.prunes = i in model.mpee.prune_layers
        self.positions = model.family.relative_positions
        self.input_names = S.layer_inputs(i, self.prunes, self.positions)
        self.output_names = S.layer_outputs(self.positions)

    def exit_head_weights(self) -> list[str]:
        """The initializer names of this layer's exit head weights in the exported graph."""
        return exit_head_weights(self, self.model.exits[self.i])

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs))
        state = LayerState(named[S.HIDDEN], None, named.get(S.SCORES), named.get(S.MEMORY),
                           start_positions(self.model, named))
        state, _ = self.model.layer_step(self.i, state, named.get(S.KEEP_RATIO))
        probs, entropy = blended_outputs(state.memory)
        scores = state.scores
        if scores is None:   # no pruning layer reads a score (MpeeModel.scores_needed): the output is a filler
            scores = torch.zeros_like(state.hidden[:, 1:, 0])
        out = (state.hidden, scores, state.memory, probs, entropy)
        return out + (state.positions,) if self.positions else out


class BatchLayerGraph(nn.Module):
    """Layer i on a right-padded batch: `LayerGraph`'s inputs and outputs with each row's real length
    (`contract.batch_layer_inputs`), in and out; a row's answer is the one it gets alone."""

    def __init__(self, model: MpeeModel, i: int) -> None:
        super().__init__()
        self.model, self.i = model, i
        self.prunes = i in model.mpee.prune_layers
        self.positions = model.family.relative_positions
        self.input_names = S.batch_layer_inputs(i, self.prunes, self.positions)
        self.output_names = S.batch_layer_outputs(self.positions)

    def exit_head_weights(self) -> list[str]:
        return exit_head_weights(self, self.model.exits[self.i])

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs))
        hidden, lengths = named[S.HIDDEN], named[S.LENGTHS]
        positions = torch.arange(shape_as_tensor(hidden)[1], device=hidden.device)
        mask = (positions[None] < lengths[:, None]).to(hidden.dtype)
        state = LayerState(hidden, mask, named.get(S.SCORES), named.get(S.MEMORY), start_positions(self.model, named))
        state, _ = self.model.layer_step(self.i, state, named.get(S.KEEP_RATIO))
        probs, entropy = blended_outputs(state.memory)
        scores = state.scores
        if scores is None:   # as in LayerGraph: a filler
            scores = torch.zeros_like(state.hidden[:, 1:, 0])
        out = (state.hidden, scores, state.memory, probs, entropy, state.mask.sum(dim=1).to(torch.long))
        return out + (state.positions,) if self.positions else out


class ChainGraph(nn.Module):
    """Every layer in one graph, no early exit: outputs the probabilities after each layer (1, L, C)."""

    output_names = ("layer_probs",)

    def __init__(self, model: MpeeModel) -> None:
        super().__init__()
        self.model = model
        self.input_names = (*model.family.embedding_inputs, S.KEEP_RATIO)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs))
        keep_ratio = named[S.KEEP_RATIO]
        hidden = self.model.family.embed(self.model.backbone, named[S.INPUT_IDS], named.get(S.TOKEN_TYPE_IDS), None)
        state = LayerState(hidden, None, positions=start_positions(self.model, {S.HIDDEN: hidden}))
        probs = []
        for i in range(self.model.mpee.num_layers):
            state, _ = self.model.layer_step(i, state, keep_ratio)
            probs.append(blended_outputs(state.memory)[0])
        return torch.stack(probs, dim=1)
