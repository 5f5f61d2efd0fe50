"""mpee-bench --throughput: texts per second and per-request p50/p99 latency at several batch sizes, MPEE
against the full models of `mpee-export reference`, every variant in one interleaved run (torch-free).

    mpee-bench --throughput BUNDLE --input DEV --reference REF [--int8 B8] [--batch-sizes 1,4,16,64]
                [--repeats N] [--threads T] [--max-examples N] --out OUT
    mpee-bench throughput-report OUT      throughput.md and throughput.png again from OUT/throughput.json

Writes OUT/throughput.json (`ThroughputRecord`), OUT/throughput.md and OUT/throughput.png.

Rules:
- Batches: the examples sorted by length in tokens (ties by position), cut in that order into batches of b
  rows (the last may be shorter); every variant runs the same batches. A full model gets each batch padded
  to its longest row (attention_mask 0 on the padding); MPEE gets the batch's texts (`predict_batch`).
- Ways, T = --threads threads in all: `single`, one session (MPEE: one engine) with T intra-op threads,
  running the batches in order; `parallel`, T single-thread sessions (engines) in T worker threads, each
  taking the next batch from one shared queue (onnxruntime releases the GIL in `run`). Every session has a
  pool of its own (session.py, thread_pool "session"); onnxruntime's process-wide pool is never created, and
  a process where it exists is refused (every session would run on it, whatever T says).
- Models: the fp32 full model (REF/model_fused.onnx, else REF/model.onnx) against BUNDLE, the int8 full
  model (REF/model_fused_int8.onnx) against the --int8 bundle, each where it exists.
- Timed, text in and label out: tokenizing (the bundle's tokenizer, for the full models too), padding and
  the model. texts/s = texts / wall time of the pass (first batch's start to last answer; parallel: from
  releasing the workers to joining them), summed over the repetitions. A request's latency runs from the
  start of its batch to its answer: a full model's rows all answer at the batch's end; an MPEE row answers
  at its own exit, as the engine times it (`ready_us`), else (no timings) at the batch's end, and the row's
  `latency_source` says which.
- Interleaved: per repetition and batch size the variants take turns in a fresh random order drawn from
  ORDER_SEED; each turn first runs the pass's largest batch (rows x tokens) --warmup times untimed on each of
  its sessions, so caches and arenas are back before the clock starts.
- Baseline per batch size and precision: the faster (texts/s) of the full model's two ways; a row's
  speed-up is its texts/s over the baseline's, and the headline (`Comparison`) is the faster MPEE way's.
- The A/A control: the fp32 full model's single way twice, on two loads (`<name>` and `<name>_aa`); at each
  batch size the relative spread |a - b| / ((a + b) / 2) of texts/s and of p50, flagged above report.AA_THRESHOLD.
- Agreement: each model (not its A/A twin) first answers every example alone at batch 1, untimed (MPEE:
  `engine.predict`, the full model unpadded); each row records the fraction of its labels equal to those.
"""
