"""Training on GLUE (DESIGN 1.3): one stage, AdamW on all parameters, linear decay with warm-up,
dev evaluation each epoch, and resumable state.

OUT/ receives the checkpoint (written at each epoch end and when stopped by --max-steps);
OUT/train_state/ holds what resuming needs (weights, optimizer, scheduler, RNG, position) and is
removed when training completes. Data order is a function of (seed, epoch) and the RNG state is
saved, so an interrupted and resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .batching import collate, encode, train_batches
from .checkpoint import from_backbone, load_backbone_config, load_state, load_tokenizer, save_checkpoint
from .config import MpeeConfig
from .errors import MpeeExportError
from .evaluate import compute_traces, full_model_row, per_exit_accuracy
from .glue import get_task, load_split
from .modeling import MpeeModel

STATE_DIR = "train_state"


@dataclass
class TrainArgs:
    task: str
    data: Path
    backbone: Path
    out: Path
    epochs: int = 1
    batch_size: int = 32
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    seed: int = 42
    save_every: int = 200           # optimizer steps between resumable states
    max_steps: int | None = None    # stop (resumable) after this many steps in total
    mpee: dict = field(default_factory=dict)  # MpeeConfig.build keyword arguments

    def fingerprint(self) -> dict:
        """What must not change between an interrupted run and its resumption."""
        d = asdict(self)
        for key in ("out", "save_every", "max_steps", "max_eval_samples"):
            d.pop(key)
        return json.loads(json.dumps(d, default=str))


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _optimizer(model: MpeeModel, args: TrainArgs) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim == 1 else decay).append(p)  # no decay on biases and LayerNorm
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)


def _save_state(out: Path, model: MpeeModel, opt: torch.optim.Optimizer, sched, progress: dict) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".state.", dir=out))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": torch.get_rng_state()},
               tmp / "optimizer.pt")
    (tmp / "progress.json").write_text(json.dumps(progress, indent=1))
    final = out / STATE_DIR
    old = out / f".{STATE_DIR}.old"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _load_state(out: Path, model: MpeeModel, opt: torch.optim.Optimizer, sched, fingerprint: dict) -> dict:
    state_dir = out / STATE_DIR
    progress = json.loads((state_dir / "progress.json").read_text())
    if progress["args"] != fingerprint:
        changed = sorted(k for k in fingerprint if progress["args"].get(k) != fingerprint[k])
        raise MpeeExportError(f"{out} holds an interrupted run with different settings ({', '.join(changed)}); "
                              "rerun with the same settings to resume, or choose another --out")
    load_state(model, load_file(str(state_dir / "model.safetensors")), state_dir / "model.safetensors")
    saved = torch.load(state_dir / "optimizer.pt", weights_only=True)
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return progress


def train(args: TrainArgs, log=print) -> dict:
    """Train an MPEE model; returns the last epoch's dev results."""
    task = get_task(args.task)
    out = Path(args.out)
    resuming = (out / STATE_DIR / "progress.json").is_file()
    if not resuming and out.exists() and any(out.iterdir()):
        raise MpeeExportError(f"{out} is not empty and holds no interrupted run; choose an empty --out")
    train_examples = load_split(args.data, task, "train", limit=args.max_train_samples)
    dev_examples = load_split(args.data, task, "dev", limit=args.max_eval_samples)
    torch.manual_seed(args.seed)
    mpee = MpeeConfig.build(num_layers=load_backbone_config(args.backbone).num_hidden_layers, labels=list(task.labels), task=task.name,
                            max_length=args.max_length, **args.mpee)
    model = from_backbone(args.backbone, mpee)
    tokenizer = load_tokenizer(args.backbone)
    train_data = encode(train_examples, tokenizer, args.max_length)
    dev_data = encode(dev_examples, tokenizer, args.max_length)

    steps_per_epoch = math.ceil(len(train_data) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = int(args.warmup_ratio * total)
    opt = _optimizer(model, args)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup))
    progress = {"args": args.fingerprint(), "step": 0, "epoch": 0, "history": []}
    out.mkdir(parents=True, exist_ok=True)
    if resuming:
        progress = _load_state(out, model, opt, sched, args.fingerprint())
        log(f"resuming {out} at step {progress['step']}/{total}")
    log(f"{task.name}: {len(train_data)} train / {len(dev_data)} dev examples, {args.epochs} epoch(s), "
        f"{total} steps, batch {args.batch_size}, prune layers {mpee.prune_layers} r={mpee.keep_ratios}")

    step = progress["step"]
    result: dict = {}
    while progress["epoch"] < args.epochs:
        epoch = progress["epoch"]
        batches = train_batches(train_data, args.batch_size, torch.Generator().manual_seed(args.seed + epoch))
        start = step - epoch * steps_per_epoch
        model.train()
        bar = tqdm(batches[start:], desc=f"epoch {epoch + 1}/{args.epochs}", initial=start,
                   total=len(batches), dynamic_ncols=True, mininterval=2)
        t0 = time.time()
        for idx in bar:
            b = collate(train_data, idx)
            out_ = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            loss = model.loss(out_, b["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.2e}", refresh=False)
            progress["step"] = step
            stop = args.max_steps is not None and step >= args.max_steps
            if step % args.save_every == 0 or stop:
                _save_state(out, model, opt, sched, progress)
            if stop:
                bar.close()
                save_checkpoint(model, tokenizer, out)
                log(f"stopped at step {step} (--max-steps); rerun the same command to resume")
                return {"stopped_at_step": step}
        bar.close()
        result = _dev_eval(model, task, dev_data) | {"epoch": epoch + 1, "train_seconds": time.time() - t0}
        progress["history"].append(result)
        progress["epoch"] = epoch + 1
        log(f"epoch {epoch + 1}: dev {result['metric']['name']} {result['metric']['value']:.4f} (full model), "
            f"per-exit accuracy {[round(a, 4) for a in result['per_exit_accuracy']]}")
        save_checkpoint(model, tokenizer, out)
        _save_state(out, model, opt, sched, progress)
    (out / "train_log.json").write_text(json.dumps(progress, indent=1))
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    return result


def _dev_eval(model: MpeeModel, task, dev_data) -> dict:
    full = full_model_row(model, task, dev_data)
    traces = compute_traces(model, dev_data)  # configured keep ratios, all exits
    return {"metric": full["metric"], "accuracy": full["accuracy"],
            "per_exit_accuracy": per_exit_accuracy(traces)}

