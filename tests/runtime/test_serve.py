"""mpee-serve on the tiny bundle (no torch): PyTorch's and mpee-run's answers over HTTP, dynamic batching, the
summary and metrics routes, each protection (400, 413, 503 + Retry-After, 504, a client that leaves, a failing
request, SIGTERM, a bundle that fails verification), the full-model mode and a smoke run of the load test."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from make_bundle import TEXTS

from mpee_runtime.bundle.contract import MANIFEST
from mpee_runtime.bundle.reference import FUSED
from mpee_runtime.cli import run as cli
from mpee_runtime.core.engine import MpeeEngine
from mpee_runtime.core.policy import POLICIES
from mpee_runtime.errors import MpeeRuntimeError
from mpee_runtime.serve.app import STATUS_CLIENT_GONE, make_app
from mpee_runtime.serve.backends import FullModelBackend, MpeeBackend
from mpee_runtime.serve.cli import main
from mpee_runtime.serve.guards import Guards
from mpee_runtime.serve.settings import ServeSettings

_NO_EXTRA = "the serve extra is not installed: pip install './runtime[serve]'"
httpx = pytest.importorskip("httpx", reason=_NO_EXTRA)
pytest.importorskip("starlette", reason=_NO_EXTRA)
pytest.importorskip("uvicorn", reason=_NO_EXTRA)
prometheus_client = pytest.importorskip("prometheus_client", reason=_NO_EXTRA)
prometheus_parser = pytest.importorskip("prometheus_client.parser", reason=_NO_EXTRA)

PROB_TOL = 1e-5
ROOT = Path(__file__).resolve().parents[2]
PAIRS = [{"text": t, **({"text_pair": p} if p is not None else {})} for t, p in TEXTS]


@pytest.fixture(scope="module")
def engine(built) -> MpeeEngine:
    return MpeeEngine(built / "bundle", threads=1)


@asynccontextmanager
async def serving(app, wait_ready: bool = True):
    """The app's lifespan (its batcher running) and an async client on it, for concurrent requests."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=30) as c:
            while wait_ready and not app.state.batcher.ready:
                await asyncio.sleep(0.005)
            yield c


class SyncClient:
    """`serving(app)` in an event loop of its own thread, called synchronously (what Starlette's TestClient does;
    it is moving to another HTTP package, so the tests do not depend on it)."""

    def __init__(self, app, wait_ready: bool = True) -> None:
        self.app, self.loop = app, asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._serving = serving(app, wait_ready)
        self.client = self._call(self._serving.__aenter__())

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def get(self, path: str, **kw) -> httpx.Response:
        return self._call(self.client.get(path, **kw))

    def post(self, path: str, **kw) -> httpx.Response:
        return self._call(self.client.post(path, **kw))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._call(self._serving.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def client(engine):
    """A server with the default limits (a short batching wait), warmed up."""
    with SyncClient(make_app(MpeeBackend(engine), ServeSettings(max_wait_ms=1), threads=1)) as c:
        yield c


class Gated:
    """A backend that holds each call until `gate` is set (the worker stays busy), recording the texts it ran;
    `fail_on` makes a call holding that text raise. Everything else is the real backend's."""

    def __init__(self, inner, fail_on: str | None = None) -> None:
        self.inner, self.fail_on = inner, fail_on
        self.gate, self.busy = threading.Event(), threading.Event()
        self.seen: list[str] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, rows, knobs, pad_slack=None):
        self.busy.set()
        self.gate.wait(10)
        self.seen += [r.text for r in rows]
        if self.fail_on in (r.text for r in rows):
            raise RuntimeError("boom")
        return self.inner.run(rows, knobs, pad_slack)


def _metric(app, name: str, **labels) -> float:
    """One sample of the app's metrics, as /metrics would show it (0 when absent)."""
    text = prometheus_client.generate_latest(app.state.metrics.registry).decode()
    for family in prometheus_parser.text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def _same(got: dict, want, tol: float = PROB_TOL) -> None:
    """An HTTP answer against a Prediction (or mpee-run's JSON) for the same row and knobs."""
    want = want if isinstance(want, dict) else want.to_dict()
    for key in ("label", "label_index", "exit_layer", "tokens_per_layer", "ffn_tokens_per_layer", "flops",
                "chars_cut"):
        assert got[key] == want[key], key
    assert got["rho"] == pytest.approx(want["rho"]) and got["rho_pad128"] == pytest.approx(want["rho_pad128"])
    np.testing.assert_allclose(got["probs"], want["probs"], atol=tol, rtol=0)


# ---------------------------------------------------------------- answers
def test_answers_are_pytorchs(client, expected):
    """Every text and pair of the PyTorch record at each of its settings, one request each."""
    for e in expected:
        body = {"text": e["text"], "threshold": e["threshold"], "policy": "entropy", "keep_ratio": e["keep_ratio"]}
        if e["pair"] is not None:
            body["text_pair"] = e["pair"]
        r = client.post("/v1/classify", json=body)
        assert r.status_code == 200, r.text
        got = r.json()
        assert (got["label"], got["exit_layer"], got["tokens_per_layer"]) == (e["label"], e["exit_layer"],
                                                                             e["tokens_per_layer"])
        np.testing.assert_allclose(got["probs"], e["probs"], atol=PROB_TOL, rtol=0)
        assert got["server_ms"] >= got["compute_ms"] > 0 and got["batch_rows"] >= 1


def test_answers_are_mpee_runs(client, built, capsys):
    """The same text and knobs through mpee-run (its JSON line) and through the server; a text over the engine's
    max_chars is cut alike."""
    long = " ".join(["great fun film"] * 300)
    for text, pair, knobs in [("a boring film", "it was bad", {"threshold": 0.6, "keep_ratio": 0.5}),
                              (long, None, {"policy": "max_prob", "threshold": 0.5})]:
        flags = [x for k, v in knobs.items() for x in (f"--{k.replace('_', '-')}", str(v))]
        pair_flag = ["--pair", pair] if pair is not None else []
        assert cli.main([str(built / "bundle"), text, *pair_flag, *flags, "--threads", "1"]) == 0
        want = json.loads(capsys.readouterr().out)
        _same(client.post("/v1/classify", json={"text": text, "text_pair": pair, **knobs}).json(), want)
    assert want["chars_cut"] is True


def test_inputs_answer_in_order_with_a_schedule(client, engine):
    """`inputs` answers `predictions` in order; a keep-ratio schedule (one ratio per pruning layer) applies."""
    r = client.post("/v1/classify", json={"inputs": PAIRS, "keep_ratio": [0.5, 0.8], "threshold": 0.6})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert len(preds) == len(TEXTS)
    for got, (t, p) in zip(preds, TEXTS):
        _same(got, engine.predict(t, p, keep_ratio=(0.5, 0.8), threshold=0.6))


def test_concurrent_requests_share_batches(engine):
    """Requests waiting together run in shared predict_batch calls (one per group of equal knobs), each row with
    its batch-1 answer; a request of more rows than max_batch spans batches and keeps its order. A first request
    holds the worker until every other one is queued, so the batches do not depend on timing."""
    backend = Gated(MpeeBackend(engine))
    app = make_app(backend, ServeSettings(max_batch=8, max_wait_ms=0))
    knob_sets = [{"threshold": 0.6}, {"threshold": 0.0, "keep_ratio": 0.3}, {"policy": "patience", "threshold": 1}]
    jobs = [(PAIRS[i % len(PAIRS)], knob_sets[i % len(knob_sets)]) for i in range(12)]
    big = {"inputs": PAIRS * 4, "threshold": 0.66, "keep_ratio": 0.5}

    async def go():
        async with serving(app) as c:
            plug = asyncio.ensure_future(c.post("/v1/classify", json={"text": "it"}))
            while not backend.busy.is_set():
                await asyncio.sleep(0.005)
            rest = asyncio.gather(c.post("/v1/classify", json=big),
                                  *(c.post("/v1/classify", json={**row, **k}) for row, k in jobs))
            while app.state.batcher.queued_rows < 12 + 20:
                await asyncio.sleep(0.005)
            backend.gate.set()
            return await plug, await rest
    plug, (big_r, *small) = asyncio.run(go())
    assert plug.status_code == 200
    for r, (row, knobs) in zip(small, jobs):
        assert r.status_code == 200
        _same(r.json(), engine.predict(row["text"], row.get("text_pair"), **knobs))
    for got, row in zip(big_r.json()["predictions"], PAIRS * 4):
        _same(got, engine.predict(row["text"], row.get("text_pair"), threshold=0.66, keep_ratio=0.5))
    calls, rows = _metric(app, "mpee_batch_rows_count"), _metric(app, "mpee_batch_rows_sum")
    assert rows == 1 + 12 + 20          # every row once (the warm-up calls the engine, not the batcher)
    assert calls < 1 + 12 + 1           # fewer calls than requests: rows were batched
    assert max(r.json()["batch_rows"] for r in small) > 1
    assert max(got["batch_rows"] for got in big_r.json()["predictions"]) == 8


# ---------------------------------------------------------------- model, health, metrics
def test_model_summary(client, engine):
    m = client.get("/v1/model").json()
    assert m["mode"] == "mpee" and m["task"] == "rte" and m["labels"] == engine.labels
    assert m["precision"] == "fp32" and m["graph_ops"] == engine.manifest.export.graph_ops
    assert (m["default_policy"], m["default_threshold"]) == (engine.default_policy, engine.default_threshold)
    assert m["default_keep_ratios"] == {str(k): v for k, v in engine.default_keep_ratios.items()}
    assert m["supports_batches"] is True and m["num_layers"] == 3 and m["max_chars"] == engine.max_chars
    assert m["serving"]["max_batch"] == 16 and m["serving"]["threads"] == 1


def test_healthz_is_503_until_warmed_up(engine):
    backend = Gated(MpeeBackend(engine))
    backend.warm_up = lambda rows: backend.gate.wait(10)
    app = make_app(backend, ServeSettings())
    with SyncClient(app, wait_ready=False) as c:
        r = c.get("/healthz")
        assert r.status_code == 503 and r.json()["error"] == "warming up"
        backend.gate.set()
        deadline = time.monotonic() + 10
        while c.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline
        assert c.get("/healthz").json() == {"status": "ok"}
    assert app.state.batcher.closing


def test_metrics_count_requests_exits_batches_and_queue(client):
    client.post("/v1/classify", json={"text": "the movie is great", "threshold": 0.0})
    client.post("/v1/classify", json={"text": 3})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in prometheus_parser.text_string_to_metric_families(r.text) for s in f.samples}
    assert samples[("mpee_requests_total", (("route", "/v1/classify"), ("status", "200")))] >= 1
    assert samples[("mpee_requests_total", (("route", "/v1/classify"), ("status", "400")))] >= 1
    assert samples[("mpee_exit_layer_bucket", (("le", "1.0"),))] >= 1     # threshold 0: exits at layer 1
    assert samples[("mpee_exit_layer_count", ())] >= 2
    assert samples[("mpee_request_duration_seconds_count", (("route", "/v1/classify"),))] >= 2
    assert ("mpee_batch_rows_bucket", (("le", "16.0"),)) in samples
    assert samples[("mpee_queue_rows", ())] == 0
    client.get("/nowhere")
    assert 'route="other",status="404"' in client.get("/metrics").text


# ---------------------------------------------------------------- 400 and 413
BAD = [
    (b"{not json", "body", "not valid JSON"),
    (b'{"text": "\xff"}', "body", "not UTF-8"),
    (b'{"text": "a", "threshold": NaN}', "body", "not valid JSON"),
    (b"[" * 5000 + b"]" * 5000, "body", ""),
    (b'[{"text": "a"}]', "body", "must be a JSON object"),
    (b"{}", "text", "either text"),
    (b'{"text": "a", "inputs": [{"text": "b"}]}', "text", "either text"),
    (b'{"text": 3}', "text", "must be a string, got number"),
    (b'{"text": null}', "text", "must be a string, got null"),
    (b'{"text": "a", "text_pair": ["b"]}', "text_pair", "must be a string, got array"),
    (b'{"text": "\\ud800 lone"}', "text", "lone surrogate"),
    (b'{"inputs": "a"}', "inputs", "non-empty array"),
    (b'{"inputs": []}', "inputs", "an empty array"),
    (b'{"inputs": [3]}', "inputs[0]", "must be an object"),
    (b'{"inputs": [{"text": "a"}, {"text_pair": "b"}]}', "inputs[1].text", "missing"),
    (b'{"inputs": [{"text": "a"}, {"txt": "b"}]}', "inputs[1].txt", "unknown field"),
    (b'{"inputs": [{"text": "a"}], "text_pair": "b"}', "text_pair", "each input has its own"),
    (b'{"text": "a", "treshold": 0.5}', "treshold", "unknown field"),
    (b'{"text": "a", "threshold": "high"}', "threshold", "must be a number, got string"),
    (b'{"text": "a", "threshold": true}', "threshold", "must be a number, got boolean"),
    (b'{"text": "a", "threshold": -1}', "threshold", "threshold must be a finite number >= 0, got -1"),
    (b'{"text": "a", "policy": "patience", "threshold": 0.5}', "threshold", "whole number of layers"),
    (b'{"text": "a", "policy": "max_prob", "threshold": 2}', "threshold", "must be in [0, 1]"),
    (b'{"text": "a", "policy": "vibes"}', "policy", "unknown exit policy 'vibes'"),
    (b'{"text": "a", "policy": 1}', "policy", "must be a string"),
    (b'{"text": "a", "keep_ratio": 1.5}', "keep_ratio", "keep ratio must be in (0, 1], got 1.5"),
    (b'{"text": "a", "keep_ratio": 0}', "keep_ratio", "keep ratio must be in (0, 1]"),
    (b'{"text": "a", "keep_ratio": [0.5]}', "keep_ratio", "needs 2 ratios"),
    (b'{"text": "a", "keep_ratio": [0.5, true]}', "keep_ratio", "array of numbers"),
    (b'{"text": "a", "keep_ratio": "all"}', "keep_ratio", "must be a number or an array"),
    # numbers no float holds: a 401-digit integer, and 1e400 (Python's JSON reads it as infinity)
    (b'{"text": "a", "threshold": 1' + b"0" * 400 + b"}", "threshold", "finite number >= 0, got 1000"),
    (b'{"text": "a", "policy": "depth", "threshold": 1' + b"0" * 400 + b"}", "threshold", "finite number"),
    (b'{"text": "a", "policy": "patience", "threshold": 1' + b"0" * 400 + b"}", "threshold", "finite number"),
    (b'{"text": "a", "threshold": 1e400}', "threshold", "finite number >= 0, got inf"),
    (b'{"text": "a", "keep_ratio": 1' + b"0" * 400 + b"}", "keep_ratio", "keep ratio must be in (0, 1]"),
    (b'{"text": "a", "keep_ratio": [0.5, 1' + b"0" * 400 + b"]}", "keep_ratio", "keep ratio must be in (0, 1]"),
]


@pytest.mark.parametrize("body, field, message", BAD, ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(BAD)])
def test_bad_requests_are_400_naming_the_field(client, body, field, message):
    r = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "\n" not in r.text and r.json()["field"] == field
    assert r.json()["error"].startswith(f"{field}: ") and message in r.json()["error"]


def _json_values():
    """Any JSON value: null, booleans, integers of any size, floats (1e308 and beyond read as infinity), strings
    (lone surrogates included), and arrays and objects of those, nested."""
    from hypothesis import strategies as st
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10 ** 300, max_value=10 ** 400),
                       st.floats(allow_nan=False), st.floats(min_value=1e300), st.text(max_size=40),
                       st.sampled_from(list(POLICIES) + ["", "entropy ", "\ud800"]))
    return st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=12)


def _request_bodies():
    """Bodies shaped like requests (text or inputs, knobs) with any JSON in any field, and any JSON at all."""
    from hypothesis import strategies as st
    value = _json_values()
    fields = st.fixed_dictionaries({}, optional={"text": st.one_of(st.text(max_size=60), value),
                                                 "text_pair": value, "inputs": st.one_of(
                                                     st.lists(st.fixed_dictionaries(
                                                         {"text": st.one_of(st.text(max_size=30), value)},
                                                         optional={"text_pair": value}), max_size=5), value),
                                                 "threshold": value, "keep_ratio": value, "policy": value})
    return st.one_of(fields, st.dictionaries(st.text(max_size=12), value, max_size=4), value)


def test_any_json_in_any_field_is_answered_or_refused_never_a_500(client):
    """A property over the request schema (hypothesis): whatever JSON a client sends, in whatever field, the
    answer is 200 or a 4xx with one JSON error line naming a field; never a 500."""
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=_request_bodies())
    def check(body):
        r = client.post("/v1/classify", content=json.dumps(body).encode(),
                        headers={"content-type": "application/json"})
        assert r.status_code in (200, 400, 413), (body, r.status_code, r.text)
        if r.status_code != 200:
            assert "\n" not in r.text and set(r.json()) == {"error", "field"}, r.text
    check()


KEY = "k3y-of-sixteen-chars"


def test_hosts_other_than_the_served_ones_are_421(engine):
    """DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends Host: evil.example; refused, counted."""
    cases = {Guards(): {"localhost:8000": 200, "127.0.0.1": 200, "[::1]:8000": 200, "127.0.0.2": 200,
                        "evil.example": 421, "10.0.0.5": 421, "": 421},
             Guards.of("0.0.0.0", ["api.internal"]): {"10.0.0.5:8000": 200, "api.internal": 200,
                                                       "evil.example": 421},
             Guards.of("192.168.1.4"): {"192.168.1.4:80": 200, "192.168.1.5": 421},
             Guards.of("127.0.0.1", ["*"]): {"evil.example": 200}}
    for guards, hosts in cases.items():
        app = make_app(MpeeBackend(engine), ServeSettings(max_wait_ms=1), guards=guards)
        with SyncClient(app) as c:
            for host, status in hosts.items():
                r = c.post("/v1/classify", json={"text": "a"}, headers={"host": host})
                assert r.status_code == status, (guards, host, r.text)
                if status == 421:
                    assert "\n" not in r.text and "is not served here" in r.json()["error"]
            refused = sum(s == 421 for s in hosts.values())
            assert _metric(app, "mpee_refusals_total", reason="host") == refused
            assert _metric(app, "mpee_requests_total", route="/v1/classify", status="421") == refused


def test_api_key_is_required_where_set(engine):
    for protect in (False, True):
        app = make_app(MpeeBackend(engine), ServeSettings(max_wait_ms=1),
                       guards=Guards.of("127.0.0.1", api_key=KEY, protect_healthz=protect))
        with SyncClient(app) as c:
            for headers in ({}, {"authorization": "Bearer wrong-key-of-16-chars"}, {"authorization": KEY},
                            {"authorization": f"Basic {KEY}"}, {"authorization": f"Bearer {KEY}x"}):
                r = c.post("/v1/classify", json={"text": "a"}, headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
                assert "\n" not in r.text and "API key" in r.json()["error"]
            ok = {"authorization": f"Bearer {KEY}"}
            assert c.post("/v1/classify", json={"text": "a"}, headers=ok).status_code == 200
            assert c.post("/v1/classify", json={"text": "a"}, headers={"authorization": f"bearer  {KEY} "}
                          ).status_code == 200
            for route in ("/metrics", "/v1/model"):
                assert c.get(route).status_code == 401 and c.get(route, headers=ok).status_code == 200
            assert c.get("/healthz").status_code == (401 if protect else 200)
            model = c.get("/v1/model", headers=ok)
            assert KEY not in model.text and model.json()["serving"]["auth"] == "bearer"
            assert _metric(app, "mpee_refusals_total", reason="auth") == 5 + 2 + protect


def test_a_post_must_say_it_is_json(client):
    """415 for a body that does not say it is JSON (a form or a no-cors fetch from a web page cannot say so)."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {} if content_type is None else {"content-type": content_type}
        r = client.post("/v1/classify", content=b'{"text": "a"}', headers=headers)
        assert r.status_code == 415 and "application/json" in r.json()["error"], content_type
    for content_type in ("application/json; charset=utf-8", "Application/JSON", "application/problem+json"):
        assert client.post("/v1/classify", content=b'{"text": "a"}',
                           headers={"content-type": content_type}).status_code == 200


def test_knob_messages_are_the_engines(client, engine):
    """Range errors are the engine's own words (what mpee-run prints after `Error:`)."""
    for body, call in [({"keep_ratio": 1.5}, lambda: engine.keep_ratio_feeds(1.5)),
                       ({"policy": "depth", "threshold": 0}, lambda: engine.exit_rule("depth", 0))]:
        with pytest.raises(MpeeRuntimeError) as e:
            call()
        assert str(e.value) in client.post("/v1/classify", json={"text": "a", **body}).json()["error"]


def test_size_limits_are_413(engine):
    settings = ServeSettings(max_body_bytes=300, max_text_chars=50, max_inputs=3)
    app = make_app(MpeeBackend(engine), settings)
    with SyncClient(app) as c:
        r = c.post("/v1/classify", content=b'{"text": "' + b"a " * 200 + b'"}',
                   headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["field"]) == (413, "body") and "at most 300" in r.json()["error"]
        r = c.post("/v1/classify", json={"text": "a", "text_pair": "b" * 51})
        assert (r.status_code, r.json()["field"]) == (413, "text_pair")
        r = c.post("/v1/classify", json={"inputs": [{"text": "a"}, {"text": "b" * 51}]})
        assert (r.status_code, r.json()["field"]) == (413, "inputs[1].text")
        r = c.post("/v1/classify", json={"inputs": [{"text": "a"}] * 4})
        assert (r.status_code, r.json()["field"]) == (413, "inputs") and "at most 3" in r.json()["error"]
        assert c.post("/v1/classify", json={"text": "b" * 50}).status_code == 200
    # A body without Content-Length (chunked) is cut off as it streams in.
    status, body = asyncio.run(_raw_post(app, [b'{"text": "', b"a" * 200, b"a" * 200, b'"}']))
    assert status == 413 and json.loads(body)["field"] == "body"


async def _raw_post(app, chunks: list[bytes], *, leave: asyncio.Event | None = None,
                    sent: asyncio.Event | None = None) -> tuple[int, bytes]:
    """POST /v1/classify straight into the ASGI app, the body in `chunks` with no Content-Length; after the body
    the client disconnects once `leave` is set (never when None). Runs the app's lifespan unless it runs."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/classify", "raw_path": b"/v1/classify", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 9), "server": ("t", 80)}
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    out: dict = {"body": b""}

    async def receive():
        if queue:
            return queue.pop(0)
        if sent is not None:
            sent.set()
        await (leave.wait() if leave is not None else asyncio.Event().wait())
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")
    if app.state.batcher._thread is None:
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)
    else:
        await app(scope, receive, send)
    return out["status"], out["body"]


# ---------------------------------------------------------------- 503, 504, a client that leaves, a failing request
def test_full_queue_is_503_with_retry_after(engine):
    backend = Gated(MpeeBackend(engine))
    backend.warm_up = lambda rows: None
    app = make_app(backend, ServeSettings(max_batch=1, max_wait_ms=0, max_queue=4, max_inputs=4))

    async def go():
        async with serving(app) as c:
            first = asyncio.ensure_future(c.post("/v1/classify", json={"text": "the movie is great"}))
            while not backend.busy.is_set():   # the worker holds the first row; the queue is empty
                await asyncio.sleep(0.005)
            queued = [asyncio.ensure_future(c.post("/v1/classify", json=b))
                      for b in ({"inputs": PAIRS[:3]}, {"text": "it"})]
            while app.state.batcher.queued_rows < 4:
                await asyncio.sleep(0.005)
            full = await c.post("/v1/classify", json={"text": "one too many"})
            backend.gate.set()
            return full, await first, await asyncio.gather(*queued)
    full, first, queued = asyncio.run(go())
    assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
    assert "queue full: 4 of 4 rows waiting" in full.json()["error"]
    assert first.status_code == 200 and all(r.status_code == 200 for r in queued)
    assert "one too many" not in backend.seen
    assert _metric(app, "mpee_requests_total", route="/v1/classify", status="503") == 1


def test_timeout_is_504_and_drops_the_rows(engine):
    backend = Gated(MpeeBackend(engine))
    backend.warm_up = lambda rows: None
    app = make_app(backend, ServeSettings(max_batch=1, max_wait_ms=0, timeout_s=0.3))

    async def go():
        async with serving(app) as c:
            first = asyncio.ensure_future(c.post("/v1/classify", json={"text": "the movie is great"}))
            while not backend.busy.is_set():
                await asyncio.sleep(0.005)
            late = await c.post("/v1/classify", json={"inputs": [{"text": "too late"}, {"text": "also late"}]})
            queued_after = app.state.batcher.queued_rows
            backend.gate.set()
            return late, queued_after, await first
    late, queued_after, first = asyncio.run(go())
    assert late.status_code == 504 and "within 0.3 s" in late.json()["error"]
    assert first.status_code == 504      # it waited as long for the gate: its answer came too late
    assert queued_after == 0 and _metric(app, "mpee_rows_dropped_total") == 2
    assert "too late" not in backend.seen and "also late" not in backend.seen


def test_a_client_that_leaves_frees_its_place(engine):
    backend = Gated(MpeeBackend(engine))
    backend.warm_up = lambda rows: None
    app = make_app(backend, ServeSettings(max_batch=1, max_wait_ms=0))

    async def go():
        async with serving(app) as c:
            first = asyncio.ensure_future(c.post("/v1/classify", json={"text": "the movie is great"}))
            while not backend.busy.is_set():
                await asyncio.sleep(0.005)
            leave, sent = asyncio.Event(), asyncio.Event()
            gone = asyncio.ensure_future(_raw_post(app, [b'{"inputs": [{"text": "bye"}, {"text": "bye bye"}]}'],
                                                   leave=leave, sent=sent))
            await sent.wait()
            while app.state.batcher.queued_rows < 2:
                await asyncio.sleep(0.005)
            leave.set()
            status, _ = await gone
            queued_after = app.state.batcher.queued_rows
            backend.gate.set()
            return status, queued_after, await first
    status, queued_after, first = asyncio.run(go())
    assert status == STATUS_CLIENT_GONE and queued_after == 0 and first.status_code == 200
    assert "bye" not in backend.seen and _metric(app, "mpee_rows_dropped_total") == 2
    assert _metric(app, "mpee_requests_total", route="/v1/classify", status="499") == 1


def test_a_failing_request_fails_alone(engine):
    """A call that raises is run again request by request: the others in its batch get their answers."""
    backend = Gated(MpeeBackend(engine), fail_on="boom")
    backend.gate.set()
    backend.warm_up = lambda rows: None
    app = make_app(backend, ServeSettings(max_batch=8, max_wait_ms=100))

    async def go():
        async with serving(app) as c:
            return await asyncio.gather(*(c.post("/v1/classify", json={"text": t})
                                          for t in ("a boring film", "boom", "it")))
    ok1, bad, ok2 = asyncio.run(go())
    assert bad.status_code == 500 and ok1.status_code == ok2.status_code == 200
    _same(ok1.json(), engine.predict("a boring film"))


# ---------------------------------------------------------------- the full model behind the same API
def _bag_model(path: Path, vocab: int) -> dict[str, np.ndarray]:
    """The tiny full model (`tiny_full_model.write_bag_model`) at `path`; returns its weights."""
    pytest.importorskip("onnx", reason="building a full-model graph needs onnx")
    from tiny_full_model import bag_weights, write_bag_model
    w = bag_weights(vocab, seed=3)
    write_bag_model(path, w)
    return w


@pytest.mark.parametrize("slack", [0.0, 0.25, 100.0])
def test_full_model_mode(engine, tmp_path, slack):
    """--full-model: the same API over the reference graph; every row runs all layers (rho 1), answers equal the
    graph's on the row alone (unpadded), however the batch is cut by length; knobs are refused."""
    path = tmp_path / FUSED
    w = _bag_model(path, engine.manifest.model.vocab_size)
    app = make_app(FullModelBackend(engine, path, threads=1), ServeSettings(max_wait_ms=50, pad_slack=slack))

    async def go():
        async with serving(app) as c:
            answers = await asyncio.gather(*(c.post("/v1/classify", json=row) for row in PAIRS))
            return answers, (await c.post("/v1/classify", json={"text": "a", "threshold": 0.5})), \
                (await c.get("/v1/model")).json()
    answers, knob, model = asyncio.run(go())
    for r, (t, p) in zip(answers, TEXTS):
        ids, types = engine.encode(t, p)
        logits = (w["words"][ids[0]] + w["types"][types[0]]).sum(axis=0) @ w["head"]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        got = r.json()
        np.testing.assert_allclose(got["probs"], probs, atol=1e-5, rtol=0)
        n = ids.shape[1]
        assert got["exit_layer"] == 3 and got["tokens_per_layer"] == [n] * 3 and got["rho"] == 1.0
    assert knob.status_code == 400 and knob.json()["field"] == "threshold"
    assert model["mode"] == "full" and model["full_model"] == FUSED and model["precision"] == "fp32"
    assert model["default_policy"] is None
    with pytest.raises(MpeeRuntimeError, match="no such file"):
        FullModelBackend(engine, tmp_path / "missing.onnx", threads=1)


# ---------------------------------------------------------------- the command
@pytest.mark.parametrize("flags, message", [
    (["--max-batch", "0"], "--max-batch must be >= 1, got 0"),
    (["--max-wait-ms", "-1"], "--max-wait-ms must be a finite number >= 0"),
    (["--timeout-s", "0"], "--timeout-s must be a finite number > 0"),
    (["--max-inputs", "300"], "--max-inputs (300) must be <= --max-queue (256)"),
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--workers", "0"], "--workers must be in 1..64, got 0"),
    (["--pad-slack", "-1"], "--pad-slack must be a finite number >= 0"),
    (["--max-batch", "many"], "argument --max-batch: invalid int value"),
    (["--api-key", "short"], "--api-key must be at least 16 printable ASCII characters"),
    (["--api-key", "sixteen chars with spaces"], "without spaces"),
    (["--protect-healthz"], "--protect-healthz needs an API key"),
    (["--api-key", KEY, "--api-key-file", "/nonexistent/key"], "give the API key once"),
    (["--api-key-file", "/nonexistent/key"], "--api-key-file /nonexistent/key: cannot be read"),
    (["--allowed-host", " "], "--allowed-host must not be empty"),
])
def test_bad_flags_are_one_error_line(built, capsys, flags, message):
    assert main([str(built / "bundle"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and message in err and err.count("\n") == 1


def test_missing_extra_is_one_error_line(built, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)   # import uvicorn now raises ImportError
    assert main([str(built / "bundle")]) == 2
    err = capsys.readouterr().err
    assert err == "Error: mpee-serve needs the serve extra (no module uvicorn): pip install 'mpee-runtime[serve]'\n"


def test_port_in_use_is_refused(built, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main([str(built / "bundle"), "--port", str(taken.getsockname()[1])]) == 2
    assert capsys.readouterr().err.startswith("Error: cannot listen on 127.0.0.1:")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(bundle: Path, port: int, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mpee_runtime.serve.cli", str(bundle), "--port", str(port),
                             "--threads", "1", *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _get(url: str, timeout: float = 5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_verification_failure_stops_before_listening(bundle):
    data = json.loads((bundle / MANIFEST).read_text())
    layer = bundle / data["graphs"][1]["file"]
    layer.write_bytes(layer.read_bytes() + b"\0")
    port = _free_port()
    proc = _start(bundle, port)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.startswith("Error: ") and "sha256" in err and err.count("\n") == 1
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_sigterm_finishes_what_is_in_flight_and_exits_0(built):
    """A request waiting for its batch (a long --max-wait-ms) when SIGTERM arrives still gets its answer, at once;
    then the server stops listening and exits 0."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(built / "bundle", port, "--max-wait-ms", "20000", "--max-batch", "64")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            try:
                if _get(url + "/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        answer: dict = {}

        def post() -> None:
            req = urllib.request.Request(url + "/v1/classify", data=json.dumps({"text": "a boring film"}).encode(),
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                answer.update(status=r.status, body=json.loads(r.read()), at=time.monotonic())
        t = threading.Thread(target=post)
        t.start()
        while b"mpee_queue_rows 1.0" not in _get(url + "/metrics")[1]:   # until the row waits in the queue
            assert time.monotonic() < deadline
            time.sleep(0.02)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert answer["status"] == 200 and answer["body"]["label"] in ("entailment", "not_entailment")
        assert answer["at"] - sent < 10      # not the 20 s batching wait: draining runs the queue at once
        assert proc.wait(30) == 0
        with pytest.raises(OSError):
            _get(url + "/healthz", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# ---------------------------------------------------------------- the load test, on the tiny bundle
def test_load_test_smoke(built, tmp_path, monkeypatch):
    """benchmarks/load_test.py end to end in seconds, in two server configurations (1 and 2 workers): a two-rate
    sweep, the 8-client check against mpee-run, a short soak on the best MPEE configuration, and (with onnx) the
    full model with its half-rate step on its best configuration; JSON and Markdown written, every server run
    exits 0, and the server's CPU and memory count every worker."""
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "benchmarks" / "load_test.py")
    load_test = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "load_test", load_test)   # its dataclasses look their module up
    spec.loader.exec_module(load_test)
    data = tmp_path / "dev.tsv"
    data.write_text("sentence1\tsentence2\tlabel\n" + "".join(f"{t}\t{p or 'it was fun'}\tentailment\n"
                                                              for t, p in TEXTS))
    argv = ["--bundle", str(built / "bundle"), "--data", str(data), "--out", str(tmp_path / "out"), "--rates",
            "10,20", "--step-s", "0.5", "--soak", "20", "--soak-rate", "40", "--check", "5", "--threads", "1",
            "--workers", "1,2", "--overload", "2", "--server-cpus", "0"]
    with_full = importlib.util.find_spec("onnx") is not None
    if with_full:
        _bag_model(tmp_path / FUSED, json.loads((built / "bundle" / MANIFEST).read_text())["model"]["vocab_size"])
        argv += ["--full-model", str(tmp_path / FUSED)]
    assert load_test.main(argv) == 0
    record = json.loads((tmp_path / "out" / "load_test.json").read_text())
    by = {r["target"]["name"]: r for r in record["targets"]}
    assert {"mpee_fp32_w1", "mpee_fp32_w2"} <= set(by) and by["mpee_fp32_w2"]["target"]["workers"] == 2
    for name in ("mpee_fp32_w1", "mpee_fp32_w2"):
        mpee = by[name]
        assert mpee["check"]["ok"] and mpee["check"]["clients"] == 8
        assert [s["phase"] for s in mpee["steps"]][:2] == ["sweep", "sweep"] and mpee["saturation_per_s"] > 0
    soaked = [r for r in record["targets"] if r["soak"]]
    assert len(soaked) == 1 and soaked[0]["soak"]["step"]["sent"] == 20 and soaked[0]["soak"]["rss_end_mb"] > 0
    # two workers and the parent hold two bundles' sessions: more resident memory than one process
    assert by["mpee_fp32_w2"]["rss_ready_mb"] > 1.5 * by["mpee_fp32_w1"]["rss_ready_mb"]
    assert all(r["exit_code"] == 0 for r in record["targets"])
    assert all(code in ("200", "503") for r in record["targets"] for s in r["steps"] for code in s["statuses"])
    assert "| mpee_fp32_w2 | sweep |" in (tmp_path / "out" / "load_test.md").read_text()
    # past saturation: one step at twice each target's saturation, its memory before and after, judged
    overloads = {v["target"]: v for v in record["overload"]}
    assert set(overloads) == set(by)
    for name, v in overloads.items():
        step = next(s for s in by[name]["steps"] if s["phase"] == "overload_2x")
        assert v["saturation_per_s"] == by[name]["saturation_per_s"] and v["goodput_per_s"] == step["goodput_per_s"]
        assert v["rss_before_mb"] > 0 and v["rss_after_mb"] > 0 and v["only_200_and_503"]
    assert "| load (x saturation) |" in (tmp_path / "out" / "load_test.md").read_text()
    if with_full:
        (verdict,) = record["verdicts"]
        assert verdict["precision"] == "fp32" and verdict["full_target"] in ("full_fp32_w1", "full_fp32_w2")
        full = by[verdict["full_target"]]
        assert [s["phase"] for s in full["steps"]][-1] == "half_full_saturation"
        assert verdict["half_rate_per_s"] == full["saturation_per_s"] / 2
