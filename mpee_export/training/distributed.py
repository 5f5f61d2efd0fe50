"""Where training runs: device and precision choice, torchrun's process group, and batch sharding.

Data parallelism keeps the single-process data order: every rank builds the same global batch list
(`batching.train_batches` from the same seeded generator) and takes a contiguous slice of each global
batch, so `--batch-size` stays the global batch size whatever the number of processes. Each slice may
be split again into `--grad-accum` micro-batches. The training loss is a mean over its batch, so a
micro-batch of n examples out of a global batch of N is weighted n / N (times the world size, which
DistributedDataParallel's gradient average divides away): the update then equals the single-process
update on the same global batch, up to float rounding, even when slices are uneven.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import MpeeExportError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: mpee-train's options read these lists, and --help stays fast.
DEVICES = ("auto", "cpu", "cuda", "mps")
# Training precisions (autocast dtypes; weights and checkpoints stay fp32). A bundle's graph precisions
# are another list: mpee_runtime.bundle.contract.BUNDLE_PRECISIONS.
TRAIN_PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}   # torch dtype names


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistEnv:
        """Read RANK, WORLD_SIZE and LOCAL_RANK, which torchrun sets for each worker."""
        try:
            env = cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                      int(os.environ.get("LOCAL_RANK", "0")))
        except ValueError:
            raise MpeeExportError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") \
                from None
        if not 0 <= env.rank < env.world_size:
            raise MpeeExportError(f"RANK {env.rank} is outside WORLD_SIZE {env.world_size}")
        return env


def _mps_available() -> bool:
    import torch
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def choose_device(name: str, env: DistEnv) -> torch.device:
    """The device for `--device NAME`: auto prefers cuda, then mps, then cpu; cuda uses cuda:LOCAL_RANK."""
    import torch
    if name not in DEVICES:
        raise MpeeExportError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise MpeeExportError("--device cuda, but CUDA is not available to this torch build or machine")
        if env.local_rank >= torch.cuda.device_count():
            raise MpeeExportError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} CUDA "
                                  "device(s): start at most that many processes per node")
        return torch.device("cuda", env.local_rank)
    if name == "mps":
        if not _mps_available():
            raise MpeeExportError("--device mps, but MPS (Apple GPU) is not available")
        if env.distributed:
            raise MpeeExportError("multi-process training supports cuda (nccl) and cpu (gloo), not mps")
        return torch.device("mps")
    return torch.device("cpu")


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse combinations torch cannot run well: fp16 autocast on CPU, bf16 on GPUs without it."""
    import torch
    if precision not in TRAIN_PRECISIONS:
        raise MpeeExportError(f"unknown precision {precision!r}; choose one of {', '.join(TRAIN_PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise MpeeExportError("--precision fp16 needs a GPU (--device cuda or mps); use --precision bf16 on cpu")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise MpeeExportError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
                              "use --precision fp16")


def autocast(precision: str, device: torch.device):
    """torch.autocast for bf16/fp16; a disabled one for fp32 (the weights always stay fp32)."""
    import torch
    dtype = getattr(torch, AUTOCAST_DTYPES[precision]) if precision in AUTOCAST_DTYPES else None
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    import torch
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def shard(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank `rank`'s contiguous slice of a global batch; sizes differ by at most one (first ranks larger).

    Contiguous rather than strided because batches are length-sorted: neighbours have similar lengths,
    so each slice pads little. A rank gets an empty slice when the batch is smaller than the world.
    """
    base, extra = divmod(len(batch), world_size)
    start = rank * base + min(rank, extra)
    return list(batch[start:start + base + (rank < extra)])


def micro_batches(batch: Sequence[int], k: int) -> list[list[int]]:
    """`batch` cut into k contiguous parts (sizes differ by at most one), empty parts dropped."""
    parts = [shard(batch, i, k) for i in range(k)]
    return [p for p in parts if p]


def weighted_micro_batches(batch: Sequence[int], rank: int, world_size: int, k: int
                           ) -> list[tuple[list[int], float]]:
    """This rank's micro-batches of a global batch, each with the weight of its mean loss.

    A part of n examples out of the global N gets n / N * world_size: DDP divides the summed gradient by
    world_size, so every example ends up weighted 1 / N, as in one process on the whole batch. A rank
    whose slice is empty (a batch smaller than the world) gets one example at weight 0: it must still
    run a backward pass to take part in DDP's gradient all-reduce.
    """
    parts = micro_batches(shard(batch, rank, world_size), k)
    if not parts:
        return [(list(batch[:1]), 0.0)]
    return [(p, len(p) / len(batch) * world_size) for p in parts]


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """A per-(step, rank) seed, so that ranks draw different dropout masks and resuming needs no RNG state."""
    return ((seed * 1_000_003 + step) * 4099 + rank) & 0x7FFF_FFFF_FFFF_FFFF


@contextmanager
def process_group(env: DistEnv, device: torch.device) -> Iterator[None]:
    """Join torchrun's process group (nccl on cuda, gloo on cpu) for the duration; no-op for one process."""
    if not env.distributed:
        yield
        return
    import torch
    import torch.distributed as dist
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


class EvalOnDevice:
    """The model as evaluate.py sees it when training runs off the CPU: CPU tensors in and out.

    evaluate.py builds CPU batches and reads outputs with .numpy(); this moves inputs to the device and
    outputs back, and forwards every other attribute (mpee, eval, flops_model) to the model.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self._model, self._device = model, device

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, keep_ratio=None):
        from ..model.modeling import MpeeOutput

        def move(t):
            return None if t is None else t.to(self._device)
        out = self._model(move(input_ids), move(attention_mask), move(token_type_ids), keep_ratio=keep_ratio)
        return MpeeOutput(out.memories.float().cpu(), out.attn_lens.cpu(), out.ffn_lens.cpu())


def eval_view(model: torch.nn.Module, device: torch.device):
    """The model itself on CPU; an EvalOnDevice wrapper elsewhere."""
    return model if device.type == "cpu" else EvalOnDevice(model, device)
