"""Load test of mpee-serve: an open-loop generator (asyncio, Poisson arrivals at rising rates) against the
bundle's chain and against the full model served the same way (`mpee-serve --full-model`), fp32 and int8;
p50/p99 latency against offered load, saturation throughput, a soak, and a check that 8 concurrent clients get
mpee-run's answers (docs/serving.md, "Load-test results"). Localhost only, bounded in count and time.

    python benchmarks/load_test.py --bundle B [--bundle B_INT8] [--full-model REF/model_fused.onnx ...]
        --data dev.tsv --out DIR [--rates auto|5,10,20] [--step-s 15] [--soak N] [--workers 1,2] [--threads T]
        [--client raw|httpx] [--serve-args "--max-batch 16 --max-wait-ms 5"] [--overload 2,4]
        [--server-cpus 0 --client-cpus 1]

Rules:
- Targets run one after another, each in its own `mpee-serve` process (never two at once: they would share
  the cores). A target is a model (MPEE or the full model, fp32 or int8) served with one of `--workers` (each
  count a configuration: `mpee-serve --workers N`, threads per worker mpee-serve's default, cores / N, unless
  `--threads`). Per precision the full model's configurations run first; the best of them (highest saturation)
  is the baseline, and every target of that precision is also measured at half its saturation rate (the
  issue's p99 target; the best full model gets that step in a second server run). The verdicts compare the best
  MPEE configuration with the best full-model one.
- Open loop: arrivals are a Poisson process at the step's rate, sent whatever the answers do, for `--step-s`
  seconds or `--max-requests` requests, whichever comes first; a step's latencies are those of its 200s,
  client side (connect, queue, compute, transfer). "sent/s" can fall below the offered rate when the client
  itself runs out of CPU: it shares the machine with the server, so compare rates with that in mind.
- A step is saturated when its goodput (200s per second) is below 90% of the rate sent, or more than 1% of its
  requests are not 200; the sweep stops after the first saturated step, when the rates run out, or when
  `--max-minutes` have passed (no new sweep step after that; the half-rate step and the soak still run).
  `auto` doubles from 2 req/s, then refines between the last unsaturated rate and the first saturated one in
  steps of 2^(1/4), up to the first saturated. The saturation throughput is the best goodput of any step (a
  lower bound when no step saturated: `saturation_reached` false, ">=" in the table).
- Each step also records the CPU time per request of the server (all its processes and threads) and of the client, so
  that a result on few cores can be read: the client's share is CPU the server did not get. The load is sent
  by `RawClient` (keep-alive HTTP/1.1 on asyncio streams, a fifth of httpx's CPU per request) unless
  `--client httpx`; httpx (the serve extra's) waits for readiness, reads /metrics and runs the check.
- Soak (`--soak N`, the best MPEE configuration of each precision, in a server run of its own): N requests at
  `--soak-rate` (default: 80% of its saturation), resident memory of the server (the sum over its processes)
  sampled every 5 s; no error other than 503 is expected.
- Overload (`--overload 2,4`): after a target's sweep, one step at each multiple of its saturation throughput;
  goodput, the p99 of the 200s, the statuses and the server's resident memory before and after; met when the
  goodput is at least 90% of the saturation and every answer is 200 or 503 (issue 36). `--server-cpus 0
  --client-cpus 1` pin the server and the load generator apart, so that the load's own CPU, which grows with
  the offered rate, is not taken from the server.
- Check (MPEE targets): the first `--check` examples, sent by 8 concurrent clients, against `mpee-run --threads
  1` on the same examples: labels and exit layers equal, probabilities within 1e-5.
Writes DIR/load_test.json (every step), DIR/load_test.md (tables) and DIR/load_test.png (needs matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mpee_runtime.bench.env import environment
from mpee_runtime.bundle.manifest import Manifest
from mpee_runtime.bundle.reference import FULL_MODELS
from mpee_runtime.cli.common import input_columns
from mpee_runtime.errors import MpeeRuntimeError
from mpee_runtime.files import write_text
from mpee_runtime.text.readers import read_examples

CLIENTS = 8                # concurrent clients of the check
PROB_TOL = 1e-5            # mpee-run's output lines round probabilities to 6 decimals
SATURATED_GOODPUT = 0.9    # goodput below this share of the rate sent: saturated
SATURATED_ERRORS = 0.01    # more than this share of non-200s: saturated
RSS_EVERY_S = 5.0
READY_TIMEOUT_S = 180.0
AUTO_START, AUTO_MAX = 2.0, 4096.0
REFINE = 2 ** 0.25         # `auto`'s step between the last unsaturated and the first saturated rate
OVERLOAD_GOODPUT = 0.9     # past saturation, goodput at least this share of the saturation throughput


@dataclass(frozen=True)
class Target:
    name: str                  # e.g. mpee_fp32_w2, full_int8_w1
    kind: str                  # "mpee" or "full"
    precision: str
    bundle: Path
    full_model: Path | None = None
    workers: int = 1           # mpee-serve --workers


@dataclass
class StepResult:
    """One open-loop step. Latencies in ms over the 200s; rates per second."""

    phase: str                 # "sweep", "half_full_saturation" or "soak"
    offered_per_s: float
    sent: int
    sent_per_s: float
    goodput_per_s: float
    statuses: dict[str, int]   # status code (0: no HTTP answer) -> count
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    wall_s: float
    mean_batch_rows: float | None   # from the server's /metrics over the step
    mean_exit_layer: float | None
    server_cpu_ms: float | None     # CPU time per request sent: the server process (all its threads), the client
    client_cpu_ms: float | None
    rss_before_mb: float | None = None   # the server's resident memory around an overload step
    rss_after_mb: float | None = None

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def saturated(self) -> bool:
        return (self.goodput_per_s < SATURATED_GOODPUT * self.sent_per_s
                or self.sent - self.ok > SATURATED_ERRORS * self.sent)

    def errors_other_than_503(self) -> int:
        return sum(n for code, n in self.statuses.items() if code not in ("200", "503"))


@dataclass
class CheckResult:
    examples: int
    clients: int
    labels_equal: float        # fractions of examples
    exits_equal: float
    max_prob_diff: float
    ok: bool


@dataclass
class SoakResult:
    step: StepResult
    rss_start_mb: float | None
    rss_end_mb: float | None
    rss_max_mb: float | None
    rss_samples_mb: list[float]


@dataclass
class TargetResult:
    target: dict
    rss_ready_mb: float | None
    steps: list[StepResult] = field(default_factory=list)
    saturation_per_s: float | None = None
    saturation_reached: bool = False  # False: no step saturated, the saturation is a lower bound
    check: CheckResult | None = None
    soak: SoakResult | None = None
    exit_code: int | None = None     # of mpee-serve after SIGTERM (0 expected)
    log: str = ""


@dataclass
class OverloadVerdict:
    """Past saturation the server keeps answering (issue 36): goodput at `multiple` x the target's saturation
    rate at least OVERLOAD_GOODPUT of that saturation, and nothing but 200s and 503s."""

    target: str
    multiple: float
    saturation_per_s: float
    goodput_per_s: float
    share: float
    p99_ms: float | None
    rss_before_mb: float | None
    rss_after_mb: float | None
    only_200_and_503: bool
    met: bool


@dataclass
class Verdict:
    """The issue's targets for one precision, best MPEE configuration against the best full-model one: MPEE's
    saturation >= 3x the full model's; MPEE's p99 at half the full model's saturation below the full model's
    there; no 5xx other than 503 anywhere (every configuration of the precision)."""

    precision: str
    mpee_target: str
    full_target: str
    mpee_saturation_per_s: float
    full_saturation_per_s: float
    ratio: float
    half_rate_per_s: float
    mpee_p99_ms: float | None
    full_p99_ms: float | None
    throughput_target_met: bool
    p99_target_met: bool
    no_5xx_but_503: bool


# ---------------------------------------------------------------- the server process
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (mpee-serve --workers: the parent and its workers; Linux /proc)."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            for task in Path(f"/proc/{pids[i]}/task").iterdir():
                pids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
        i += 1
    return pids


def cpu_s(pid: int) -> float | None:
    """User + system CPU time of a process and its descendants, all threads (Linux /proc; None elsewhere)."""
    total, seen = 0.0, False
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime, stime: fields 14, 15
        seen = True
    return total if seen else None


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process and its descendants, summed (Linux /proc; None elsewhere)."""
    total, seen = 0.0, False
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
                    seen = True
        except OSError:
            continue
    return total if seen else None


class Server:
    """One mpee-serve process for a target, its log in the out folder; `stop` sends SIGTERM and returns the exit
    code (a graceful shutdown exits 0)."""

    def __init__(self, target: Target, args: argparse.Namespace) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "mpee_runtime.serve.cli", str(target.bundle), "--port", str(self.port),
               "--workers", str(target.workers)]
        if target.full_model is not None:
            cmd += ["--full-model", str(target.full_model)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        cmd += shlex.split(args.serve_args)
        self.log_path = args.out / f"server_{target.name}.log"
        self._log = open(self.log_path, "a")   # noqa: SIM115 -- open for the process's lifetime, closed in stop()
        cpus = cpu_list(args.server_cpus)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        if cpus:   # before it loads the bundle: its threads and workers inherit the affinity
            os.sched_setaffinity(self.proc.pid, cpus)

    async def wait_ready(self, client) -> None:
        import httpx
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MpeeRuntimeError(f"mpee-serve exited with {self.proc.returncode}: see {self.log_path}")
            with contextlib.suppress(httpx.TransportError):   # not listening yet
                if (await client.get(self.url + "/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise MpeeRuntimeError(f"mpee-serve not ready after {READY_TIMEOUT_S:g} s: see {self.log_path}")

    def rss_mb(self) -> float | None:
        return rss_mb(self.proc.pid)

    def cpu_s(self) -> float | None:
        return cpu_s(self.proc.pid)

    def stop(self, timeout_s: float = 60) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        self._log.close()
        return code


# ---------------------------------------------------------------- requests
def percentile_ms(values_s: list[float], q: float) -> float | None:
    return float(np.percentile(values_s, q) * 1e3) if values_s else None


class RawClient:
    """POST over keep-alive HTTP/1.1 connections on asyncio streams, reading only what mpee-serve answers (a
    status line, headers with Content-Length, the body). Measured on the 2-core build machine (tiny bundle, 100
    and 200 req/s): httpx spent 2.3-3.2 ms of CPU per request, more than the server's own 1.6-2.0 ms, and this
    client 0.4-0.5 ms; CPU the client takes is CPU the measured server does not get. Any failure is status 0; a
    reused connection that the server had closed (its keep-alive timeout) is retried once on a new one."""

    def __init__(self, url: str, *, max_connections: int, timeout_s: float) -> None:
        host_port = url.split("://", 1)[1]
        self.host, port = host_port.rsplit(":", 1)
        self.port, self.timeout_s = int(port), timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def post(self, path: str, body: bytes) -> int:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        async with self._slots:
            for attempt in (0, 1):
                reused = attempt == 0 and bool(self._idle)   # the retry always opens a new connection
                try:
                    conn = self._idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
                    status, keep = await asyncio.wait_for(self._exchange(conn, head + body), self.timeout_s)
                except (OSError, EOFError, ValueError, IndexError, asyncio.TimeoutError):
                    if reused and attempt == 0:
                        continue   # a stale keep-alive connection: once more on a new one
                    return 0
                (self._idle.append if keep else self._close)(conn)
                return status
        return 0

    @staticmethod
    async def _exchange(conn, request: bytes) -> tuple[int, bool]:
        reader, writer = conn
        writer.write(request)
        await writer.drain()
        lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:] if line)}
        await reader.readexactly(int(headers.get(b"content-length", b"0")))
        return int(lines[0].split()[1]), headers.get(b"connection", b"").lower() != b"close"

    @staticmethod
    def _close(conn) -> None:
        conn[1].close()

    def close(self) -> None:
        while self._idle:
            self._close(self._idle.pop())


async def _one(post, body: bytes) -> tuple[int, float]:
    """Status (0: no HTTP answer) and latency in seconds of one request."""
    start = time.perf_counter()
    status = await post(body)
    return status, time.perf_counter() - start


def httpx_post(client, url: str):
    """The same POST with httpx (`--client httpx`)."""
    async def post(body: bytes) -> int:
        try:
            return (await client.post(url, content=body, headers={"content-type": "application/json"})).status_code
        except Exception:  # noqa: BLE001 -- a transport error is a result too (status 0)
            return 0
    return post


async def _scrape(client, url: str) -> dict[str, float]:
    """Sums and counts of the server's batch-size and exit-layer histograms."""
    from prometheus_client.parser import text_string_to_metric_families
    want = {"mpee_batch_rows_sum", "mpee_batch_rows_count", "mpee_exit_layer_sum", "mpee_exit_layer_count"}
    text = (await client.get(url + "/metrics")).text
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name in want}


def _mean_between(before: dict, after: dict, name: str) -> float | None:
    n = after.get(name + "_count", 0) - before.get(name + "_count", 0)
    return (after.get(name + "_sum", 0) - before.get(name + "_sum", 0)) / n if n else None


async def open_loop(client, post, server: Server, bodies: list[bytes], *, rate: float, duration_s: float,
                    max_requests: int, phase: str, seed: int, on_tick=None) -> StepResult:
    """Send requests at Poisson arrival times of `rate` per second until `duration_s` or `max_requests`, then
    wait for every answer. `on_tick` is awaited between sends (the soak samples memory there). Only the
    results are kept, not the finished tasks, so a soak of 100,000 requests stays small in the client."""
    rng = np.random.default_rng(seed)
    url = server.url
    before = await _scrape(client, url)
    cpu_before = server.cpu_s(), time.process_time()
    loop = asyncio.get_running_loop()
    results: list[tuple[int, float]] = []
    pending: set[asyncio.Future] = set()

    async def send(body: bytes) -> None:
        results.append(await _one(post, body))
    start = due = last_send = loop.time()
    sent = 0
    while sent < max_requests:
        due += rng.exponential(1 / rate)
        if due - start > duration_s:
            break
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        last_send = loop.time()
        task = asyncio.ensure_future(send(bodies[sent % len(bodies)]))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent += 1
        if on_tick is not None:
            await on_tick()
    await asyncio.gather(*pending)
    wall = max(loop.time() - start, 1e-9)
    cpu_after = server.cpu_s(), time.process_time()
    after = await _scrape(client, url)
    per_request = [None if None in (a, b) or not sent else (a - b) * 1e3 / sent
                   for a, b in zip(cpu_after, cpu_before)]
    ok = [t for status, t in results if status == 200]
    statuses = {str(k): v for k, v in sorted(Counter(status for status, _ in results).items())}
    return StepResult(phase, rate, sent, sent / max(last_send - start, 1e-9) if sent else 0.0, len(ok) / wall,
                      statuses, percentile_ms(ok, 50), percentile_ms(ok, 99), float(np.mean(ok) * 1e3) if ok else None,
                      wall, _mean_between(before, after, "mpee_batch_rows"),
                      _mean_between(before, after, "mpee_exit_layer"), *per_request)


def cpu_list(spec: str | None) -> set[int] | None:
    """`--server-cpus`/`--client-cpus`: CPU numbers separated by commas (None: any)."""
    if not spec:
        return None
    try:
        cpus = {int(x) for x in spec.split(",")}
    except ValueError:
        raise MpeeRuntimeError(f"CPUs: numbers separated by commas, got {spec!r}") from None
    if not cpus <= os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)) or min(cpus) < 0:
        raise MpeeRuntimeError(f"CPUs {spec!r}: not all on this machine")
    return cpus


def multiples(spec: str) -> list[float]:
    """`--overload`: multiples of the saturation rate, each > 1."""
    if not spec:
        return []
    try:
        out = [float(x) for x in spec.split(",")]
    except ValueError:
        raise MpeeRuntimeError(f"--overload: numbers separated by commas, got {spec!r}") from None
    if any(not math.isfinite(m) or m <= 1 for m in out):
        raise MpeeRuntimeError(f"--overload: multiples of the saturation above 1, got {spec!r}")
    return out


def sweep_rates(spec: str) -> list[float] | None:
    """`auto` (None: doubling from 2 req/s) or a comma list of increasing positive rates."""
    if spec == "auto":
        return None
    try:
        rates = [float(x) for x in spec.split(",")]
    except ValueError:
        raise MpeeRuntimeError(f"--rates: 'auto' or numbers separated by commas, got {spec!r}") from None
    if not rates or any(r <= 0 or not math.isfinite(r) for r in rates) or rates != sorted(rates):
        raise MpeeRuntimeError(f"--rates: increasing positive numbers, got {spec!r}")
    return rates


async def sweep(client, post, server: Server, bodies: list[bytes], args: argparse.Namespace, deadline: float
                ) -> list[StepResult]:
    """Steps at rising rates until one is saturated (or the rates or the time run out); `auto` then refines
    between the last unsaturated rate and the saturated one."""
    rates = sweep_rates(args.rates)
    steps: list[StepResult] = []

    async def step_at(rate: float) -> StepResult:
        step = await open_loop(client, post, server, bodies, rate=rate, duration_s=args.step_s,
                               max_requests=args.max_requests, phase="sweep", seed=len(steps))
        steps.append(step)
        print(f"  {rate:8.1f} req/s offered: goodput {step.goodput_per_s:7.1f}/s, p50 {_ms(step.p50_ms)}, p99 "
              f"{_ms(step.p99_ms)}, statuses {step.statuses}", file=sys.stderr)
        return step
    rate, k = AUTO_START, 0
    while time.monotonic() < deadline:
        if rates is not None:
            if k >= len(rates):
                return steps
            rate = rates[k]
        elif rate > AUTO_MAX:
            return steps
        if (await step_at(rate)).saturated:
            break
        k, rate = k + 1, rate * 2
    else:
        return steps
    if rates is None and len(steps) >= 2:   # refine: the saturated rate is twice the last unsaturated one
        good, saturated = steps[-2].offered_per_s, steps[-1].offered_per_s
        rate = good * REFINE
        while rate < saturated / 1.01 and time.monotonic() < deadline:
            if (await step_at(rate)).saturated:
                break
            rate *= REFINE
    return steps


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


# ---------------------------------------------------------------- the check and the soak
def run_mpee_run(bundle: Path, examples, task, args: argparse.Namespace, work: Path) -> list[dict]:
    """mpee-run's answers, single-threaded, one example at a time (its default), from a JSONL file with the
    task's own keys."""
    src, out = work / "check.jsonl", work / "check_preds.jsonl"
    text_key = task.text_a if task else "text"
    pair_key = (task.text_b if task else None) or "text_pair"
    rows = ({text_key: ex.text, **({pair_key: ex.pair} if ex.pair is not None else {})} for ex in examples)
    src.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    cmd = [sys.executable, "-m", "mpee_runtime", str(bundle), "--input", str(src), "--output", str(out),
           "--threads", "1"] + (["--allow-unvalidated"] if "--allow-unvalidated" in args.serve_args else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MpeeRuntimeError(f"mpee-run failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return [json.loads(line) for line in out.read_text().splitlines()]


async def concurrent_answers(url: str, bodies: list[bytes], timeout_s: float) -> list[dict]:
    """Every body's answer, sent by CLIENTS clients at once, each its own connection and its share in turn."""
    import httpx
    answers: list[dict | None] = [None] * len(bodies)

    async def client_loop(c: int) -> None:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            for i in range(c, len(bodies), CLIENTS):
                r = await client.post(url + "/v1/classify", content=bodies[i], headers={"content-type": "application/json"})
                r.raise_for_status()
                answers[i] = r.json()
    await asyncio.gather(*(client_loop(c) for c in range(CLIENTS)))
    return answers


def compare(got: list[dict], want: list[dict], precision: str = "fp32") -> CheckResult:
    """Labels and exit layers equal; fp32 probabilities within PROB_TOL. int8 probabilities are reported, not
    judged: dynamic int8 quantization is discontinuous, so a float rounding difference between the batch and the
    batch-1 graphs can move one int8 value by a step (docs/design.md, "Batches")."""
    labels = np.mean([g["label"] == w["label"] for g, w in zip(got, want)])
    exits = np.mean([g["exit_layer"] == w["exit_layer"] for g, w in zip(got, want)])
    diff = max(float(np.max(np.abs(np.subtract(g["probs"], w["probs"])))) for g, w in zip(got, want))
    return CheckResult(len(got), CLIENTS, float(labels), float(exits), diff,
                       bool(labels == 1 and exits == 1 and (precision != "fp32" or diff <= PROB_TOL)))


async def soak(client, post, server: Server, bodies: list[bytes], *, rate: float, n: int, timeout_s: float
               ) -> SoakResult:
    samples, start = [server.rss_mb()], time.monotonic()
    last = [start]

    async def sample() -> None:
        if time.monotonic() - last[0] >= RSS_EVERY_S:
            last[0] = time.monotonic()
            samples.append(server.rss_mb())
    # Bounded by count and by time: n requests take about n / rate seconds, plus the last answers.
    step = await open_loop(client, post, server, bodies, rate=rate, duration_s=n / rate + timeout_s, max_requests=n,
                           phase="soak", seed=10_000, on_tick=sample)
    samples.append(server.rss_mb())
    kept = [s for s in samples if s is not None]
    return SoakResult(step, kept[0] if kept else None, kept[-1] if kept else None, max(kept) if kept else None,
                      [round(s, 1) for s in kept])


# ---------------------------------------------------------------- one target
async def run_target(target: Target, bodies: list[bytes], args: argparse.Namespace, deadline: float, *,
                     sweep_rates_up: bool = True, half_rate: float | None = None, check: tuple | None = None,
                     soak_n: int = 0, into: TargetResult | None = None) -> TargetResult:
    """Start the target's server, then, as asked: the check, the sweep, a step at `half_rate`, a soak of `soak_n`
    requests; stop it with SIGTERM. `into`: add the steps to that earlier result of the same target (its
    second server run) instead of a new one."""
    import httpx
    server = Server(target, args)
    timeout = httpx.Timeout(args.client_timeout_s)
    limits = httpx.Limits(max_connections=args.max_connections, max_keepalive_connections=args.max_connections)
    result = into or TargetResult({k: str(v) if isinstance(v, Path) else v for k, v in asdict(target).items()},
                                  None, log=str(server.log_path))
    raw = None
    try:
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            await server.wait_ready(client)
            rss = server.rss_mb()
            result.rss_ready_mb = result.rss_ready_mb or rss
            print(f"{target.name}: ready at {server.url}, {rss} MB resident", file=sys.stderr)
            if check is not None:
                got = await concurrent_answers(server.url, check[0], args.client_timeout_s)
                result.check = compare(got, check[1], target.precision)
                print(f"  check: {result.check}", file=sys.stderr)
            if args.client == "raw":
                raw = RawClient(server.url, max_connections=args.max_connections, timeout_s=args.client_timeout_s)
                post = functools.partial(raw.post, "/v1/classify")
            else:
                post = httpx_post(client, server.url + "/v1/classify")
            if sweep_rates_up:
                result.steps += await sweep(client, post, server, bodies, args, deadline)
                sweep_steps = [s for s in result.steps if s.phase == "sweep"]
                result.saturation_per_s = max((s.goodput_per_s for s in sweep_steps), default=None)
                result.saturation_reached = any(s.saturated for s in sweep_steps)
            for k in multiples(args.overload) if sweep_rates_up and result.saturation_per_s else []:
                rss = server.rss_mb()
                step = await open_loop(client, post, server, bodies, rate=k * result.saturation_per_s,
                                       duration_s=args.step_s, max_requests=args.max_requests * 4,
                                       phase=f"overload_{k:g}x", seed=500 + len(result.steps))
                step.rss_before_mb, step.rss_after_mb = rss, server.rss_mb()
                result.steps.append(step)
                print(f"  overload {k:g}x ({step.offered_per_s:.1f} req/s): goodput {step.goodput_per_s:.1f}/s "
                      f"({step.goodput_per_s / result.saturation_per_s:.0%} of saturation), p99 {_ms(step.p99_ms)}, "
                      f"statuses {step.statuses}, RSS {rss} -> {step.rss_after_mb} MB", file=sys.stderr)
            if half_rate:   # one step more, past the deadline too: the p99 target needs it
                step = await open_loop(client, post, server, bodies, rate=half_rate, duration_s=args.step_s,
                                       max_requests=args.max_requests, phase="half_full_saturation", seed=999)
                result.steps.append(step)
                print(f"  half the full model's saturation, {half_rate:.1f} req/s: p99 {_ms(step.p99_ms)}",
                      file=sys.stderr)
            if soak_n:
                rate = args.soak_rate or 0.8 * (result.saturation_per_s or 0)
                result.soak = await soak(client, post, server, bodies, rate=rate, n=soak_n,
                                         timeout_s=args.client_timeout_s)
                print(f"  soak: {result.soak.step.statuses}, RSS {result.soak.rss_start_mb} -> "
                      f"{result.soak.rss_end_mb} MB", file=sys.stderr)
    finally:
        if raw is not None:
            raw.close()
        code = server.stop()
        result.exit_code = code if result.exit_code in (None, 0) else result.exit_code   # the first failure stays
    return result


def best(results: list[TargetResult]) -> TargetResult | None:
    """The configuration with the highest saturation throughput."""
    measured = [r for r in results if r.saturation_per_s]
    return max(measured, key=lambda r: r.saturation_per_s) if measured else None


# ---------------------------------------------------------------- inputs, targets, verdicts
def read_bodies(bundle: Path, data: Path, limit: int | None):
    """The examples of `data` (read by the bundle's task columns, as mpee-run reads them) and their bodies."""
    manifest = Manifest.load(bundle, verify=False)
    columns, _ = input_columns(data, manifest.task)
    examples = read_examples(data, columns, limit=limit)   # labels are not needed: any is taken
    bodies = [json.dumps({"text": ex.text, **({"text_pair": ex.pair} if ex.pair is not None else {})}).encode()
              for ex in examples]
    return examples, bodies, manifest.task


def full_model_precision(path: Path) -> str | None:
    return next((m.precision for m in FULL_MODELS if m.file == path.name), None)


def make_targets(args: argparse.Namespace) -> list[Target]:
    """Per precision (fp32 first): the full model, then the bundle, each in every `--workers` configuration; a
    full model takes the bundle of its precision (by its file name, as `mpee-export reference` names them) to
    tokenize, else the first bundle."""
    bundles = {Manifest.load(b, verify=False).precision: b for b in args.bundle}
    fulls: dict[str, Path] = {}
    for path in args.full_model:
        precision = full_model_precision(path)
        if precision is None:
            raise MpeeRuntimeError(f"--full-model {path}: precision unknown from its name (expected one of "
                                   f"{', '.join(m.file for m in FULL_MODELS)})")
        fulls[precision] = path
    targets = []
    for precision in sorted(set(bundles) | set(fulls), key=("fp32", "int8").index):
        for w in worker_counts(args.workers):
            if precision in fulls:
                targets.append(Target(f"full_{precision}_w{w}", "full", precision,
                                      bundles.get(precision, args.bundle[0]), fulls[precision], w))
        for w in worker_counts(args.workers):
            if precision in bundles:
                targets.append(Target(f"mpee_{precision}_w{w}", "mpee", precision, bundles[precision], None, w))
    return targets


def worker_counts(spec: str) -> list[int]:
    """`--workers`: a comma list of positive worker counts, each a server configuration."""
    try:
        counts = [int(x) for x in spec.split(",")]
    except ValueError:
        raise MpeeRuntimeError(f"--workers: counts separated by commas, got {spec!r}") from None
    if not counts or any(c < 1 for c in counts) or len(set(counts)) != len(counts):
        raise MpeeRuntimeError(f"--workers: distinct counts >= 1, got {spec!r}")
    return counts


def overload_verdicts(results: list[TargetResult]) -> list[OverloadVerdict]:
    out = []
    for r in results:
        for s in (s for s in r.steps if s.phase.startswith("overload_")):
            share = s.goodput_per_s / r.saturation_per_s
            only = set(s.statuses) <= {"200", "503"}
            out.append(OverloadVerdict(r.target["name"], s.offered_per_s / r.saturation_per_s, r.saturation_per_s,
                                       s.goodput_per_s, share, s.p99_ms, s.rss_before_mb, s.rss_after_mb, only,
                                       share >= OVERLOAD_GOODPUT and only))
    return out


def verdicts(results: list[TargetResult]) -> list[Verdict]:
    out = []
    for precision in dict.fromkeys(r.target["precision"] for r in results):
        mine = [r for r in results if r.target["precision"] == precision]
        full = best([r for r in mine if r.target["kind"] == "full"])
        mpee = best([r for r in mine if r.target["kind"] == "mpee"])
        if full is None or mpee is None:
            continue
        half = {k: next((s for s in r.steps if s.phase == "half_full_saturation"), None)
                for k, r in (("mpee", mpee), ("full", full))}
        p99_m, p99_f = (half[k].p99_ms if half[k] else None for k in ("mpee", "full"))
        steps = [s for r in mine for s in r.steps] + [r.soak.step for r in mine if r.soak]
        other_5xx = sum(n for s in steps for code, n in s.statuses.items() if code.startswith("5") and code != "503")
        ratio = mpee.saturation_per_s / full.saturation_per_s
        out.append(Verdict(precision, mpee.target["name"], full.target["name"], mpee.saturation_per_s,
                           full.saturation_per_s, ratio, full.saturation_per_s / 2, p99_m, p99_f, ratio >= 3,
                           p99_m is not None and p99_f is not None and p99_m < p99_f, other_5xx == 0))
    return out


# ---------------------------------------------------------------- report
def markdown(record: dict) -> str:
    header = ("| target | phase | offered/s | sent/s | goodput/s | p50 ms | p99 ms | statuses | mean batch | mean exit "
              "| CPU ms/req server, client |")
    lines = ["# mpee-serve load test", "", f"Command: `{record['command']}`", "", header,
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(x, digits=1) -> str:
        return "-" if x is None else f"{x:.{digits}f}"
    for r in record["targets"]:
        for s in r["steps"] + ([r["soak"]["step"]] if r["soak"] else []):
            codes = ", ".join(f"{k}: {v}" for k, v in s["statuses"].items())
            lines.append(f"| {r['target']['name']} | {s['phase']} | {f(s['offered_per_s'])} | {f(s['sent_per_s'])} | "
                         f"{f(s['goodput_per_s'])} | {f(s['p50_ms'])} | {f(s['p99_ms'])} | {codes} | "
                         f"{f(s['mean_batch_rows'], 2)} | {f(s['mean_exit_layer'], 2)} | "
                         f"{f(s['server_cpu_ms'], 2)}, {f(s['client_cpu_ms'], 2)} |")
    lines += ["", "| target | saturation/s | RSS ready MB | check | soak RSS start -> end (max) MB | exit code |",
              "|---|---|---|---|---|---|"]
    for r in record["targets"]:
        check = "-" if not r["check"] else (f"{'ok' if r['check']['ok'] else 'DIFFERS'} ({r['check']['examples']} "
                                             f"examples, max prob diff {r['check']['max_prob_diff']:.1e})")
        soak = "-" if not r["soak"] else (f"{f(r['soak']['rss_start_mb'])} -> {f(r['soak']['rss_end_mb'])} "
                                          f"({f(r['soak']['rss_max_mb'])})")
        sat = ("" if r["saturation_reached"] else ">= ") + f(r["saturation_per_s"])
        lines.append(f"| {r['target']['name']} | {sat} | {f(r['rss_ready_mb'])} | {check} | "
                     f"{soak} | {r['exit_code']} |")
    if record["verdicts"]:
        header = ("| precision | best MPEE / best full model | saturation | >= 3x | p99 at half full saturation "
                  "(MPEE / full) | below | 5xx other than 503 |")
        lines += ["", header, "|---|---|---|---|---|---|---|"]
        for v in record["verdicts"]:
            lines.append(f"| {v['precision']} | {v['mpee_target']} / {v['full_target']} | "
                         f"{f(v['mpee_saturation_per_s'])} / {f(v['full_saturation_per_s'])} = "
                         f"{v['ratio']:.2f}x | {'yes' if v['throughput_target_met'] else 'no'} | "
                         f"{f(v['mpee_p99_ms'])} / {f(v['full_p99_ms'])} ms at {f(v['half_rate_per_s'])}/s | "
                         f"{'yes' if v['p99_target_met'] else 'no'} | {'none' if v['no_5xx_but_503'] else 'SOME'} |")
    if record.get("overload"):
        header = ("| target | load (x saturation) | saturation/s | goodput/s | share | p99 of the 200s | RSS before "
                  "-> after MB | only 200 and 503 | >= 90% |")
        lines += ["", header, "|---|---|---|---|---|---|---|---|---|"]
        for v in record["overload"]:
            lines.append(f"| {v['target']} | {v['multiple']:.2f}x | {f(v['saturation_per_s'])} | "
                         f"{f(v['goodput_per_s'])} | {v['share']:.0%} | {f(v['p99_ms'])} ms | "
                         f"{f(v['rss_before_mb'])} -> {f(v['rss_after_mb'])} | {'yes' if v['only_200_and_503'] else 'NO'}"
                         f" | {'yes' if v['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> str | None:
    """p50 and p99 against offered load, one panel per precision; None, or why no plot was drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'mpee-runtime[plot]')"
    precisions = sorted({r["target"]["precision"] for r in record["targets"]})
    fig, axes = plt.subplots(1, len(precisions), figsize=(6 * len(precisions), 4.5), squeeze=False)
    for ax, precision in zip(axes[0], precisions):
        for r in (r for r in record["targets"] if r["target"]["precision"] == precision):
            steps = [s for s in r["steps"] if s["phase"] == "sweep" and s["p50_ms"] is not None]
            x = [s["offered_per_s"] for s in steps]
            line, = ax.plot(x, [s["p99_ms"] for s in steps], marker="o", label=f"{r['target']['name']} p99")
            ax.plot(x, [s["p50_ms"] for s in steps], marker=".", ls="--", color=line.get_color(),
                    label=f"{r['target']['name']} p50")
            if r["saturation_per_s"]:
                ax.axvline(r["saturation_per_s"], color=line.get_color(), ls=":", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="offered load (requests/s)", ylabel="latency (ms)",
               title=f"{precision}: latency vs offered load (dotted: saturation)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# ---------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, action="append", required=True, help="a bundle (fp32, int8: repeat)")
    p.add_argument("--full-model", type=Path, action="append", default=[],
                   help="a full-model graph of `mpee-export reference` (model_fused.onnx, model_fused_int8.onnx)")
    p.add_argument("--data", type=Path, required=True, help="examples (a GLUE TSV, CSV or JSONL, as mpee-run reads)")
    p.add_argument("--limit", type=int, help="read only the first N examples")
    p.add_argument("--out", type=Path, required=True, help="folder for load_test.json/.md/.png and server logs")
    p.add_argument("--rates", default="auto", help="offered rates (req/s), e.g. 5,10,20; auto: 2, 4, 8, ... "
                   "until saturated [default: auto]")
    p.add_argument("--step-s", type=float, default=15.0, help="seconds per step at most [default: 15]")
    p.add_argument("--max-requests", type=int, default=5000, help="requests per step at most [default: 5000]")
    p.add_argument("--max-minutes", type=float, default=60.0, help="no new step after this [default: 60]")
    p.add_argument("--soak", type=int, default=0, help="requests of the soak per MPEE target [default: 0, none]")
    p.add_argument("--soak-rate", type=float, help="req/s of the soak [default: 80%% of the target's saturation]")
    p.add_argument("--check", type=int, default=256, help="examples of the 8-client check against mpee-run "
                   "(MPEE targets; 0: none) [default: 256]")
    p.add_argument("--workers", default="1", help="server configurations: mpee-serve --workers counts, e.g. 1,2 "
                   "(each target runs in each; the best counts) [default: 1]")
    p.add_argument("--threads", type=int, help="mpee-serve --threads [default: mpee-serve's, cores / workers]")
    p.add_argument("--serve-args", default="", help="more mpee-serve flags, e.g. '--max-batch 16 --max-wait-ms 5'")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                   help="the load's HTTP client: raw (asyncio streams, little CPU) or httpx [default: raw]")
    p.add_argument("--max-connections", type=int, default=512, help="client connections at most [default: 512]")
    p.add_argument("--overload", default="", help="after each sweep, steps at these multiples of the target's "
                   "saturation, e.g. 2,4 (goodput, p99 of the 200s, memory) [default: none]")
    p.add_argument("--server-cpus", help="run the server on these CPUs, e.g. 0 (the client elsewhere: "
                   "--client-cpus), so that the load's CPU is not the server's [default: any]")
    p.add_argument("--client-cpus", help="run the load generator on these CPUs, e.g. 1 [default: any]")
    p.add_argument("--client-timeout-s", type=float, default=60.0, help="client timeout [default: 60]")
    return p


async def run(args: argparse.Namespace) -> dict:
    """Per precision: every full-model configuration (sweep), then the best one's half-rate step, then every
    MPEE configuration (check, sweep, half-rate step), then the soak on the best MPEE configuration."""
    targets = make_targets(args)
    examples, bodies, task = read_bodies(args.bundle[0], args.data, args.limit)
    deadline = time.monotonic() + 60 * args.max_minutes
    results: list[TargetResult] = []
    with tempfile.TemporaryDirectory() as work:
        for precision in dict.fromkeys(t.precision for t in targets):
            of = {t.name: t for t in targets}
            fulls = [await run_target(t, bodies, args, deadline) for t in targets
                     if t.precision == precision and t.kind == "full"]
            results += fulls
            full = best(fulls)
            half = full.saturation_per_s / 2 if full is not None else None
            if full is not None:
                await run_target(of[full.target["name"]], bodies, args, deadline, sweep_rates_up=False,
                                 half_rate=half, into=full)
            mpees = []
            for t in (t for t in targets if t.precision == precision and t.kind == "mpee"):
                check = None
                if args.check:
                    n = min(args.check, len(examples))
                    check = (bodies[:n], run_mpee_run(t.bundle, examples[:n], task, args, Path(work)))
                mpees.append(await run_target(t, bodies, args, deadline, half_rate=half, check=check))
            results += mpees
            mpee = best(mpees)
            if args.soak and mpee is not None:
                await run_target(of[mpee.target["name"]], bodies, args, deadline, sweep_rates_up=False,
                                 soak_n=args.soak, into=mpee)
    return {"command": " ".join(shlex.quote(a) for a in sys.argv),
            "environment": environment(threads=args.threads, serve_args=args.serve_args, workers=args.workers),
            "settings": {k: str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v
                         for k, v in vars(args).items()},
            "examples": len(examples), "targets": [asdict(r) for r in results],
            "verdicts": [asdict(v) for v in verdicts(results)],
            "overload": [asdict(v) for v in overload_verdicts(results)]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sweep_rates(args.rates)
        worker_counts(args.workers)
        multiples(args.overload)
        cpu_list(args.server_cpus)
        client_cpus = cpu_list(args.client_cpus)
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        args.out.mkdir(parents=True, exist_ok=True)
        record = asyncio.run(run(args))
    except MpeeRuntimeError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    note = plot(record, args.out / "load_test.png")
    if note:
        record["notes"] = [note]
    write_text(args.out / "load_test.json", json.dumps(record, indent=1) + "\n")
    write_text(args.out / "load_test.md", markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
