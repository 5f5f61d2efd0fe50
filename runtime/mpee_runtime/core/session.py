"""Every onnxruntime session this project creates, the exporter's and the benchmark's included, is opened
here: `session_options` holds every SessionOptions choice and `open_session` turns a load failure into one
MpeeRuntimeError line.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ..errors import MpeeRuntimeError

_shared_arena_registered = False


def register_shared_arena() -> None:
    """Register one CPU arena in onnxruntime's environment, once per process.

    Sessions that opt in (session.use_env_allocators) then place their intermediate tensors in the same
    memory instead of one arena each, so the layers of a chain reuse cache-warm buffers as one graph does
    (measured in benchmarks/bench_runtime.py).
    """
    global _shared_arena_registered
    if not _shared_arena_registered:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _shared_arena_registered = True


THREAD_POOLS = ("session", "global")
_global_pool_threads: int | None = None   # width of the process-wide pool once created (-1: cannot be created)


def global_pool_width(threads: int | None = None) -> int | None:
    """Width of onnxruntime's process-wide intra-op pool, creating it `threads` wide if asked and possible.

    None when there is none. Once it exists, onnxruntime refuses any session with a pool of its own in the
    process, so every later session uses it, whatever width it asks for.
    """
    global _global_pool_threads
    if _global_pool_threads is None and threads is not None:
        try:
            from onnxruntime.capi import _pybind_state
            _pybind_state.set_global_thread_pool_sizes(threads, 1)
            _global_pool_threads = threads
        except Exception:  # noqa: BLE001 -- not in this build, or already made outside this module
            _global_pool_threads = -1
    return _global_pool_threads if _global_pool_threads and _global_pool_threads > 0 else None


def session_options(threads: int, spinning: bool = True, shared_arena: bool = False, thread_pool: str = "session"
                    ) -> ort.SessionOptions:
    """Every SessionOptions choice in one place.

    thread_pool "session" (default): each session has its own pool of `threads` threads. With `spinning` its
    idle threads spin while a run lasts (onnxruntime's default: no wake-up latency between operators) and
    stop when the run returns (`session.force_spinning_stop`), so the pools of a chain's graphs, run one
    after the other, never spin beside each other; without the stop, a pool per layer graph would keep
    spinning beside the running one. Without `spinning` idle threads sleep: the choice for a process that
    also runs torch, whose OpenMP threads spin after each call.
    thread_pool "global": onnxruntime's process-wide pool (`global_pool_width`), shared by every session in
    the process, with onnxruntime's default spinning: the chain's graphs run on one pool as one graph's
    operators do. Process-wide state: once it exists, onnxruntime refuses sessions with pools of their own,
    so opt in only where this process's sessions are all made here (the CLIs).
    docs/benchmarking.md has the measurements behind both choices.
    """
    if thread_pool not in THREAD_POOLS:
        raise MpeeRuntimeError(f"thread pool must be one of {', '.join(THREAD_POOLS)}, got {thread_pool!r}")
    opts = ort.SessionOptions()
    if global_pool_width(threads if thread_pool == "global" else None):
        opts.use_per_session_threads = False
    else:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if spinning:
            opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if shared_arena:
        register_shared_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
    return opts


def open_session(path: Path, opts: ort.SessionOptions | None = None, *, threads: int = 1, spinning: bool = True,
                 thread_pool: str = "session", providers: list[str] | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session on `path` with `opts` (default: `session_options(threads, spinning,
    thread_pool=thread_pool)`); a graph onnxruntime cannot load is one MpeeRuntimeError line."""
    opts = opts or session_options(threads, spinning, thread_pool=thread_pool)
    try:
        return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 -- onnxruntime's errors (InvalidProtobuf, Fail, ...) derive from Exception only
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise MpeeRuntimeError(f"{path}: onnxruntime cannot load this graph ({first})") from None
