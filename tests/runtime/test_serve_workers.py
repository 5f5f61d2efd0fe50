"""mpee-serve --workers N on the tiny bundle (no torch), as real processes: every worker answers what mpee-run
answers, /metrics sums over the workers, a killed worker is replaced, SIGTERM stops them all with exit 0, and a
bundle that fails verification stops the server before it listens."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from make_bundle import TEXTS

from mpee_runtime.bundle import contract as S
from mpee_runtime.core.engine import MpeeEngine

_NO_EXTRA = "the serve extra is not installed: pip install './runtime[serve]'"
pytest.importorskip("starlette", reason=_NO_EXTRA)
pytest.importorskip("uvicorn", reason=_NO_EXTRA)
prometheus_parser = pytest.importorskip("prometheus_client.parser", reason=_NO_EXTRA)

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes in /proc")
READY_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(bundle: Path, port: int, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mpee_runtime.serve.cli", str(bundle), "--port", str(port),
                             "--workers", "2", *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _get(url: str, timeout: float = 5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url + "/v1/classify", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _workers(pid: int) -> list[int]:
    """The server's worker processes: its children that run multiprocessing's spawn entry point (not its
    resource tracker)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return sorted(k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes())


def _wait_workers(proc: subprocess.Popen, n: int, not_in: tuple[int, ...] = ()) -> list[int]:
    deadline = time.monotonic() + READY_S
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        pids = _workers(proc.pid)
        if len(pids) == n and not set(pids) & set(not_in):
            return pids
        assert time.monotonic() < deadline, f"workers {pids}"
        time.sleep(0.05)


def _wait_ready(proc: subprocess.Popen, url: str) -> None:
    """Until the parent has said that every worker is warmed up (its banner line), then /healthz answers 200."""
    line = proc.stderr.readline()
    assert "2 workers" in line and "warmed up" in line, line + proc.communicate()[1]
    assert _get(url + "/healthz")[0] == 200


def _metric(url: str, name: str, **labels) -> float:
    text = _get(url + "/metrics")[1].decode()
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.fixture
def server(built):
    port = _free_port()
    proc = _start(built / "bundle", port, "--threads", "1", "--max-wait-ms", "2")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)   # EOF only once the workers, which hold stderr too, are gone


def test_workers_answer_as_mpee_run_and_metrics_add_up(server, built):
    """Requests from 8 threads, spread over both workers: each answer is the engine's at batch 1; every scrape
    of /metrics, whichever worker answers it, counts all of them."""
    proc, url = server
    assert len(_workers(proc.pid)) == 2
    engine = MpeeEngine(built / "bundle", threads=1)
    bodies = [{"text": t, **({"text_pair": p} if p is not None else {})} for t, p in TEXTS] * 6
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: _post(url, b), bodies))
    for got, body in zip(answers, bodies):
        want = engine.predict(body["text"], body.get("text_pair"))
        assert (got["label"], got["exit_layer"], got["tokens_per_layer"]) == (want.label, want.exit_layer,
                                                                              want.tokens_per_layer)
        np.testing.assert_allclose(got["probs"], want.probs, atol=1e-5, rtol=0)
    for _ in range(6):   # connections are new each time: the scrapes land on either worker
        assert _metric(url, "mpee_requests_total", route="/v1/classify", status="200") == len(bodies)
        assert _metric(url, "mpee_exit_layer_count") == len(bodies)
        assert _metric(url, "mpee_queue_rows") == 0
    model = json.loads(_get(url + "/v1/model")[1])
    assert model["serving"]["workers"] == 2 and model["serving"]["threads"] == 1


def test_a_killed_worker_is_replaced(server):
    proc, url = server
    first = _wait_workers(proc, 2)
    os.kill(first[0], signal.SIGKILL)
    now = _wait_workers(proc, 2, not_in=(first[0],))
    assert first[1] in now
    deadline = time.monotonic() + READY_S
    while not all(_get(url + "/healthz")[0] == 200 for _ in range(6)):   # until the replacement is warm too
        assert _post(url, {"text": "a boring film"})["label"] in ("entailment", "not_entailment")
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert "exited with code -9 while serving: starting another" in proc.stderr.read()


def test_sigterm_finishes_what_is_in_flight_in_every_worker(built):
    """A request waiting for its batch (a long --max-wait-ms) when SIGTERM reaches the parent still gets its
    answer at once; then every worker stops, nothing listens, and the parent exits 0."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(built / "bundle", port, "--threads", "1", "--max-wait-ms", "20000", "--max-batch", "64")
    try:
        _wait_ready(proc, url)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(_post, url, {"text": "a boring film"})
            deadline = time.monotonic() + 30
            while _metric(url, "mpee_queue_rows") != 1:   # the row waits in one worker's queue
                assert time.monotonic() < deadline
                time.sleep(0.02)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert answer.result(30)["label"] in ("entailment", "not_entailment")
            assert time.monotonic() - sent < 10   # not the 20 s batching wait
        assert proc.wait(60) == 0
        assert not _workers_alive(proc.pid)
        with pytest.raises(OSError):
            _get(url + "/healthz", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def _workers_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and bool(_workers(pid))


def test_workers_stop_when_the_parent_is_killed(server):
    proc, url = server
    workers = _wait_workers(proc, 2)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{w}").exists() and b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes()
              for w in workers):
        assert time.monotonic() < deadline, "orphaned workers still running"
        time.sleep(0.1)
    with pytest.raises(OSError):
        _get(url + "/healthz", timeout=1)


def test_verification_failure_stops_before_listening(bundle):
    data = json.loads((bundle / S.MANIFEST).read_text())
    layer = bundle / data["graphs"][1]["file"]
    layer.write_bytes(layer.read_bytes() + b"\0")
    port = _free_port()
    proc = _start(bundle, port, "--threads", "1")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.startswith("Error: ") and "sha256" in err and err.count("\n") == 1
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
