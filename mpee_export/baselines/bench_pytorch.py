"""The PyTorch eager baseline of mpee-bench, measured in a process of its own (the torch side of the benchmark).

    python -m mpee_export.baselines.bench_pytorch REF --input DEV --threads N --out OUT [--max-examples N]
        [--warmup W]

Run it after `mpee-bench BUNDLE --input DEV ... --out OUT`, then `mpee-bench report OUT`. Rules (the method:
docs/benchmarking.md):
- It joins the measurement in OUT: the examples are read as OUT/run.json says (columns, labels, count),
  tokenised by REF/hf's tokenizer, and refused unless their token ids are the ones measured there
  (`inputs_sha256`).
- torch.set_num_threads(--threads); its own warm-up of --warmup examples (default: the measurement's); nothing
  else runs meanwhile (`measure_alone`).
- A mean-pooled model (REF/reference.json's exit_pooling "mean") runs exit L's head on the token mean, as the
  reference graphs do; a [CLS] one is its family's XxxForSequenceClassification as it is.
- It writes OUT/rows_pytorch.jsonl (the rows' format of mpee-bench) and OUT/run_pytorch.json.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from mpee_runtime.bench.measure import Outcome, Variant, measure_alone
from mpee_runtime.bench.records import (
    PYTORCH_ROWS,
    PYTORCH_RUN,
    RUN,
    RunRecord,
    VariantInfo,
    inputs_digest,
    write_rows,
)
from mpee_runtime.bundle.reference import REFERENCE_HF, ReferenceRecord
from mpee_runtime.core.flops import FlopsModel
from mpee_runtime.errors import MpeeRuntimeError
from mpee_runtime.text.readers import Columns, cut_text, read_examples

from ..errors import MpeeCommand

NAME = "pytorch"


def pytorch_variant(hf_dir: Path, exit_pooling: str, flops_model: FlopsModel, threads: int) -> Variant:
    """PyTorch eager full model on `threads` threads; exit L's head on the token mean when `exit_pooling` is
    "mean"."""
    import torch
    from transformers.activations import get_activation

    from mpee_runtime.bundle.contract import TOKEN_TYPE_IDS

    from ..model.checkpoint import load_config
    from ..model.families import family_of
    torch.set_num_threads(threads)
    family = family_of(load_config(hf_dir, "reference"))
    model = family.classifier_class.from_pretrained(str(hf_dir), attn_implementation="eager").eval()
    layers, mean = flops_model.num_layers, exit_pooling == "mean"
    with_types = TOKEN_TYPE_IDS in family.embedding_inputs
    head, activation = family.classifier_head(model), get_activation(family.head_activation)

    def run(ids, types):
        with torch.inference_mode():
            feeds = {"input_ids": torch.from_numpy(ids)}
            if with_types:
                feeds["token_type_ids"] = torch.from_numpy(types)
            if mean:
                pooled = getattr(model, family.prefix)(**feeds).last_hidden_state.mean(dim=1)
                logits = head.classifier(activation(head.dense(pooled)))
            else:
                logits = model(**feeds).logits
        n = int(ids.shape[1])
        return Outcome(int(logits[0].argmax()), layers, flops_model.full_flops(n), [n] * layers)
    return Variant(VariantInfo(NAME, "PyTorch eager full model", runtime="pytorch", torch_threads=threads), run)


def tokenised_inputs(hf_dir: Path, run: RunRecord, input_path: Path, max_examples: int | None
                     ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[int] | None]:
    """The measurement's examples, read and cut as it read and cut them (`max_chars`, data.cut_text) and
    tokenised by REF/hf's tokenizer; refused unless they are the examples and token ids measured in OUT (a
    pair with a cut side may tokenise differently: docs/design.md, "Input limits")."""
    from transformers import AutoTokenizer
    spec = run.input
    limit = spec.get("max_examples") if max_examples is None else max_examples
    max_chars = spec.get("max_chars")
    examples = read_examples(input_path, Columns.from_dict(spec["columns"]), labels=run.labels,
                             require_label=spec["require_label"], limit=limit, max_chars=max_chars,
                             tail=spec.get("truncation", "head") != "head")
    from ..data.batching import tokenize
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    truncation = spec.get("truncation", "head")
    tail = truncation != "head"
    inputs = []
    for ex in examples:
        text = cut_text(ex.text, max_chars, tail=tail)[0]
        pair = None if ex.pair is None else cut_text(ex.pair, max_chars, tail=tail)[0]
        ids, types = tokenize(tok, [text], None if pair is None else [pair], spec["max_length"], truncation)
        inputs.append((np.asarray(ids, dtype=np.int64), np.asarray(types, dtype=np.int64)))
    label_ids = {label: i for i, label in enumerate(run.labels)}
    gold = None if any(ex.label is None for ex in examples) else [label_ids[ex.label] for ex in examples]
    if inputs_digest(inputs) != run.inputs_sha256 or gold != run.gold:
        raise MpeeRuntimeError(f"{input_path} (first {len(examples)} examples), tokenised by {hf_dir}, is not what "
                               f"was measured in {spec.get('path')} ({run.examples} examples): give the same "
                               "--input and --max-examples as to mpee-bench, and the reference of the same model")
    return inputs, gold


def run_pass(ref: Path, input_path: Path, threads: int, out: Path, max_examples: int | None = None,
             warmup: int | None = None, progress: bool = True) -> RunRecord:
    """Measure PyTorch on the examples of the measurement in `out`; write its rows and run record there."""
    from mpee_runtime.bench.env import cpu_state, cpu_warning, environment
    run = RunRecord.load(out / RUN)
    hf_dir = ref / REFERENCE_HF
    if not hf_dir.is_dir():
        raise MpeeRuntimeError(f"{ref}: no {REFERENCE_HF}/ (make the folder with `mpee-export reference`)")
    record = ReferenceRecord.load(ref)
    inputs, gold = tokenised_inputs(hf_dir, run, input_path, max_examples)
    fm = FlopsModel(**run.flops_model)
    variant = pytorch_variant(hf_dir, record.exit_pooling, fm, threads)
    warmup = run.passes[0]["warmup"] if warmup is None else warmup
    before = cpu_state()
    rows = measure_alone(variant, inputs, warmup, progress=progress)
    after = cpu_state()
    passes = [{"pass": len(run.passes) + 1, "mode": "alone", "runtime": "pytorch", "warmup": warmup,
               "variants": [NAME], "torch_threads": threads}]
    pt = RunRecord(run_id=run.run_id, task=run.task, metric_name=run.metric_name, labels=run.labels, gold=gold,
                   inputs_sha256=inputs_digest(inputs), input=run.input | {"path": str(input_path)},
                   flops_model=run.flops_model,
                   environment=environment(torch_threads=threads) | {"cpu_before": before, "cpu_after": after},
                   variants=[variant.info], passes=passes, device_warning=cpu_warning(before, after))
    write_rows(out / PYTORCH_ROWS, rows)
    pt.dump(out / PYTORCH_RUN)
    return pt


@click.command(cls=MpeeCommand, help=__doc__.split("\n")[0])
@click.argument("ref", type=click.Path(path_type=Path))
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True,
              help="The --input of the measurement in OUT.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="torch.set_num_threads (the measurement's --threads).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder of the mpee-bench measurement.")
@click.option("--max-examples", type=click.IntRange(min=1), default=None,
              help="The measurement's --max-examples [default: as recorded in OUT/run.json].")
@click.option("--warmup", type=click.IntRange(min=0), default=None,
              help="Untimed runs first [default: the measurement's --warmup].")
def main(ref: Path, input_path: Path, threads: int, out: Path, max_examples: int | None, warmup: int | None) -> None:
    pt = run_pass(ref, input_path, threads, out, max_examples, warmup)
    if pt.device_warning:
        click.echo(f"warning: {pt.device_warning}", err=True)
    click.echo(f"pytorch: {pt.examples} examples, {threads} threads; wrote {out / PYTORCH_ROWS} "
               f"(then: mpee-bench report {out})")


if __name__ == "__main__":  # pragma: no cover
    main()
