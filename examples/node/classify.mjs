#!/usr/bin/env node
// Classify texts with an MPEE bundle's single graph (mpee.onnx) from Node.js: onnxruntime-node and tokenizers.js,
// no Python. One text per line on stdin (with --pairs: a text, a tab, its pair); one JSON line per text on
// stdout with the fields of mpee-run's output lines (label, label_index, probs, exit_layer, tokens_per_layer,
// ffn_tokens_per_layer, chars_cut).
//
//   npm ci --prefix examples/node
//   node examples/node/classify.mjs BUNDLE [--threshold F] [--keep-ratio R] [--policy P] [--threads N] < texts.txt
//
// Bad input (no bundle, a file changed since the export, a bad option) is one `Error:` line and exit code 2.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

import { Tokenizer } from "@huggingface/tokenizers";
import * as ort from "onnxruntime-node";

import { checkSealed, MpeeError, MpeeGraph, operatingPoint } from "../js/mpee.mjs";

const USAGE = "usage: node classify.mjs BUNDLE [--threshold F] [--keep-ratio R] [--policy P] [--threads N] [--pairs]";

function number(value, flag) {
  if (value === undefined) return null;
  const n = Number(value);
  if (value.trim() === "" || Number.isNaN(n)) throw new MpeeError(`${flag} must be a number, got ${value}`);
  return n;
}

function read(bundle, name) {
  try {
    return readFileSync(join(bundle, name));
  } catch (e) {
    throw new MpeeError(`${join(bundle, name)}: cannot be read (${e.code ?? e.message})`);
  }
}

async function main() {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        threshold: { type: "string" }, "keep-ratio": { type: "string" }, policy: { type: "string" },
        threads: { type: "string" }, pairs: { type: "boolean", default: false },
      },
    });
  } catch (e) {
    throw new MpeeError(`${e.message} (${USAGE})`);
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new MpeeError(`give one bundle folder (${USAGE})`);
  const bundle = positionals[0];
  let manifest;
  try {
    manifest = JSON.parse(read(bundle, "manifest.json").toString("utf8"));
  } catch (e) {
    throw e instanceof MpeeError ? e : new MpeeError(`${join(bundle, "manifest.json")}: not JSON (${e.message})`);
  }
  if (!manifest.single_graph) {
    throw new MpeeError(`${bundle}: this bundle has no single graph (mpee.onnx); export it without --no-single-graph`);
  }
  const point = operatingPoint(manifest, {
    threshold: number(values.threshold, "--threshold"), keepRatio: number(values["keep-ratio"], "--keep-ratio"),
    policy: values.policy ?? null,
  });
  const threads = number(values.threads, "--threads") ?? 1;
  if (!Number.isInteger(threads) || threads < 1) throw new MpeeError(`--threads must be a whole number >= 1`);
  const sha256 = async (bytes) => createHash("sha256").update(bytes).digest("hex");
  const tokenizerBytes = read(bundle, manifest.tokenizer.file);
  const graphBytes = read(bundle, manifest.single_graph.file);
  await checkSealed(manifest, manifest.tokenizer.file, tokenizerBytes, sha256);
  await checkSealed(manifest, manifest.single_graph.file, graphBytes, sha256);
  const graph = await MpeeGraph.open(ort, Tokenizer, manifest, JSON.parse(tokenizerBytes.toString("utf8")),
    graphBytes, { intraOpNumThreads: threads, interOpNumThreads: 1 });
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    const [text, pair] = values.pairs ? line.split("\t", 2) : [line, null];
    process.stdout.write(JSON.stringify(await graph.classify(text, pair ?? null, point)) + "\n");
  }
}

main().catch((e) => {
  const message = e instanceof MpeeError ? e.message : `${e.name}: ${e.message}`;
  process.stderr.write(`Error: ${message.split("\n")[0]}\n`);
  process.exit(2);
});
