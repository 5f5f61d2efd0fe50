// The web example: load a bundle (default /bundle/, or ?bundle=URL on the same site), check its seal, and
// classify typed text with its single graph in onnxruntime-web's wasm backend. window.mpee exposes the same
// classify for scripts (the tests drive the page through it).
import * as ort from "onnxruntime-web";
import { Tokenizer } from "@huggingface/tokenizers";

import { checkSealed, MpeeGraph, operatingPoint } from "../js/mpee.mjs";

const $ = (id) => document.getElementById(id);
const base = new URL(new URLSearchParams(location.search).get("bundle") ?? "/bundle/", location.href);

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
// Threads need a cross-origin isolated page (serve.py sends the headers); elsewhere one thread. ?threads=N sets it.
const asked = Number(new URLSearchParams(location.search).get("threads"));
ort.env.wasm.numThreads = asked >= 1 ? asked : self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

async function fetched(name, as) {
  const r = await fetch(new URL(name, base));
  if (!r.ok) throw new Error(`${new URL(name, base)}: HTTP ${r.status}`);
  return as === "json" ? r.json() : new Uint8Array(await r.arrayBuffer());
}

const sha256 = async (bytes) =>
  Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)), (b) => b.toString(16).padStart(2, "0")).join("");

async function load() {
  const manifest = await fetched("manifest.json", "json");
  const tokenizerBytes = await fetched(manifest.tokenizer.file);
  const graphBytes = await fetched(manifest.single_graph?.file ?? "mpee.onnx");
  await checkSealed(manifest, manifest.tokenizer.file, tokenizerBytes, sha256);
  await checkSealed(manifest, manifest.single_graph.file, graphBytes, sha256);
  const tokenizerJson = JSON.parse(new TextDecoder().decode(tokenizerBytes));
  const graph = await MpeeGraph.open(ort, Tokenizer, manifest, tokenizerJson, graphBytes,
    { executionProviders: ["wasm"] });
  return { manifest, graph, point: operatingPoint(manifest) };
}

function show(manifest, answer, ms) {
  const layers = manifest.model.num_layers;
  $("label").textContent = answer.label;
  $("probs").textContent = answer.probs.map((p, i) => `${manifest.model.labels[i]} ${p.toFixed(3)}`).join(" · ")
    + ` · ${ms.toFixed(1)} ms`;
  $("exit").textContent = `left at layer ${answer.exit_layer} of ${layers}`;
  const first = answer.tokens_per_layer[0];
  $("layers").replaceChildren(...Array.from({ length: layers }, (_, i) => {
    const row = document.createElement("tr");
    const ran = i < answer.exit_layer;
    const tokens = ran ? answer.tokens_per_layer[i] : 0;
    row.innerHTML = `<td>layer ${i + 1}</td><td style="width: 16rem"><div class="bar${ran ? "" : " skipped"}"
      style="width: ${ran ? (100 * tokens / first).toFixed(1) : 100}%"></div></td>
      <td class="${ran ? "" : "muted"}">${ran ? `${tokens} tokens` : "skipped"}</td>`;
    return row;
  }));
  $("answer").style.display = "block";
}

const ready = load();
window.mpee = {
  ready: ready.then(() => true),
  classify: async (text, pair = null) => {
    const { graph, point } = await ready;
    return graph.classify(text, pair, point);
  },
};

ready.then(({ manifest, graph, point }) => {
  $("status").textContent = `${manifest.model.family} · ${manifest.model.num_layers} layers · ${manifest.single_graph.precision}`
    + ` · task ${manifest.model.task} · ${point.policy} < ${point.threshold} · keep ${point.ratios.join("/")}`
    + ` · ${ort.env.wasm.numThreads} thread(s)`;
  $("go").disabled = false;
  const run = async () => {
    const t0 = performance.now();
    const answer = await graph.classify($("text").value, null, point);
    show(manifest, answer, performance.now() - t0);
  };
  $("go").addEventListener("click", run);
}).catch((e) => {
  $("status").textContent = `Error: ${e.message}`;
  $("status").style.color = "#b00";
});
