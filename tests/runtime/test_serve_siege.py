"""mpee-serve under siege (issue 36), one real server process on the tiny bundle, loopback only, bounded in time
and count: idle, half-sent and stalled connections, a connection flood past the cap, huge and numerous headers,
a burst of 2,000 simultaneous requests, malformed requests, hostile request values and hosts. Each refusal is a
JSON error line with its status, counted in /metrics by reason, and a normal client is answered throughout."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install './runtime[serve]'")
pytest.importorskip("httptools", reason="the serve extra is not installed: pip install './runtime[serve]'")
prometheus_parser = pytest.importorskip("prometheus_client.parser")
resource = pytest.importorskip("resource", reason="the siege needs POSIX sockets and /proc")

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 2100   # above the burst: a flood beyond it would close connections waiting for their heads
MAX_QUEUE = 64
IDLE, HALF_HEAD, STALLED_BODY = 1850, 250, 250   # with the normal client: 251 past the cap
BURST = 2000
SOCKETS_NEEDED = IDLE + HALF_HEAD + STALLED_BODY + 200


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SOCKETS_NEEDED:
        if hard != resource.RLIM_INFINITY and hard < SOCKETS_NEEDED:
            pytest.skip(f"the open-file hard limit ({hard}) is below the {SOCKETS_NEEDED} sockets of the siege")
        resource.setrlimit(resource.RLIMIT_NOFILE, (SOCKETS_NEEDED, hard))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


SIEGE_FLAGS = ("--header-timeout-s", str(HEADER_TIMEOUT_S), "--body-timeout-s", str(BODY_TIMEOUT_S),
               "--max-connections", str(MAX_CONNECTIONS), "--max-queue", str(MAX_QUEUE), "--max-inputs", "8",
               "--max-wait-ms", "2")


class Siege:
    """The server under test and raw-socket clients of it."""

    def __init__(self, bundle: Path, log: Path, flags: tuple[str, ...] = SIEGE_FLAGS) -> None:
        self.port, self.log = _free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mpee_runtime.serve.cli", str(bundle), "--port", str(self.port), "--threads", "1",
             *flags], stdout=subprocess.DEVNULL, stderr=log.open("w"))   # a pipe could fill up
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "not ready"
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)

    def refusals(self) -> Counter:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        return Counter({s.labels["reason"]: int(s.value) for f in prometheus_parser.text_string_to_metric_families(text)
                        for s in f.samples if s.name == "mpee_refusals_total"})

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def exchange(self, raw: bytes, timeout_s: float = 10) -> tuple[int, dict, bytes]:
        """Send `raw` on a new connection; the answer's status, headers and body (0 when none came)."""
        reader, writer = await self.connect()
        try:
            writer.write(raw)
            await writer.drain()
            return await read_answer(reader, timeout_s)
        finally:
            writer.close()

    async def classify(self, body: dict | bytes, extra: str = "", timeout_s: float = 10) -> tuple[int, dict, bytes]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.exchange(post(data, extra), timeout_s)


def post(data: bytes, extra: str = "", host: str = "localhost") -> bytes:
    return (f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def read_answer(reader: asyncio.StreamReader, timeout_s: float) -> tuple[int, dict, bytes]:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    except (asyncio.IncompleteReadError, ConnectionError):
        return 0, {}, b""
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), timeout_s)
    return int(lines[0].split()[1]), headers, body


def one_json_error(status: int, headers: dict, body: bytes) -> str:
    assert headers["content-type"].startswith("application/json"), (status, headers, body)
    answer = json.loads(body)
    assert set(answer) == {"error", "field"} and "\n" not in answer["error"]
    return answer["error"]


@pytest.fixture(scope="module")
def siege(built, tmp_path_factory):
    _raise_fd_limit()
    s = Siege(built / "bundle", tmp_path_factory.mktemp("siege") / "server.log")
    yield s
    s.proc.kill()
    s.proc.wait()
    assert "Traceback" not in s.log.read_text(), s.log.read_text()[-3000:]


async def _closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """What the server sent before it closed the connection (raises TimeoutError when it did not close)."""
    return await asyncio.wait_for(reader.read(), timeout_s)


def test_slow_and_idle_clients_neither_starve_others_nor_stay(siege):
    """1,850 silent connections, 250 half-sent heads and 250 stalled bodies (2,350 > --max-connections 2,100):
    a normal client is answered within 1 s; the oldest waiting connections are closed to make room (never one
    with a request in flight); every head and body that is not complete in time gets 408 and is closed."""
    async def run():
        before = siege.refusals()
        idle = [await siege.connect() for _ in range(IDLE)]
        half = [await siege.connect() for _ in range(HALF_HEAD)]
        for _, w in half:
            w.write(b"POST /v1/classify HTTP/1.1\r\nHost: loc")
        stalled = [await siege.connect() for _ in range(STALLED_BODY)]
        for _, w in stalled:
            w.write(post(b'{"text": "a good film"}')[:-5])   # the whole head, most of the body
        await asyncio.sleep(0.2)
        start = time.monotonic()
        status, _, body = await siege.classify({"text": "a good film"})
        took = time.monotonic() - start
        assert status == 200 and json.loads(body)["label"] in ("entailment", "not_entailment")
        assert took < 1.0, f"a normal client waited {took:.2f} s"

        # Timeouts: every stalled body gets its 408, every connection closes, within the timeouts and a margin.
        answers = await asyncio.gather(*(_closed_within(r, HEADER_TIMEOUT_S + BODY_TIMEOUT_S + 3)
                                         for r, _ in idle + half + stalled))
        for _, w in idle + half + stalled:
            w.close()
        heads = [a.split(b"\r\n", 1)[0] for a in answers]
        timeout = b"HTTP/1.1 408 Request Timeout"
        assert set(heads[:IDLE]) == {b""}             # silent: evicted or timed out, closed without an answer
        assert set(heads[IDLE:]) == {timeout}         # half heads and stalled bodies (in flight: never evicted)
        counted = siege.refusals() - before
        evicted = IDLE + HALF_HEAD + STALLED_BODY + 1 - MAX_CONNECTIONS   # the oldest: silent ones
        assert counted["evicted"] == evicted, counted
        assert counted["timeout_headers"] == IDLE - evicted + HALF_HEAD, counted
        assert counted["timeout_body"] == STALLED_BODY, counted
    asyncio.run(run())


def test_huge_and_numerous_headers_are_431_and_cost_no_memory(siege):
    """Four connections sending 8 MB heads each get 431 (after 16 KiB: the rest is dropped unread), one header
    line too many too; the server's memory does not grow by the heads."""
    async def huge() -> bytes:
        reader, writer = await siege.connect()
        writer.write(b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        for _ in range(128):   # 8 MB
            writer.write(b"a" * 65536)
            await writer.drain()
        try:
            return await _closed_within(reader, 10)
        finally:
            writer.close()

    async def run():
        before, rss = siege.refusals(), _rss_mb(siege.proc.pid)
        answers = await asyncio.gather(*(huge() for _ in range(4)))
        for answer in answers:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 431 ") and b"--max-header-bytes" in body, answer
        many = "".join(f"X-H{i}: 1\r\n" for i in range(101))
        status, headers, body = await siege.classify({"text": "a good film"}, extra=many)
        assert status == 431 and "header lines" in one_json_error(status, headers, body)
        counted = siege.refusals() - before
        assert counted["header_too_large"] == 4 and counted["too_many_headers"] == 1, counted
        assert _rss_mb(siege.proc.pid) - rss < 50
    asyncio.run(run())


def test_a_burst_of_2000_is_answered_at_capacity_and_the_rest_shed(siege):
    """2,000 requests at once on 2,000 connections: each is answered 200, or 503 with Retry-After as one JSON line;
    no connection is left without an answer, the queue's worth at least is answered, and /metrics counts every
    503 by its reason."""
    async def run():
        before = siege.refusals()
        conns = await asyncio.gather(*(siege.connect() for _ in range(BURST)))
        for i, (_, w) in enumerate(conns):
            w.write(post(json.dumps({"text": f"film number {i} was good"}).encode()))
        answers = await asyncio.gather(*(read_answer(r, 60) for r, _ in conns))
        for _, w in conns:
            w.close()
        statuses = Counter(status for status, _, _ in answers)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[200] >= MAX_QUEUE, statuses
        for status, headers, body in answers:
            if status == 503:
                assert int(headers["retry-after"]) >= 1
                one_json_error(status, headers, body)
        counted = siege.refusals() - before
        shed = counted["queue_full"] + counted["held_bytes"] + counted["connections"]
        assert shed == statuses[503], (counted, statuses)
    asyncio.run(run())


def test_malformed_hostile_and_foreign_requests_are_one_json_line(siege):
    async def run():
        before = siege.refusals()
        status, headers, body = await siege.exchange(b"GARBAGE\x00\x01 nonsense\r\n\r\n")
        assert status == 400 and one_json_error(status, headers, body) == "invalid HTTP request"
        huge_number = b'{"text": "a good film", "threshold": 1' + b"0" * 400 + b"}"
        for extra in (b"", b', "policy": "patience"'):
            status, headers, body = await siege.classify(huge_number[:-1] + extra + b"}")
            assert status == 400 and "threshold" in one_json_error(status, headers, body)
        status, headers, body = await siege.exchange(post(b'{"text": "a"}', host="evil.example"))
        assert status == 421 and one_json_error(status, headers, body)
        status, headers, body = await siege.exchange(post(b'{"text": "a"}').replace(
            b"Content-Type: application/json", b"Content-Type: text/plain"))
        assert status == 415 and one_json_error(status, headers, body)
        counted = siege.refusals() - before
        assert counted == Counter(malformed_http=1, bad_request=2, host=1, content_type=1), counted
        status, _, _ = await siege.classify({"text": "still serving"})
        assert status == 200
    asyncio.run(run())


def test_a_full_queue_sheds_at_the_door_and_keeps_the_connection(built, tmp_path):
    """While the queue is full (one row, held by a 3 s batching wait), a classify request is answered 503 with
    Retry-After as soon as its head is in, and its connection stays usable: a request for another host on it still
    gets the guards' 421, a bad body still gets 503 (the door does not read bodies), and once the queue has room
    the same connection gets its answer."""
    server = Siege(built / "bundle", tmp_path / "server.log",
                   ("--max-queue", "1", "--max-inputs", "1", "--max-batch", "64", "--max-wait-ms", "3000"))

    async def run():
        before = server.refusals()
        waiting = asyncio.ensure_future(server.classify({"text": "the first one waits"}))
        await asyncio.sleep(0.5)
        reader, writer = await server.connect()
        answers = []
        for raw in (post(b'{"text": "a good film"}'), post(b'{"text": "a"}', host="evil.example"), post(b"{nonsense")):
            writer.write(raw)
            answers.append(await read_answer(reader, 5))
        (s1, h1, b1), (s2, h2, b2), (s3, h3, b3) = answers
        assert s1 == 503 and int(h1["retry-after"]) >= 1 and "connection" not in h1
        assert "overloaded" in one_json_error(s1, h1, b1)
        assert s2 == 421 and one_json_error(s2, h2, b2)
        assert s3 == 503 and "overloaded" in one_json_error(s3, h3, b3)
        assert (await waiting)[0] == 200
        writer.write(post(b'{"text": "now there is room"}'))
        status, _, body = await read_answer(reader, 10)
        assert status == 200 and json.loads(body)["label"]
        writer.close()
        counted = server.refusals() - before
        assert counted == Counter(queue_full=2, host=1), counted
    try:
        asyncio.run(run())
    finally:
        server.proc.kill()
        server.proc.wait()
    assert "Traceback" not in server.log.read_text()


def test_every_refusal_reason_is_documented():
    """The metric's reasons are the ones docs/serving.md lists, and cover the connections' own."""
    from mpee_runtime.serve.connections import REASONS
    from mpee_runtime.serve.metrics import REFUSAL_REASONS
    assert set(REASONS) | {"evicted"} <= set(REFUSAL_REASONS)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    missing = [r for r in REFUSAL_REASONS if f"`{r}`" not in doc]
    assert not missing, f"docs/serving.md does not name {missing}"


