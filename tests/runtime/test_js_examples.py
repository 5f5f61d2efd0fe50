"""The single graph from JavaScript, no Python. Node.js (examples/node: onnxruntime-node, tokenizers.js): the
answers of mpee-run on 200 texts, at the bundle's point and at points with deep exits and pruning, texts and
pairs; the text rules (input limit, both truncation rules, pairs) ported to JavaScript give the runtime's ids;
bad input is one `Error:` line. The browser (examples/web: onnxruntime-web's wasm in headless Chromium, driven by
selenium): the page loads the bundle, checks its seal and gives mpee-run's answers. Needs node, `npm ci` in
examples/node and examples/web (scripts/test.sh runs them where npm exists), Chromium and chromedriver."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from make_bundle import WORDS

from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.text.encoder import TextEncoder, open_tokenizer

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "examples" / "node"
WEB_DIR = ROOT / "examples" / "web"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None or not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir(),
                                reason="needs node and `npm ci --prefix examples/node`")
PROB_TOL = 1e-4
N_TEXTS = 200


def _texts(seed: int, n: int) -> list[str]:
    """Texts of the tiny vocabulary's words, unknown words, punctuation and non-ASCII, 1 to 40 words, and one in
    ten longer than the bundle's input limit (cut before tokenizing)."""
    rng = random.Random(seed)
    words = [w for w in WORDS if not w.startswith("[") and not w.startswith("##")] + ["zebra", "naïve", "🙂", "x"]
    out = []
    for i in range(n):
        k = rng.randint(3000, 3400) if i % 10 == 9 else rng.randint(1, 40)   # the limit: 101 * 25 = 2,525 characters
        out.append(" ".join(rng.choice(words) for _ in range(k)))
    return out


def _node(*args: str, stdin: str = "", cwd: Path = NODE_DIR) -> subprocess.CompletedProcess:
    return subprocess.run([NODE, *args], input=stdin, check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _mpee_run(bundle: Path, rows: list[dict], tmp_path: Path, *flags: str) -> list[dict]:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "mpee_runtime", str(bundle), "--input", str(src), "--output",
                           str(out), "--threads", "1", *flags], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


@needs_node
@pytest.mark.parametrize("flags", [(), ("--threshold", "0", "--keep-ratio", "0.5"), ("--policy", "patience",
                                                                                      "--threshold", "1")],
                         ids=["bundle_point", "full_depth_pruned", "patience"])
@pytest.mark.parametrize("pairs", [False, True], ids=["texts", "pairs"])
def test_node_example_gives_mpee_runs_answers(built, tmp_path, flags, pairs):
    bundle = built / "bundle"
    texts = _texts(1, N_TEXTS)
    rows = [{"text": t} for t in texts]
    lines = texts
    if pairs:
        seconds = _texts(2, N_TEXTS)
        rows = [{"text": t, "text_pair": p} for t, p in zip(texts, seconds)]
        lines = [f"{t}\t{p}" for t, p in zip(texts, seconds)]
    want = _mpee_run(bundle, rows, tmp_path, *flags)
    done = _node("classify.mjs", str(bundle), *flags, *(["--pairs"] if pairs else []), stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(got) == len(want) == N_TEXTS
    assert any(g["chars_cut"] for g in got)
    for g, w in zip(got, want):
        assert (g["label"], g["exit_layer"]) == (w["label"], w["exit_layer"]), (g, w)
        assert g["tokens_per_layer"] == w["tokens_per_layer"] and g["ffn_tokens_per_layer"] == w["ffn_tokens_per_layer"]
        assert max(abs(a - b) for a, b in zip(g["probs"], w["probs"])) <= PROB_TOL
        assert g["chars_cut"] == w.get("chars_cut", False)
    if flags:   # the point that runs every layer and prunes: the graph's whole path was taken
        assert {g["exit_layer"] for g in got} == {max(g["exit_layer"] for g in got)} or "patience" in flags
        assert any(len(set(g["tokens_per_layer"])) > 1 for g in got)


ENCODE_JS = """
import { readFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";
import { BundleText } from "../js/mpee.mjs";
const [tokenizerPath, model, rowsPath] = process.argv.slice(1);
const json = JSON.parse(readFileSync(tokenizerPath, "utf8"));
const text = new BundleText(new Tokenizer(json, {}), JSON.parse(model), json.model.max_input_chars_per_word);
for (const [a, b] of JSON.parse(readFileSync(rowsPath, "utf8"))) {
  const e = text.encode(a, b);
  process.stdout.write(JSON.stringify([e.ids, e.types, e.cut]) + "\\n");
}
"""


@needs_node
@pytest.mark.parametrize("truncation", ["head", "head+tail"])
def test_text_rules_in_javascript_give_the_runtimes_ids(built, tmp_path, truncation):
    """Both truncation rules, single texts and pairs (either side or both past the input limit): the JavaScript
    port (examples/js/mpee.mjs) gives mpee_runtime's ids, token types and cut flags."""
    bundle = built / "bundle"
    manifest = Manifest.load(bundle, verify=False)
    encoder = TextEncoder(open_tokenizer(bundle, manifest) if truncation == "head" else _whole(bundle, manifest),
                          manifest.model.max_length, truncation)
    a, b = _texts(3, 120), _texts(4, 120)
    rows = [(t, None) for t in a[:60]] + list(zip(a[60:], b[60:])) + [(a[9], b[19]), (a[1], b[9])]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    model = json.dumps({"max_length": manifest.model.max_length, "truncation": truncation})
    done = _node("--input-type=module", "-e", ENCODE_JS, str(bundle / manifest.tokenizer.file), model,
                 str(tmp_path / "rows.json"))
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(got) == len(rows)
    for (text, pair), (ids, types, cut) in zip(rows, got):
        want = encoder.encode(text, pair)
        assert ids == want.ids[0].tolist() and types == want.types[0].tolist() and cut == want.cut, (text[:80], pair)
    assert sum(cut for _, _, cut in got) >= 10


def _whole(bundle: Path, manifest: Manifest):
    """The bundle's tokenizer without its own truncation (the head+tail rule truncates itself)."""
    tokenizer = open_tokenizer(bundle, manifest)
    tokenizer.no_truncation()
    return tokenizer


@needs_node
@pytest.mark.parametrize("args, message", [
    (["/no/such/bundle"], "manifest.json: cannot be read"),
    (["BUNDLE", "--policy", "max_prob", "--threshold", "2"], "must be in [0, 1]"),
    (["BUNDLE", "--keep-ratio", "0"], "keep ratio must be in (0, 1]"),
    (["BUNDLE", "--threshold", "x"], "--threshold must be a number"),
    (["BUNDLE", "--bogus"], "Unknown option"),
    (["BUNDLE", "BUNDLE"], "give one bundle folder"),
    (["TAMPERED"], "sha256"),
])
def test_node_example_bad_input_is_one_error_line(built, tmp_path, args, message):
    tampered = Path(shutil.copytree(built / "bundle", tmp_path / "tampered"))
    graph = tampered / Manifest.load(tampered, verify=False).single_graph.file
    graph.write_bytes(graph.read_bytes() + b"\0")
    args = [str(built / "bundle") if a == "BUNDLE" else str(tampered) if a == "TAMPERED" else a for a in args]
    done = _node("classify.mjs", *args, stdin="a good film\n")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


# ---------------------------------------------------------------- the browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (the system's package) under chromedriver, driven by selenium."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    if not (WEB_DIR / "node_modules" / "onnxruntime-web").is_dir():
        pytest.skip("needs `npm ci --prefix examples/web`")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage",
                 "--window-size=900,700"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture
def web_server(built):
    """examples/web/serve.py on a free port, serving the tiny bundle."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(WEB_DIR / "serve.py"), str(built / "bundle"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "serving" in proc.stdout.readline(), proc.stderr.read()
    yield f"http://localhost:{port}"
    proc.terminate()
    proc.communicate(timeout=10)


READY_JS = "const done = arguments[arguments.length - 1]; window.mpee.ready.then(() => done('ok'), e => done(e.message));"
CLASSIFY_JS = ("const done = arguments[arguments.length - 1]; "
               "Promise.all(arguments[0].map(([t, p]) => window.mpee.classify(t, p))).then(done, e => done(e.message));")


def test_web_page_gives_mpee_runs_answers(built, browser, web_server, tmp_path):
    """The page loads the bundle in headless Chromium (onnxruntime-web, wasm), checks its seal, and classifies
    texts and pairs as mpee-run does; typed text and the button show the label, the exit layer and the tokens of
    each layer."""
    texts, seconds = _texts(5, 24), _texts(6, 24)
    rows = [(t, None) for t in texts[:12]] + list(zip(texts[12:], seconds[12:]))
    want = _mpee_run(built / "bundle", [{"text": t, **({"text_pair": p} if p else {})} for t, p in rows], tmp_path)
    browser.get(web_server + "/web/")
    assert browser.execute_async_script(READY_JS) == "ok"
    got = browser.execute_async_script(CLASSIFY_JS, [list(r) for r in rows])
    assert isinstance(got, list), got
    for g, w in zip(got, want):
        assert (g["label"], g["exit_layer"], g["tokens_per_layer"]) == (w["label"], w["exit_layer"],
                                                                        w["tokens_per_layer"])
        assert max(abs(a - b) for a, b in zip(g["probs"], w["probs"])) <= PROB_TOL
    text = browser.find_element("id", "text")
    text.clear()
    text.send_keys(texts[0])
    browser.find_element("id", "go").click()
    label = browser.find_element("id", "label")
    for _ in range(100):
        if label.text:
            break
        time.sleep(0.05)
    layers = built_layers(built)
    assert label.text == want[0]["label"]
    assert browser.find_element("id", "exit").text == f"left at layer {want[0]['exit_layer']} of {layers}"
    assert browser.save_screenshot(str(tmp_path / "page.png"))


def built_layers(built: Path) -> int:
    return Manifest.load(built / "bundle", verify=False).model.num_layers


def test_web_page_refuses_a_tampered_bundle(built, browser, tmp_path):
    """A graph changed since the export is refused on the page, in one line, and nothing is classified."""
    import socket
    tampered = Path(shutil.copytree(built / "bundle", tmp_path / "tampered"))
    graph = tampered / Manifest.load(tampered, verify=False).single_graph.file
    graph.write_bytes(graph.read_bytes() + b"\0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(WEB_DIR / "serve.py"), str(tampered), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "serving" in proc.stdout.readline()
        browser.get(f"http://localhost:{port}/web/")
        assert "sha256" in browser.execute_async_script(READY_JS)
        assert browser.find_element("id", "status").text.startswith("Error: ")
        assert not browser.find_element("id", "go").is_enabled()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@needs_node
def test_node_example_applies_length_points(built, tmp_path):
    """A bundle with length points (schema 9): the Node example runs each text at its length's point, as mpee-run."""
    from test_length_points import POINTS, _with_points
    from test_length_points import _texts as bucketed_texts
    bundle = _with_points(built / "bundle", tmp_path / "points", POINTS)
    texts = bucketed_texts()
    want = _mpee_run(bundle, [{"text": t} for t in texts], tmp_path)
    done = _node("classify.mjs", str(bundle), stdin="\n".join(texts) + "\n")
    assert done.returncode == 0, done.stderr
    got = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(g["exit_layer"], g["tokens_per_layer"]) for g in got] == [(w["exit_layer"], w["tokens_per_layer"])
                                                                       for w in want]
    lengths = [w["tokens_per_layer"][0] for w in want]   # every bucket of POINTS (6, 12, longer) is exercised
    assert min(lengths) <= 6 and any(6 < n <= 12 for n in lengths) and max(lengths) > 12
