"""The MPEE model on a Hugging Face encoder of any supported family (families/): exit heads with classifier
memory, token pruning with class-attention score memory and a fused token, the self-distillation teacher and the
training loss.

Everything follows docs/design.md section 2. Each layer is computed from its own sub-modules, as its family
names them (`Family.attention_parts`, `Family.feed_forward`), so that the attention probabilities (before
dropout) are available and the pruning step can sit between the attention block and the FFN. Batches are right-padded; every per-sample quantity (keep count,
ranking, fused token) is computed from the sample's own real length, so a sample gives the same result
alone or in a batch. Shapes: B batch, N current length (incl. [CLS] and a fused token), d hidden, C
classes, L layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.onnx.operators import shape_as_tensor
from transformers import PretrainedConfig
from transformers.activations import get_activation

from mpee_runtime.bundle.contract import TOKEN_TYPE_IDS
from mpee_runtime.core.flops import FlopsModel
from mpee_runtime.core.policy import BatchExitRule, ExitPolicy

from .config import MpeeConfig
from .families import AttentionParts, ClassifierHead, Family, family_of

# k = ceil(r * (N - 1) - KEEP_EPS): without the tolerance, float rounding decides the count
# (0.7 * 10 is 7.000000000000001 in float64 but 6.9999999 in float32).
KEEP_EPS = 1e-4


def keep_count(n_tokens: torch.Tensor, ratio: float | torch.Tensor) -> torch.Tensor:
    """Non-[CLS] tokens kept at a pruning layer for current real lengths `n_tokens` (incl. [CLS])."""
    others = n_tokens - 1
    k = torch.ceil(others.to(torch.float32) * ratio - KEEP_EPS).to(torch.long)
    return torch.minimum(k.clamp(min=1), others)


class ExitHead(nn.Module):
    """Pooling -> pooler (Linear d->d) -> activation -> dropout -> Linear d->C: the shape of the family's own
    classification head (BERT's pooler and classifier, RoBERTa's dense and out_proj with tanh, ELECTRA's with
    GELU, DistilBERT's pre_classifier with ReLU).

    Pooling "cls" reads position 0 (the paper's choice, right for NSP-pretrained BERTs). "mean" averages
    the current sequence's real tokens, each with weight 1: [CLS], the kept tokens and the fused token.
    Why weight 1 for all: (a) sentence-transformers' mean pooling, which mean-pooled backbones such as
    all-MiniLM-L6-v2 were trained with, averages every real token including [CLS] and [SEP], so before
    any pruning the head sees exactly the backbone's sentence embedding; (b) the fused token is already a
    sum of the dropped tokens weighted by their (unnormalised) score memories, not their average, so
    weighting it again by how many tokens it stands for would scale an already-summed vector; (c) it needs
    no per-token count carried from layer to layer, so the bundle's graph inputs stay the same.
    """

    def __init__(self, hidden: int, num_labels: int, pooling: str = "cls", activation: str = "tanh",
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.pooling = pooling
        self.pooler = nn.Linear(hidden, hidden)
        self.activation = get_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_labels)

    def as_classifier_head(self) -> ClassifierHead:
        return ClassifierHead(self.pooler, self.classifier)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # (B, N, d) -> (B, d)
        if self.pooling == "cls":
            return hidden[:, 0]
        if mask is None:                     # batch 1 without padding (the exported graphs)
            return hidden.mean(dim=1)
        return (hidden * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # -> (B, C)
        return self.classifier(self.dropout(self.activation(self.pooler(self.pool(hidden, mask)))))


class Teacher(nn.Module):
    """Weighted ensemble of the exits: t = sum_l eta_l m_l, eta = softmax_l(V^T tanh(W m_l + b))."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.pre = nn.Linear(num_labels, num_labels)   # W_eta, b_eta
        self.score = nn.Linear(num_labels, 1)          # V (its bias cancels in the softmax)

    def forward(self, memories: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, C)
        eta = self.score(torch.tanh(self.pre(memories))).softmax(dim=1)  # (B, L, 1)
        return (eta * memories).sum(dim=1)


@dataclass
class LayerState:
    """What flows from one layer to the next."""

    hidden: torch.Tensor                  # (B, N, d)
    mask: torch.Tensor | None             # (B, N) 1.0 for real tokens; None: batch 1 without padding
    scores: torch.Tensor | None = None    # (B, N-1) score memory of positions 1..N-1
    memory: torch.Tensor | None = None    # (B, C) classifier memory (logits)
    # (B, N) int64: each token's position in the input, for a family with a relative position bias (MPNet;
    # None for the others). Pruning keeps each kept token's own; the fused token takes the position of the
    # highest-scored token it replaces (docs/design.md 3.1).
    positions: torch.Tensor | None = None


@dataclass
class LayerStats:
    attn_len: torch.Tensor   # (B,) real tokens the attention ran on
    ffn_len: torch.Tensor    # (B,) real tokens the FFN ran on


@dataclass
class MpeeOutput:
    memories: torch.Tensor   # (B, L, C) classifier-memory logits after each layer
    attn_lens: torch.Tensor  # (B, L)
    ffn_lens: torch.Tensor   # (B, L)


@dataclass
class MpeePrediction:
    label: int
    probs: np.ndarray        # (C,)
    exit_layer: int          # 1-based
    attn_lens: list[int]     # one per executed layer
    ffn_lens: list[int]


def attention_block(parts: AttentionParts, hidden: torch.Tensor, mask: torch.Tensor | None, scoring: str | None,
                    extra_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-attention, output projection, residual and LayerNorm of a layer, and this layer's token scores.

    Returns the block output (B, N, d) and the scores of positions 1..N-1 (B, N-1). The scores of "cls"
    and "mean" are computed on the side from the queries and keys (one query row per head, O(N d)),
    not read from the attention probabilities, so that the main attention is the standard pattern an
    optimizer can fuse; "all" needs the whole probability matrix. `scoring` None: no scores (None).
    `extra_bias`: the family's additive attention bias (`Family.attention_bias`), None for most.
    """
    b, n, _ = hidden.shape
    heads = parts.heads
    head_dim = parts.query.out_features // heads

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, N, d) -> (B, H, N, dh)
        return x.view(b, n, heads, head_dim).transpose(1, 2)

    q, k, v = split(parts.query(hidden)), split(parts.key(hidden)), split(parts.value(hidden))
    bias = None if mask is None else ((1.0 - mask) * torch.finfo(hidden.dtype).min)[:, None, None, :]
    logits = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    if extra_bias is not None:
        logits = logits + extra_bias
    probs = (logits if bias is None else logits + bias).softmax(dim=-1)
    context = (parts.dropout(probs) @ v).transpose(1, 2).reshape(b, n, heads * head_dim)
    out = parts.output(context, hidden)
    if scoring is None:
        return out, None
    if scoring == "all":
        return out, received_attention(probs, mask)
    return out, query_scores(q, k, bias, mask, scoring, extra_bias)


def query_scores(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None,
                 scoring: str, extra_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query per head over the keys, averaged over heads: (B, H, N, dh) -> (B, N-1).

    "cls": the [CLS] query (the [CLS] row of the attention probabilities, the paper's class attention);
    "mean": the mean of the real tokens' queries (the query of the mean-pooled input, as W_q is linear).
    """
    if scoring == "cls":
        query = q[:, :, :1]                                                       # (B, H, 1, dh)
    elif mask is None:
        query = q.mean(dim=2, keepdim=True)
    else:
        query = (q * mask[:, None, :, None]).sum(dim=2, keepdim=True) / mask.sum(dim=1)[:, None, None, None]
    # Token-major (B, N, H, dh): in the exported graph the two transposes cancel against the head split's, so
    # the score reads Q's row and K as the projections give them (no copy of K per head) and needs no
    # Unsqueeze / Gather around the softmax. An elementwise product and sum, not a matmul: like the
    # fused-token sum, these d*N multiply-adds per layer (under 0.1% of a layer's) stay out of the FLOPs
    # count, which keeps the paper's formula.
    logits = (query.transpose(1, 2) * k.transpose(1, 2)).sum(dim=-1) / math.sqrt(q.shape[-1])   # (B, N, H)
    if extra_bias is not None:   # the family's attention bias on the same row ("cls"), or its mean over the rows
        if scoring == "cls":
            row = extra_bias[:, :, 0]
        elif mask is None:
            row = extra_bias.mean(dim=2)
        else:
            row = (extra_bias * mask[:, None, :, None]).sum(dim=2) / mask.sum(dim=1)[:, None, None]
        logits = logits + row.transpose(1, 2)
    if bias is not None:
        logits = logits + bias[:, 0, 0, :, None]
    return logits.softmax(dim=1)[:, 1:].mean(dim=-1)


def received_attention(probs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """"all": attention received by positions 1..N-1, averaged over heads and real query rows."""
    if mask is None:
        return probs.mean(dim=(1, 2))[:, 1:]
    received = (probs.mean(dim=1) * mask[:, :, None]).sum(dim=1)  # (B, N)
    return received[:, 1:] / mask.sum(dim=1, keepdim=True)


def prune_tokens(state: LayerState, ratio: float | torch.Tensor, *, fuse: bool = True, select: str = "top"
                 ) -> LayerState:
    """Keep [CLS] and the top-k tokens by score memory; fuse the rest into one token (docs/design.md 2.2).

    Every sample keeps k = ceil(r (n - 1)) of its own n real tokens. Right-padded in and out: each row's real
    tokens are a prefix, [CLS], its kept tokens in descending score order, then its fused token (present only
    when it dropped something), then padding up to the batch's longest row; so a row's tokens are those it has
    alone, in the same order. The fused token is sum_i s_i h_i over dropped tokens (weights unnormalised, as
    in the paper) and its score memory is the mean of theirs. Tensor ops only (no length read as a Python
    number), so that the batch graphs' export keeps the batch, the length and every k dynamic.
    """
    if state.mask is None:
        return _prune_unpadded(state, ratio, fuse=fuse, select=select)
    hidden, mask, scores = state.hidden, state.mask, state.scores
    valid = mask[:, 1:] > 0                                   # (B, M), M = N - 1
    lengths = mask.sum(dim=1).to(torch.long)                  # (B,) real tokens incl. [CLS]
    others = lengths - 1
    k = keep_count(lengths, ratio)                            # (B,)
    rank_by = scores if select == "top" else -scores
    rank_by = rank_by.masked_fill(~valid, float("-inf"))      # padding ranks last, never kept
    width = shape_as_tensor(scores)[1]
    order = torch.topk(rank_by, width, dim=1).indices         # (B, M): a full sort, real tokens first
    slot = torch.arange(width, device=hidden.device)[None]    # (1, M)
    sorted_h = hidden[:, 1:].gather(1, order[..., None].expand(-1, -1, hidden.shape[-1]))
    sorted_s = scores.gather(1, order)
    kept = (slot < k[:, None]).to(hidden.dtype)               # (B, M)
    body_h, body_s = sorted_h * kept[..., None], sorted_s * kept
    new_lengths = k + 1
    has_fused = torch.zeros_like(k, dtype=torch.bool)
    if fuse:
        dropped = ((slot >= k[:, None]) & (slot < others[:, None])).to(hidden.dtype)
        weights = sorted_s * dropped
        # Elementwise product and sum rather than a matmul: keeps the fusion out of the FLOPs count.
        fused = (weights[..., None] * sorted_h).sum(dim=1)                           # (B, d)
        n_dropped = others - k
        fused_score = weights.sum(dim=1) / n_dropped.clamp(min=1).to(hidden.dtype)
        has_fused = n_dropped > 0
        at_fused = ((slot == k[:, None]) & has_fused[:, None]).to(hidden.dtype)     # slot k: right after the kept
        body_h = body_h + at_fused[..., None] * fused[:, None]
        body_s = body_s + at_fused * fused_score[:, None]
        new_lengths = new_lengths + has_fused.to(torch.long)
    body = torch.arange(new_lengths.max() - 1, device=hidden.device)                # slots the longest row needs
    positions = None
    if state.positions is not None:   # kept tokens keep theirs; the fused one (slot k) the first dropped token's
        sorted_p = state.positions[:, 1:].gather(1, order)
        sorted_p = sorted_p * (slot < (k + has_fused.to(torch.long))[:, None]).to(sorted_p.dtype)
        positions = torch.cat([state.positions[:, :1], sorted_p.index_select(1, body)], dim=1)
    hidden = torch.cat([hidden[:, :1], body_h.index_select(1, body)], dim=1)
    new_mask = (torch.arange(new_lengths.max(), device=hidden.device)[None] < new_lengths[:, None]).to(mask.dtype)
    return LayerState(hidden, new_mask, body_s.index_select(1, body), state.memory, positions)


def _prune_unpadded(state: LayerState, ratio: float | torch.Tensor, *, fuse: bool, select: str) -> LayerState:
    """prune_tokens for one unpadded sample, in tensor ops only, so that ONNX export keeps N and k dynamic.

    Written for a small graph, because the exported pruning step runs at every pruning layer even when it
    keeps every token: rows are taken with 1-D index Gathers on the (N, d) matrix (no expanded index
    tensors), the fused token is one (1, n) x (n, d) product, and bottom selection is TopK's largest=0.
    """
    hidden, scores = state.hidden[0], state.scores[0]                          # (N, d), (N - 1,)
    others = shape_as_tensor(scores)[0]
    k = keep_count(others + 1, ratio)
    order = torch.topk(scores, others, largest=select == "top").indices        # full sort
    kept = torch.index_select(order, 0, torch.arange(k))
    body = hidden[1:]
    parts_h = [hidden[:1], torch.index_select(body, 0, kept)]
    parts_s = [torch.index_select(scores, 0, kept)]
    positions = None
    if state.positions is not None:   # in score order: kept ones first, then the first dropped (the fused token's)
        positions = torch.cat([state.positions[0, :1], torch.index_select(state.positions[0, 1:], 0, order)])
    if not fuse:
        if positions is not None:
            positions = torch.index_select(positions, 0, torch.arange(k + 1))[None]
        return LayerState(torch.cat(parts_h)[None], None, torch.cat(parts_s)[None], state.memory, positions)
    dropped = torch.index_select(order, 0, torch.arange(k, others))
    weights = torch.index_select(scores, 0, dropped)                            # (n_dropped,)
    # A (1, n) x (n, d) product, the fewest nodes; the FLOPs convention leaves the fusion uncounted (the
    # padded path, which FlopCounterMode checks, sums elementwise products instead).
    fused = weights[None] @ torch.index_select(body, 0, dropped)               # (1, d); zeros if none dropped
    n_dropped = others - k
    fused_score = weights.sum(0, keepdim=True) / torch.clamp(n_dropped, min=1).to(weights.dtype)
    # The fused token exists only when something was dropped: slice it away otherwise.
    n_new = k + torch.clamp(n_dropped, max=1)
    hidden = torch.index_select(torch.cat(parts_h + [fused]), 0, torch.arange(n_new + 1))
    scores = torch.index_select(torch.cat(parts_s + [fused_score]), 0, torch.arange(n_new))
    if positions is not None:
        positions = torch.index_select(positions, 0, torch.arange(n_new + 1))[None]
    return LayerState(hidden[None], None, scores[None], state.memory, positions)


class MpeeModel(nn.Module):
    """An encoder of a supported family with an exit head after every layer, token pruning and the distillation
    teacher. The encoder is held under its family's prefix (`bert`, `roberta`, ...: `backbone`), so the saved
    weight names are those of the family's own models."""

    def __init__(self, config: PretrainedConfig, mpee: MpeeConfig) -> None:
        super().__init__()
        self.family: Family = family_of(config)
        self.sizes = self.family.sizes(config)
        if mpee.num_layers != self.sizes.layers:
            raise ValueError(f"mpee.num_layers {mpee.num_layers} != the backbone's {self.sizes.layers} layers")
        self.config = config
        self.mpee = mpee
        self.add_module(self.family.prefix, self.family.build_backbone(config))
        self.exits = nn.ModuleList(ExitHead(self.sizes.hidden, mpee.num_labels, mpee.pooling_of(i),
                                            self.family.head_activation, self.family.head_dropout(config))
                                   for i in range(mpee.num_layers))
        self.teacher = Teacher(mpee.num_labels)
        for module in (*self.exits, self.teacher):
            module.apply(self._init_linear)
        self.frozen = False

    def _init_linear(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, self.family.initializer_range(self.config))
            module.bias.data.zero_()

    @property
    def backbone(self) -> nn.Module:
        """The family's encoder (embeddings and layers; no pooler: each exit head has its own)."""
        return getattr(self, self.family.prefix)

    @property
    def layers(self) -> nn.ModuleList:
        return self.family.layers(self.backbone)

    def freeze_backbone(self) -> None:
        """Train the exits only (--freeze-backbone): the encoder and the last exit head, which holds the user's
        classifier head, get no gradient and stay in eval mode (no dropout) whatever `train()` is called with,
        so they end bit for bit as they started."""
        self.frozen = True
        for p in (*self.backbone.parameters(), *self.exits[-1].parameters()):
            p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> MpeeModel:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
            self.exits[-1].eval()
        return self

    def lam_at(self, layer: int) -> float:
        """The classifier memory's weight on layer `layer`'s own logits: m = (1 - lam) m_prev + lam z."""
        # Without layer exits only the last head predicts, so there is nothing to blend.
        if not self.mpee.layer_exit:
            return 1.0
        if layer == self.mpee.num_layers - 1 and self.mpee.lam_last is not None:
            return self.mpee.lam_last
        return self.mpee.lam

    @property
    def flops_model(self) -> FlopsModel:
        s = self.sizes
        return FlopsModel(s.hidden, s.intermediate, self.mpee.num_labels, s.layers)

    def scores_needed(self, layer: int) -> bool:
        """Whether layer `layer` computes token scores: only a pruning layer at or after it reads the score
        memory, so the layers after the last pruning layer skip the score (its query row, softmax and memory
        blend; the saving is in benchmarks/results/fusion_log.md) and carry the memory through unchanged."""
        return any(p >= layer for p in self.mpee.prune_layers)

    def keep_ratio_at(self, layer: int, keep_ratio: float | None) -> float | None:
        """Keep ratio used at `layer` (None: no pruning); `keep_ratio` overrides the configured one."""
        # Read from the config each time: calibration may change its keep ratios after construction.
        if layer not in self.mpee.prune_layers:
            return None
        return self.mpee.keep_ratios[self.mpee.prune_layers.index(layer)] if keep_ratio is None else keep_ratio

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              token_type_ids: torch.Tensor | None = None) -> LayerState:
        """Right-padded (B, T) token ids to the first layer's state; token types are read only by the families
        whose embeddings take them (zeros when not given)."""
        if token_type_ids is None and TOKEN_TYPE_IDS in self.family.embedding_inputs:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.family.embed(self.backbone, input_ids, token_type_ids, attention_mask)
        positions = first_positions(input_ids) if self.family.relative_positions else None
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return LayerState(hidden, attention_mask.to(hidden.dtype), positions=positions)

    def layer_step(self, i: int, state: LayerState, keep_ratio: float | None = None
                   ) -> tuple[LayerState, LayerStats]:
        """Run layer i (0-based): attention, score memory, pruning, FFN, exit head, classifier memory."""
        layer = self.layers[i]
        attn_len = _lengths(state)
        scoring = self.mpee.scoring if self.scores_needed(i) else None
        attn_out, current = attention_block(self.family.attention_parts(layer), state.hidden, state.mask, scoring,
                                            self.family.attention_bias(self.backbone, i, state))
        beta = self.mpee.betas[i]
        if current is None:
            scores = state.scores
        else:
            scores = current if state.scores is None else (1 - beta) * state.scores + beta * current
        state = LayerState(attn_out, state.mask, scores, state.memory, state.positions)
        ratio = self.keep_ratio_at(i, keep_ratio)
        if ratio is not None:
            state = prune_tokens(state, ratio, fuse=self.mpee.fuse_token, select=self.mpee.prune_select)
        hidden = self.family.feed_forward(layer, state.hidden)
        logits = self.exits[i](hidden, state.mask)
        lam = self.lam_at(i)
        # lam 1 still reads the memory (0 * m + z = z exactly): the layer graph keeps the contract's memory input.
        memory = logits if state.memory is None else (1 - lam) * state.memory + lam * logits
        new = LayerState(hidden, state.mask, state.scores, memory, state.positions)
        return new, LayerStats(attn_len, _lengths(state))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, keep_ratio: float | None = None) -> MpeeOutput:
        """All layers, all exits (training and offline evaluation). Inputs (B, T) int64, right-padded."""
        state = self.embed(input_ids, attention_mask, token_type_ids)
        memories, attn_lens, ffn_lens = [], [], []
        for i in range(self.mpee.num_layers):
            state, stats = self.layer_step(i, state, keep_ratio)
            memories.append(state.memory)
            attn_lens.append(stats.attn_len)
            ffn_lens.append(stats.ffn_len)
        return MpeeOutput(torch.stack(memories, 1), torch.stack(attn_lens, 1).long(),
                          torch.stack(ffn_lens, 1).long())

    def loss(self, out: MpeeOutput, labels: torch.Tensor) -> torch.Tensor:
        """docs/design.md 2.3: sum_l CE(m_l) + w_kd sum_l tau^2 KL(softmax(t/tau) || softmax(m_l/tau)) + CE(t)."""
        mem = out.memories
        if not self.mpee.layer_exit:
            return F.cross_entropy(mem[:, -1], labels)
        loss = sum(F.cross_entropy(mem[:, i], labels) for i in range(mem.shape[1]))
        if self.mpee.self_distill:
            teacher = self.teacher(mem.detach())
            loss = loss + F.cross_entropy(teacher, labels)
            tau = self.mpee.kd_temperature
            target = (teacher.detach() / tau).softmax(dim=-1)
            kd = sum(F.kl_div((mem[:, i] / tau).log_softmax(-1), target, reduction="batchmean")
                     for i in range(mem.shape[1]))
            loss = loss + self.mpee.kd_weight * tau * tau * kd
        return loss

    @torch.no_grad()
    def predict(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None, *,
                policy: ExitPolicy, keep_ratio: float | None = None) -> MpeePrediction:
        """Batch-1 inference that stops at the first layer the policy accepts. Inputs (1, T), no padding."""
        if input_ids.shape[0] != 1:
            raise ValueError(f"predict runs one sample at a time, got batch {input_ids.shape[0]}")
        policy.reset()
        state = self.embed(input_ids, None, token_type_ids)
        state.mask = None  # the unpadded path, the same computation as the exported graphs
        attn_lens, ffn_lens = [], []
        for i in range(self.mpee.num_layers):
            state, stats = self.layer_step(i, state, keep_ratio)
            attn_lens.append(int(stats.attn_len))
            ffn_lens.append(int(stats.ffn_len))
            probs, entropy = blended_outputs(state.memory[0])
            if self.mpee.layer_exit and policy.should_exit(probs.numpy(), float(entropy)):
                break
        probs = probs.numpy()
        return MpeePrediction(int(probs.argmax()), probs, i + 1, attn_lens, ffn_lens)

    @torch.no_grad()
    def predict_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      token_type_ids: torch.Tensor | None = None, *, policy: ExitPolicy,
                      keep_ratio: float | None = None) -> list[MpeePrediction]:
        """Inference on a right-padded batch (B, T), each row as `predict` runs it alone: after each layer the rows
        whose exit fires leave (`policy`'s rule applied to all running rows at once by the runtime's
        `BatchExitRule`, which counts patience and depth per row), and the rows that go on are cut to their own
        longest row. Returns one prediction per row, in order."""
        n, num_layers = input_ids.shape[0], self.mpee.num_layers
        rule = BatchExitRule(policy.policy, policy.threshold, self.mpee.num_labels, n)
        state = self.embed(input_ids, attention_mask, token_type_ids)
        rows = np.arange(n)                          # the running rows' indices in the batch
        attn = np.zeros((n, num_layers), dtype=np.int64)
        ffn = np.zeros_like(attn)
        exit_layer = np.zeros(n, dtype=np.int64)
        final = None
        for i in range(num_layers):
            state, stats = self.layer_step(i, state, keep_ratio)
            probs, entropy = (x.numpy() for x in blended_outputs(state.memory))
            attn[rows, i], ffn[rows, i] = stats.attn_len.cpu().numpy(), stats.ffn_len.cpu().numpy()
            if final is None:
                final = np.zeros((n, probs.shape[1]), dtype=probs.dtype)
            if i == num_layers - 1:
                done = np.ones(len(rows), dtype=bool)
            elif self.mpee.layer_exit:
                done = rule.fires(probs, entropy, rows)
            else:
                done = np.zeros(len(rows), dtype=bool)
            exit_layer[rows[done]], final[rows[done]] = i + 1, probs[done]
            stay = np.flatnonzero(~done)
            if not len(stay):
                break
            rows = rows[stay]
            state = _select_rows(state, torch.from_numpy(stay))
        return [MpeePrediction(int(final[r].argmax()), final[r], int(k), attn[r, :k].tolist(), ffn[r, :k].tolist())
                for r, k in enumerate(exit_layer)]


def first_positions(tokens: torch.Tensor) -> torch.Tensor:
    """Where the tokens' positions start, before any pruning: 0..N-1 in every row of `tokens` (B, N), the positions
    transformers' MPNet computes its bias from (docs/design.md 3.1)."""
    return torch.arange(shape_as_tensor(tokens)[1], device=tokens.device)[None].expand_as(tokens)


def _select_rows(state: LayerState, rows: torch.Tensor) -> LayerState:
    """The batch's rows `rows`, cut to their own longest row (real tokens are a prefix: `prune_tokens`)."""
    mask = state.mask[rows]
    n = int(mask.sum(dim=1).max())
    return LayerState(state.hidden[rows, :n], mask[:, :n], None if state.scores is None else state.scores[rows, :n - 1],
                      None if state.memory is None else state.memory[rows],
                      None if state.positions is None else state.positions[rows, :n])


def _lengths(state: LayerState) -> torch.Tensor:
    """(B,) real tokens of each sample."""
    if state.mask is None:
        return shape_as_tensor(state.hidden)[1:2]
    return state.mask.sum(dim=1)


def blended_outputs(memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and entropy (nats) of classifier-memory logits over the last axis, computed stably: the
    one entropy formula of the torch side (training, evaluation and the exported graphs)."""
    logp = memory.log_softmax(-1)
    probs = logp.exp()
    return probs, -(probs * logp).sum(-1)


def memories_to_probs(memories: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, L, C) memory logits -> probabilities and entropies in nats, as float32 arrays."""
    probs, entropy = blended_outputs(memories.float())
    return probs.numpy(), entropy.numpy()
