"""The one environment record written beside every measurement: machine, CPU model and flags, versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

# CPU features that change which onnxruntime kernels run (int8 dot products, wide vectors).
_FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "asimd", "asimddp", "sve", "i8mm", "bf16"}
_DISTS = ("onnxruntime", "numpy", "tokenizers", "torch", "transformers", "optimum-onnx", "mpee-runtime",
          "mpee-export")


def cpu_info() -> dict:
    """CPU model and the kernel-relevant flags from /proc/cpuinfo (empty where it does not exist)."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu part") and model is None:
                model = value.strip()
            if key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    arm = platform.machine() in ("aarch64", "arm64")
    return {"cpu_model": model, "cpu_flags": sorted(flags & _FLAGS),
            "asimddp": "asimddp" in flags if arm else None,
            "avx512_vnni": "avx512_vnni" in flags or "avx_vnni" in flags}


def versions() -> dict:
    """Installed versions of the packages that decide results (None where not installed)."""
    out = {"python": platform.python_version()}
    for dist in _DISTS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def environment(**settings) -> dict:
    """Machine, CPU, versions and the run's own settings (threads, spinning, ...) as one JSON-able dict."""
    return {"machine": platform.machine(), "system": platform.system(), "cores": os.cpu_count(),
            **cpu_info(), "versions": versions(), **settings}
