"""Training on GLUE (docs/design.md 2.3): one stage, AdamW on all parameters, linear decay with warm-up,
dev evaluation each epoch, and resumable state.

OUT/ receives the checkpoint (written at each epoch end and when stopped by --max-steps);
OUT/train_state/ holds what resuming needs (weights, optimizer, scheduler, RNG, position) and is
removed when training completes. Data order is a function of (seed, epoch) and the RNG state is
saved, so an interrupted and resumed run reproduces the uninterrupted one.

Training runs on cpu, cuda or mps, in fp32 or under bf16/fp16 autocast (the weights, the optimizer and
the checkpoint stay fp32), and data-parallel under torchrun (see distributed.py for how a global batch
is shared). Only rank 0 evaluates and writes OUT/; all ranks read OUT/train_state/ when resuming. Under
torchrun each step reseeds dropout from (seed, step, rank), so resuming needs no per-rank RNG state.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from mpee_runtime.files import AtomicFolder, write_text

from ..data.batching import Encoded, collate, encode, train_batches
from ..data.datasets import DataSource, task_fields
from ..data.glue import Task
from ..errors import MpeeExportError
from ..model.checkpoint import (
    classifier_labels,
    from_backbone,
    from_classifier,
    load_backbone_config,
    load_state,
    load_tokenizer,
    save_checkpoint,
)
from ..model.config import DEFAULT_LR, MpeeConfig
from ..model.families import family_of
from ..model.modeling import MpeeModel
from .distributed import (
    DistEnv,
    autocast,
    check_precision,
    choose_device,
    dropout_seed,
    eval_view,
    grad_scaler,
    process_group,
    weighted_micro_batches,
)
from .evaluate import compute_traces, full_model_row, per_exit_accuracy

STATE_DIR = "train_state"


def mpee_config(backbone: Path, task: Task, **build) -> MpeeConfig:
    """The MpeeConfig for a backbone (its number of layers, its positions) and a task (its labels, and its
    columns for the user's own files); `build` holds MpeeConfig.build's keyword arguments (the design's
    defaults for anything not given). A max_length beyond the backbone's position embeddings is refused; none
    given is 128, or the positions if fewer."""
    config = load_backbone_config(backbone)
    sizes = family_of(config).sizes(config)
    positions = sizes.positions
    if build.get("max_length") is None:   # the default, within the backbone's positions
        build["max_length"] = min(MpeeConfig.max_length, positions)
    max_length = build["max_length"]
    if max_length > positions:
        raise MpeeExportError(f"--max-length {max_length} is more than the backbone's {positions} positions "
                              f"({backbone}); use at most {positions}")
    return MpeeConfig.build(num_layers=sizes.layers, labels=list(task.labels), **task_fields(task), **build)


def classifier_task(task: Task, classifier: Path) -> Task:
    """`task` with its classes in the order of the user's classifier (--from-classifier: class i of the model is
    the classifier's class i). The classifier's id2label names the task's labels (in any order, for a task on the
    user's files, whose label order the checkpoint records), or is transformers' default LABEL_0..LABEL_{n-1},
    which stands for the task's labels in its own order (as transformers' run_glue maps them)."""
    names = classifier_labels(classifier)
    if len(names) != len(task.labels):
        raise MpeeExportError(f"classifier {classifier} has {len(names)} classes {names}, the task {task.name} "
                              f"{len(task.labels)} {list(task.labels)}")
    if names == [f"LABEL_{i}" for i in range(len(names))] or names == list(task.labels):
        return task
    if set(names) != set(task.labels):
        raise MpeeExportError(f"classifier {classifier} names its classes {names}; the task {task.name}'s labels are "
                              f"{list(task.labels)}: set the classifier's id2label to the task's labels")
    if task.folder is not None:
        raise MpeeExportError(f"classifier {classifier} orders the classes {names}, the GLUE task {task.name} "
                              f"{list(task.labels)}: class i must be the task's label i")
    return replace(task, labels=tuple(names))


@dataclass
class TrainArgs:
    data: DataSource                # the task and its files (datasets.glue_source / file_source)
    backbone: Path
    out: Path
    mpee: MpeeConfig                # the model to train (mpee_config builds one for a backbone and task)
    epochs: int = 1
    batch_size: int = 32
    lr: float = DEFAULT_LR
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    seed: int = 42
    save_every: int = 200           # optimizer steps between resumable states
    max_steps: int | None = None    # stop (resumable) after this many steps in total
    device: str = "cpu"             # cpu, cuda, mps, or auto (mpee-train's default; cuda:LOCAL_RANK under torchrun)
    precision: str = "fp32"         # autocast dtype: distributed.TRAIN_PRECISIONS
    grad_accum: int = 1             # micro-batches per process per global batch
    from_classifier: bool = False   # `backbone` is the user's XxxForSequenceClassification (checkpoint.from_classifier)
    freeze_backbone: bool = False   # train the exits only (MpeeModel.freeze_backbone)

    def fingerprint(self) -> dict:
        """What must not change between an interrupted run and its resumption.

        The device may change (a GPU run can be resumed on CPU); precision and gradient accumulation
        change the arithmetic, so they may not.
        """
        d = asdict(self)
        for key in ("out", "save_every", "max_steps", "max_eval_samples", "device"):
            d.pop(key)
        return json.loads(json.dumps(d, default=str))


@dataclass(frozen=True)
class EpochResult:
    """The dev evaluation after an epoch (the full model's scores, each exit's accuracy), as train_log.json
    records it in its history."""

    epoch: int
    train_seconds: float
    metric_name: str
    metric: float
    accuracy: float
    f1: float | None
    per_exit_accuracy: list[float]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EpochResult:
        return cls(**data)


@dataclass(frozen=True)
class Stopped:
    """Training stopped by --max-steps at `step` (resumable)."""

    step: int


@dataclass
class _Run:
    """One training run: its settings, where it runs, the model, its optimizer and its data."""

    args: TrainArgs
    env: DistEnv
    device: torch.device
    task: Task
    model: MpeeModel                 # the module itself (losses, checkpoints, evaluation)
    net: torch.nn.Module             # what the forward pass goes through: the model or its DDP wrapper
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    tokenizer: object
    train_data: Encoded
    dev_data: Encoded
    steps_per_epoch: int
    log: object
    tokens: int = 0                  # real tokens trained on since this process started (mpee-train's tokens/s)

    @property
    def out(self) -> Path:
        return Path(self.args.out)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.args.epochs


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def make_optimizer(model: MpeeModel, args: TrainArgs) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:   # frozen parameters (--freeze-backbone) are left out
            (no_decay if p.ndim == 1 else decay).append(p)  # no decay on biases and LayerNorm
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)


def _rng_state(device: torch.device) -> dict:
    """The CPU generator, plus the accelerator's (dropout draws from it when training on a GPU)."""
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state |= {"device_type": "cuda", "device_rng": torch.cuda.get_rng_state(device)}
    elif device.type == "mps":
        state |= {"device_type": "mps", "device_rng": torch.mps.get_rng_state()}
    return state


def _set_rng_state(saved: dict, device: torch.device) -> None:
    torch.set_rng_state(saved["rng"])
    if saved.get("device_type") == device.type == "cuda":
        torch.cuda.set_rng_state(saved["device_rng"], device)
    elif saved.get("device_type") == device.type == "mps":
        torch.mps.set_rng_state(saved["device_rng"])


def _save_state(out: Path, run: _Run, progress: dict) -> None:
    with AtomicFolder(out / STATE_DIR, force=True) as tmp:   # replaces the previous state whole
        save_file({k: v.contiguous() for k, v in run.model.state_dict().items()}, str(tmp / "model.safetensors"))
        extra = {"scaler": run.scaler.state_dict()} if run.scaler is not None else {}
        torch.save({"optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
                    **_rng_state(run.device), **extra}, tmp / "optimizer.pt")
        write_text(tmp / "progress.json", json.dumps(progress, indent=1))


def _load_state(out: Path, run: _Run, fingerprint: dict) -> dict:
    state_dir = out / STATE_DIR
    progress = json.loads((state_dir / "progress.json").read_text())
    if progress["args"] != fingerprint:
        keys = set(fingerprint) | set(progress["args"])
        changed = sorted(k for k in keys if progress["args"].get(k) != fingerprint.get(k))
        raise MpeeExportError(f"{out} holds an interrupted run with different settings ({', '.join(changed)}); "
                              "rerun with the same settings to resume, or choose another --out")
    load_state(run.model, load_file(str(state_dir / "model.safetensors")), state_dir / "model.safetensors")
    saved = torch.load(state_dir / "optimizer.pt", weights_only=True, map_location="cpu")
    run.opt.load_state_dict(saved["optimizer"])
    run.sched.load_state_dict(saved["scheduler"])
    if run.scaler is not None:   # fp16: the precision is part of the fingerprint, so the state has one
        run.scaler.load_state_dict(saved["scaler"])
    _set_rng_state(saved, run.device)
    return progress


def check_batching(args: TrainArgs, env: DistEnv) -> None:
    """Every micro-batch of a full global batch must hold at least one example."""
    if args.grad_accum < 1:
        raise MpeeExportError(f"--grad-accum must be at least 1, got {args.grad_accum}")
    if args.grad_accum > args.batch_size:
        raise MpeeExportError(f"--grad-accum {args.grad_accum} is larger than --batch-size {args.batch_size}: "
                              "a micro-batch needs at least one example")
    if args.batch_size < env.world_size * args.grad_accum:
        raise MpeeExportError(f"--batch-size {args.batch_size} is smaller than {env.world_size} processes x "
                              f"--grad-accum {args.grad_accum}: some micro-batches would be empty")


def train(args: TrainArgs, log=print, notes: tuple[str, ...] = ()) -> EpochResult | Stopped:
    """Train an MPEE model; returns the last epoch's dev results (or where --max-steps stopped it).
    `notes` are logged once the data and settings have been checked, before the first step (mpee-train:
    why it chose its defaults).

    Under torchrun (WORLD_SIZE > 1) every process calls this; only rank 0 logs and writes.
    """
    env = DistEnv.from_env()
    device = choose_device(args.device, env)
    check_precision(args.precision, device)
    check_batching(args, env)
    with process_group(env, device):
        return _train(args, env, device, log if env.is_main else (lambda msg: None), notes)


def _train(args: TrainArgs, env: DistEnv, device: torch.device, log, notes: tuple[str, ...]) -> EpochResult | Stopped:
    out = Path(args.out)
    created = not out.exists()
    try:
        return _train_into(args, env, device, log, notes)
    except BaseException:   # a run that stops before it saved anything leaves no empty folder behind
        if created and env.is_main and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _train_into(args: TrainArgs, env: DistEnv, device: torch.device, log, notes: tuple[str, ...]
                ) -> EpochResult | Stopped:
    resuming = _check_out(Path(args.out))
    run = _setup(args, env, device, log)
    progress = _start(run, resuming)
    for note in notes:
        log(note)
    result = None
    t_run, first_step = time.time(), progress["step"]
    while progress["epoch"] < args.epochs:
        t0 = time.time()
        if not _run_epoch(run, progress):
            _stop(run, progress, rate=_rate(progress["step"] - first_step, time.time() - t_run, run.tokens))
            return Stopped(progress["step"])
        result = _end_epoch(run, progress, time.time() - t0)
    log(_rate(progress["step"] - first_step, time.time() - t_run, run.tokens))
    if env.is_main:
        write_text(run.out / "train_log.json", json.dumps(progress, indent=1))
        shutil.rmtree(run.out / STATE_DIR, ignore_errors=True)
    _barrier(env)
    return result


def _check_out(out: Path) -> bool:
    """Whether `out` holds an interrupted run to resume; refuses any other non-empty folder."""
    resuming = (out / STATE_DIR / "progress.json").is_file()
    if not resuming and out.exists() and any(out.iterdir()):
        raise MpeeExportError(f"{out} is not empty and holds no interrupted run; choose an empty --out")
    return resuming


def _setup(args: TrainArgs, env: DistEnv, device: torch.device, log) -> _Run:
    """Read and encode the data, build the model on its backbone, the optimizer and the schedule."""
    task = args.data.task
    train_examples = args.data.load("train", limit=args.max_train_samples)
    dev_examples = args.data.load("dev", limit=args.max_eval_samples)
    torch.manual_seed(args.seed)
    if args.freeze_backbone and not args.from_classifier:
        raise MpeeExportError("--freeze-backbone trains the exits of a fine-tuned classifier: give --from-classifier")
    model = (from_classifier if args.from_classifier else from_backbone)(args.backbone, args.mpee).to(device)
    if args.freeze_backbone:
        model.freeze_backbone()
    tokenizer = load_tokenizer(args.backbone)
    train_data = encode(train_examples, tokenizer, args.mpee.max_length, args.mpee.truncation)
    dev_data = encode(dev_examples, tokenizer, args.mpee.max_length, args.mpee.truncation)
    steps_per_epoch = math.ceil(len(train_data) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = int(args.warmup_ratio * total)
    opt = make_optimizer(model, args)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup))
    return _Run(args, env, device, task, model, model, opt, sched, grad_scaler(args.precision, device), tokenizer,
                train_data, dev_data, steps_per_epoch, log)


def _start(run: _Run, resuming: bool) -> dict:
    """The progress record to start from (fresh, or read back with the saved state when resuming)."""
    args, env, out, log = run.args, run.env, run.out, run.log
    progress = {"args": args.fingerprint(), "step": 0, "epoch": 0, "history": []}
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if resuming:
        progress = _load_state(out, run, args.fingerprint())
        log(f"resuming {out} at step {progress['step']}/{run.total_steps}")
    _check_same_start(env, resuming, progress["step"], out)
    run.net = _wrap(run.model, env, run.device)
    mpee = args.mpee
    log(f"{run.task.name}: {len(run.train_data)} train / {len(run.dev_data)} dev examples, {args.epochs} epoch(s), "
        f"{run.total_steps} steps, batch {args.batch_size}, prune layers {mpee.prune_layers} r={mpee.keep_ratios}")
    log(f"device {run.device}, precision {args.precision}, {env.world_size} process(es), "
        f"grad-accum {args.grad_accum}")
    return progress


def _run_epoch(run: _Run, progress: dict) -> bool:
    """The remaining steps of the current epoch; False when --max-steps stopped it first."""
    args, env = run.args, run.env
    epoch, step = progress["epoch"], progress["step"]
    batches = train_batches(run.train_data, args.batch_size, torch.Generator().manual_seed(args.seed + epoch))
    start = step - epoch * run.steps_per_epoch
    run.model.train()
    bar = tqdm(batches[start:], desc=f"epoch {epoch + 1}/{args.epochs}", initial=start,
               total=len(batches), dynamic_ncols=True, mininterval=2, disable=not env.is_main)
    t0, tokens0 = time.time(), run.tokens
    with bar:
        for idx in bar:
            if env.distributed:
                torch.manual_seed(dropout_seed(args.seed, step, env.rank))
            loss = _train_step(run, run.train_data, idx)
            step += 1
            run.tokens += sum(len(run.train_data.input_ids[i]) for i in idx)
            rate = (run.tokens - tokens0) / max(time.time() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{run.sched.get_last_lr()[0]:.2e}", tok_s=f"{rate:.0f}",
                            refresh=False)
            progress["step"] = step
            stop = args.max_steps is not None and step >= args.max_steps
            if env.is_main and (step % args.save_every == 0 or stop):
                _save_state(run.out, run, progress)
            if stop:
                return False
    return True


def _stop(run: _Run, progress: dict, rate: str) -> None:
    """--max-steps reached: the checkpoint so far (the resumable state is saved already)."""
    if run.env.is_main:
        run.log(rate)
        save_checkpoint(run.model, run.tokenizer, run.out)
        run.log(f"stopped at step {progress['step']} (--max-steps); rerun the same command to resume")
    _barrier(run.env)


def _end_epoch(run: _Run, progress: dict, seconds: float) -> EpochResult:
    """Rank 0 evaluates on the dev set, logs, and saves the checkpoint and the state; every rank gets the result."""
    epoch = progress["epoch"] + 1
    result = None
    if run.env.is_main:
        result = _dev_eval(eval_view(run.model, run.device), run.task, run.dev_data, epoch, seconds)
        progress["history"].append(result.to_dict())
        progress["epoch"] = epoch
        run.log(f"epoch {epoch}: dev {result.metric_name} {result.metric:.4f} (full model), "
                f"per-exit accuracy {[round(a, 4) for a in result.per_exit_accuracy]}")
        save_checkpoint(run.model, run.tokenizer, run.out)
        _save_state(run.out, run, progress)
    result = _from_main(run.env, result)   # the other ranks wait here while rank 0 evaluates and saves
    progress["epoch"] = epoch
    return result


def _train_step(run: _Run, data: Encoded, batch: list[int]) -> float:
    """One optimizer step on a global batch; returns the mean loss over this process's examples.

    Each micro-batch's mean loss is weighted by its share of the global batch (times the world size,
    which DDP's average divides away), so the gradient is the global batch mean however it is split.
    """
    env, args = run.env, run.args
    parts = weighted_micro_batches(batch, env.rank, env.world_size, args.grad_accum)
    run.opt.zero_grad(set_to_none=True)
    shown = 0.0
    for i, (part, weight) in enumerate(parts):
        last = i == len(parts) - 1
        with nullcontext() if last or run.net is run.model else run.net.no_sync():
            loss = _micro_loss(run, data, part)
            scaled = loss if weight == 1.0 else loss * weight
            (scaled if run.scaler is None else run.scaler.scale(scaled)).backward()
        shown += loss.detach() * len(part)
    if run.scaler is not None:
        run.scaler.unscale_(run.opt)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.max_grad_norm)
    if run.scaler is None:
        run.opt.step()
    else:
        run.scaler.step(run.opt)
        run.scaler.update()
    run.sched.step()
    return float(shown) / sum(len(p) for p, _ in parts)


def _rate(steps: int, seconds: float, tokens: int) -> str:
    """Optimizer steps and tokens per second since this process started training (the measure of scaling);
    tokens are the examples' real tokens (padding excluded), of the whole global batch."""
    seconds = max(seconds, 1e-9)
    return (f"{steps} optimizer steps in {seconds:.1f} s: {steps / seconds:.3f} steps/s, "
            f"{tokens / seconds:,.0f} tokens/s")


def _micro_loss(run: _Run, data: Encoded, part: list[int]) -> torch.Tensor:
    b = {k: v.to(run.device, non_blocking=True) for k, v in collate(data, part).items()}
    with autocast(run.args.precision, run.device):
        out = run.net(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        return run.model.loss(out, b["labels"])


def _wrap(model: MpeeModel, env: DistEnv, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun; the model itself otherwise."""
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel
    # Ablations leave heads out of the loss: DDP must then look for parameters without gradients.
    unused = not (model.mpee.layer_exit and model.mpee.self_distill)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False, find_unused_parameters=unused)


def _check_same_start(env: DistEnv, resuming: bool, step: int, out: Path) -> None:
    """All ranks must start from the same step (each reads OUT/train_state/ itself)."""
    if not env.distributed:
        return
    import torch.distributed as dist
    seen: list = [None] * env.world_size
    dist.all_gather_object(seen, (resuming, step))
    if len(set(seen)) > 1:
        raise MpeeExportError(f"processes disagree on resuming {out} (resuming, step per rank: {seen}): "
                              "--out must be a folder that every node sees")


def _from_main(env: DistEnv, value):
    """Rank 0's value on every rank (a barrier too)."""
    if not env.distributed:
        return value
    import torch.distributed as dist
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(env: DistEnv) -> None:
    if env.distributed:
        import torch.distributed as dist
        dist.barrier()


def _dev_eval(model: MpeeModel, task: Task, dev_data: Encoded, epoch: int, seconds: float) -> EpochResult:
    full = full_model_row(model, task, dev_data)
    traces = compute_traces(model, dev_data)  # configured keep ratios, all exits
    return EpochResult(epoch=epoch, train_seconds=seconds, metric_name=full.metric_name, metric=full.metric,
                       accuracy=full.accuracy, f1=full.f1, per_exit_accuracy=per_exit_accuracy(traces))
