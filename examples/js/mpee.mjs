// MPEE from any onnxruntime host: a bundle's single graph (mpee.onnx: the exits and the token pruning inside one
// graph, docs/design.md "The single graph") and the bundle's text rules, as mpee_runtime applies them. Host-free:
// the caller passes its onnxruntime (onnxruntime-node or onnxruntime-web) and the tokenizers.js Tokenizer class,
// and reads the files its own way (examples/node/classify.mjs, examples/web/app.mjs).
//
// The rules ported from runtime/mpee_runtime/text (one home each there; keep these in step):
// - a text longer than max_chars characters is cut first (readers.cut_text): at a word boundary, or keeping its
//   head and tail for the head+tail rule;
// - tokens are cut to max_length by the bundle's truncation rule (truncation.py): `head` keeps the first ones,
//   `head+tail` the first quarter of the budget and the last three quarters; a pair is shared longest-first.

export const POLICIES = ["entropy", "normalized_entropy", "max_prob", "patience", "depth"];   // core/policy.py
export const WORD_CHARS = 100;          // readers.WORD_CHARS: WordPiece's max_input_chars_per_word
const CUT_AT = [" ", "\t", "\n", "\r"];  // readers._CUT_AT

export class MpeeError extends Error {}

export function maxCharsFor(maxLength, wordChars = WORD_CHARS) {
  return (wordChars + 1) * (maxLength + 1);
}

// Python's str.find / str.rfind of one character within [start, end), on an array of code points.
function find(chars, c, start, end) {
  for (let i = start; i < Math.min(end, chars.length); i++) if (chars[i] === c) return i;
  return -1;
}
function rfind(chars, c, start, end) {
  for (let i = Math.min(end, chars.length) - 1; i >= start; i--) if (chars[i] === c) return i;
  return -1;
}

// readers.cut_text: [text limited to maxChars characters (code points, as Python counts them), whether cut].
export function cutText(text, maxChars, wordChars = WORD_CHARS, tail = false) {
  const chars = Array.from(text);
  if (maxChars == null || chars.length <= maxChars) return [text, false];
  if (tail) {
    const headChars = Math.floor(maxChars / 4);
    const [head] = cutText(text, headChars, wordChars);
    const rest = chars.slice(chars.length - (maxChars - headChars - 1));
    const found = CUT_AT.map((c) => find(rest, c, 0, wordChars + 1)).filter((i) => i >= 0);
    const k = found.length ? Math.min(...found) : -1;
    return [head + " " + (k >= 0 ? rest.slice(k + 1) : rest).join(""), true];
  }
  const lo = Math.max(0, maxChars - wordChars - 1);
  const k = Math.max(...CUT_AT.map((c) => rfind(chars, c, lo, maxChars + 1)));
  return [chars.slice(0, k >= 0 ? k : maxChars).join(""), true];
}

export function headTokens(keep) {
  return Math.floor((keep + 3) / 4);
}

// truncation.pair_budgets: the tokens each side of a pair keeps, longest-first.
export function pairBudgets(na, nb, budget, aLonger = null) {
  if (na + nb <= budget) return [na, nb];
  aLonger = aLonger == null ? na > nb : aLonger;
  let short = aLonger ? nb : na;
  let long;
  if (2 * short > budget) {
    short = Math.floor(budget / 2);
    long = budget - short;
  } else {
    long = budget - short;
  }
  return aLonger ? [long, short] : [short, long];
}

// truncation._cut, on token strings.
function cutTokens(tokens, keep, truncation) {
  if (tokens.length <= keep) return tokens;
  if (truncation === "head" || keep < 2) return tokens.slice(0, keep);
  const head = headTokens(keep);
  return tokens.slice(0, head).concat(tokens.slice(tokens.length - (keep - head)));
}

// The bundle's text rules on a tokenizers.js Tokenizer (built from the bundle's tokenizer.json).
export class BundleText {
  // `wordChars`: the tokenizer's longest word (tokenizer.json's model.max_input_chars_per_word, where it has one)
  constructor(tokenizer, model, wordChars = WORD_CHARS) {
    this.tokenizer = tokenizer;
    this.maxLength = model.max_length;
    this.truncation = model.truncation;
    this.wordChars = wordChars;
    this.maxChars = maxCharsFor(this.maxLength, this.wordChars);
  }

  cut(text) {
    return cutText(text, this.maxChars, this.wordChars, this.truncation !== "head");
  }

  specials(pair) {
    const p = this.tokenizer.post_processor;
    return p ? p.post_process([], pair ? [] : null, true).tokens.length : 0;
  }

  // {ids, types: arrays of numbers, cut: whether a text was cut by max_chars}
  encode(text, pair = null) {
    const [t, cut] = this.cut(text);
    let p = null;
    let cutPair = false;
    if (pair != null) [p, cutPair] = this.cut(pair);
    const opts = { add_special_tokens: false };
    const a = this.tokenizer.tokenize(t, opts);
    const b = p == null ? null : this.tokenizer.tokenize(p, opts);
    const budget = this.maxLength - this.specials(b != null);
    let ka = a;
    let kb = b;
    if (b == null) {
      ka = cutTokens(a, budget, this.truncation);
    } else {
      // encoder._encode_cut_pair: a side cut by max_chars counts as the longer; two cut sides by their kept parts
      let aLonger = null;
      if (cut || cutPair) aLonger = cut === cutPair ? a.length > b.length : cut;
      const [na, nb] = pairBudgets(a.length, b.length, budget, aLonger);
      ka = cutTokens(a, na, this.truncation);
      kb = cutTokens(b, nb, this.truncation);
    }
    const post = this.tokenizer.post_processor;
    const out = post
      ? post.post_process(ka, kb, true)
      : { tokens: kb ? ka.concat(kb) : ka, token_type_ids: null };
    const ids = out.tokens.map((tok) => this.tokenizer.token_to_id(tok));
    const types = out.token_type_ids ?? new Array(ids.length).fill(0);
    return { ids, types, cut: cut || cutPair };
  }
}

// core/policy.check_threshold.
export function checkThreshold(policy, threshold) {
  if (typeof threshold !== "number" || !Number.isFinite(threshold) || threshold < 0) {
    throw new MpeeError(`threshold must be a finite number >= 0, got ${threshold}`);
  }
  if ((policy === "normalized_entropy" || policy === "max_prob") && threshold > 1) {
    throw new MpeeError(`threshold for policy ${policy} must be in [0, 1], got ${threshold}`);
  }
  if ((policy === "patience" || policy === "depth") && !Number.isInteger(threshold)) {
    throw new MpeeError(`threshold for policy ${policy} is a whole number of layers, got ${threshold}`);
  }
  if (policy === "depth" && threshold < 1) {
    throw new MpeeError(`threshold for policy depth is a layer number >= 1, got ${threshold}`);
  }
}

// The operating point: the bundle's defaults (its calibrated threshold and policy, its trained keep ratios),
// each overridable, checked as mpee-run checks them (one clear error). With no knob given (or only the default
// policy), a bundle with length points (schema 9) runs each text at its length's point, as the runtime does
// (MpeeEngine.length_point): `byLength` holds them.
export function operatingPoint(manifest, { threshold = null, keepRatio = null, policy = null } = {}) {
  const points = manifest.exit.length_points;
  const byLength = points?.length && threshold == null && keepRatio == null
    && (policy == null || policy === manifest.exit.default_policy) ? points : null;
  policy = policy ?? manifest.exit.default_policy;
  if (!POLICIES.includes(policy)) {
    throw new MpeeError(`unknown exit policy ${policy} (choose from ${POLICIES.join(", ")})`);
  }
  threshold = threshold ?? (policy === manifest.exit.default_policy ? manifest.exit.default_threshold : null);
  if (threshold == null) throw new MpeeError(`policy ${policy} needs a threshold`);
  checkThreshold(policy, threshold);
  let ratios = manifest.pruning.keep_ratios;
  if (keepRatio != null) {
    if (!(keepRatio > 0 && keepRatio <= 1)) throw new MpeeError(`keep ratio must be in (0, 1], got ${keepRatio}`);
    ratios = ratios.map(() => keepRatio);
  }
  return { threshold, policy, ratios, byLength };
}

// The point a text of `tokens` tokens runs at (`point.byLength`: its length's row).
export function pointFor(point, tokens) {
  if (!point.byLength) return point;
  const row = point.byLength.find((p) => p.max_tokens == null || tokens <= p.max_tokens);
  const ratios = row.keep_ratio == null ? point.ratios : point.ratios.map(() => row.keep_ratio);
  return { ...point, threshold: row.threshold, ratios };
}

// One text (and pair) through the single graph: the fields of mpee-run's output lines.
export class MpeeGraph {
  constructor(ort, session, manifest, text) {
    this.ort = ort;
    this.session = session;
    this.manifest = manifest;
    this.text = text;
  }

  // `graphBytes`: mpee.onnx's bytes (a Uint8Array); `Tokenizer`: tokenizers.js's class; `options`: the
  // session's options (threads: intraOpNumThreads in Node, ort.env.wasm.numThreads on the web).
  static async open(ort, Tokenizer, manifest, tokenizerJson, graphBytes, options = {}) {
    if (!manifest.single_graph) {
      throw new MpeeError("this bundle has no single graph (mpee.onnx): export it without --no-single-graph");
    }
    const tokenizer = new Tokenizer(tokenizerJson, {});
    const session = await ort.InferenceSession.create(graphBytes, options);
    const wordChars = tokenizerJson.model?.max_input_chars_per_word ?? WORD_CHARS;
    return new MpeeGraph(ort, session, manifest, new BundleText(tokenizer, manifest.model, wordChars));
  }

  async classify(text, pair = null, knobs = operatingPoint(this.manifest)) {
    const { ids, types, cut } = this.text.encode(text, pair);
    const point = pointFor(knobs, ids.length);
    const T = this.ort.Tensor;
    const shape = [1, ids.length];
    const inputs = {
      input_ids: new T("int64", BigInt64Array.from(ids, BigInt), shape),
      token_type_ids: new T("int64", BigInt64Array.from(types, BigInt), shape),
      threshold: new T("float64", Float64Array.of(point.threshold), []),
      policy: new T("int64", BigInt64Array.of(BigInt(POLICIES.indexOf(point.policy))), []),
      keep_ratios: new T("float32", Float32Array.from(point.ratios), [point.ratios.length]),
    };
    const feeds = {};
    for (const name of this.session.inputNames) feeds[name] = inputs[name];
    const out = await this.session.run(feeds);
    const probs = Array.from(out.probs.data);
    const index = probs.indexOf(Math.max(...probs));   // the first of equal maxima, as numpy's argmax
    return {
      label: this.manifest.model.labels[index],
      label_index: index,
      probs,
      exit_layer: Number(out.exit_layer.data[0]),
      tokens_per_layer: Array.from(out.tokens_per_layer.data, Number),
      ffn_tokens_per_layer: Array.from(out.ffn_tokens_per_layer.data, Number),
      chars_cut: cut,
    };
  }
}

// The sha256 (hex) the manifest records for a file, checked against its bytes with the host's digest
// (`digestHex`: bytes -> Promise<hex>): a bundle is sealed (docs/bundle.md); a changed file is refused.
export async function checkSealed(manifest, name, bytes, digestHex) {
  const entry = name === manifest.tokenizer.file ? manifest.tokenizer : manifest.single_graph;
  const got = await digestHex(bytes);
  if (got !== entry.sha256) {
    throw new MpeeError(`${name}: sha256 ${got.slice(0, 12)}... is not the manifest's ${entry.sha256.slice(0, 12)}...`);
  }
}
