"""Server CPU per refusal while the queue is full (issue 36, docs/serving.md "Overload"): mpee-serve from the
runtime sources RUNTIME_SRC (a checkout's `runtime/`: compare two commits with git worktree), pinned to CPU 0,
its one row of queue held by a long batching wait; a closed-loop client on CPU 1 sends N requests over C
keep-alive connections, each answered 503. Prints one JSON line: statuses, rate, server CPU per request.

    python benchmarks/shed_cost.py RUNTIME_SRC BUNDLE N C
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BODY = json.dumps({"text": "a good film"}).encode()
REQUEST = (f"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


def start(src: str, bundle: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mpee_runtime.serve.cli", bundle, "--port", str(port), "--threads",
                             "1", "--max-queue", "1", "--max-inputs", "1", "--max-batch", "64", "--max-wait-ms",
                             "600000", "--timeout-s", "900"], env=dict(os.environ, PYTHONPATH=src),
                            stderr=subprocess.DEVNULL)
    os.sched_setaffinity(proc.pid, {0})
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.2)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def client(port: int, k: int, statuses: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(k):
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]))
        code = head.split()[1].decode()
        statuses[code] = statuses.get(code, 0) + 1
    writer.close()


async def measure(proc: subprocess.Popen, port: int, n: int, c: int) -> dict:
    _, holder = await asyncio.open_connection("127.0.0.1", port)
    holder.write(REQUEST)   # this row fills the queue for the batching wait (600 s)
    await asyncio.sleep(0.5)
    statuses: dict[str, int] = {}
    t0, c0 = time.perf_counter(), cpu_s(proc.pid)
    await asyncio.gather(*(client(port, n // c, statuses) for _ in range(c)))
    wall, cpu = time.perf_counter() - t0, cpu_s(proc.pid) - c0
    holder.close()
    return {"requests": n, "statuses": statuses, "wall_s": round(wall, 2), "per_s": round(n / wall),
            "server_cpu_us_per_request": round(cpu / n * 1e6, 1)}


def main() -> None:
    src, bundle, n, c = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    os.sched_setaffinity(0, {1})
    proc, port = start(src, bundle)
    try:
        print(json.dumps({"src": src, **asyncio.run(measure(proc, port, n, c))}))
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
