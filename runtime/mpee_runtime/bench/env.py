"""The one environment record written beside every measurement: machine, CPU model and flags, versions."""

from __future__ import annotations

import os
import platform
import time
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


# ---------------------------------------------------------------- can this run be trusted (read before and after)
SYS = Path("/sys")
FREQ_DROP = 0.05          # a mean CPU frequency this much lower after a run than before it flags the run
OTHERS_LIMIT = 0.10       # other processes' share of the machine's CPU time during a run above which it is flagged
STEAL_LIMIT = 0.05        # the hypervisor's share (steal) of the CPU time during a run above which it is flagged
# `vcgencmd get_throttled` (Raspberry Pi): bits 0-3 are conditions now (under-voltage, frequency capped,
# throttled, soft temperature limit), bits 16-19 the same conditions since boot.
THROTTLE_NOW, THROTTLE_SINCE_BOOT = 0xF, 0xF0000
_THROTTLE_BITS = ("under-voltage", "frequency capped", "throttled", "soft temperature limit")


def _cpu_number(path: Path) -> int:
    digits = "".join(c for c in path.parent.parent.name if c.isdigit())
    return int(digits or -1)


def _read_ints(paths) -> list[int]:
    out = []
    for p in paths:
        try:
            out.append(int(p.read_text().strip()))
        except (OSError, ValueError):
            pass
    return out


def throttled_flags(vcgencmd: str | None = "vcgencmd") -> str | None:
    """`vcgencmd get_throttled`'s value ("0x0" when all is well), or None where the command does not exist."""
    import shutil
    import subprocess
    if not vcgencmd or shutil.which(vcgencmd) is None:
        return None
    try:
        out = subprocess.run([vcgencmd, "get_throttled"], check=False, capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.strip().partition("=")[2].strip()
    try:
        int(value, 16)
    except ValueError:
        return None
    return value


def cpu_times(proc_root: Path = Path("/proc")) -> dict | None:
    """The machine's CPU time so far from /proc/stat's `cpu` line, in seconds: busy (user, nice, system, irq,
    softirq), idle (idle, iowait) and steal (taken by the hypervisor); None where there is no /proc/stat."""
    try:
        fields = (proc_root / "stat").read_text().splitlines()[0].split()
        ticks = [int(x) for x in fields[1:9]] + [0] * (8 - len(fields[1:9]))
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, idle, iowait, irq, softirq, steal = (x / hz for x in ticks)
    return {"busy_s": user + nice + system + irq + softirq, "idle_s": idle + iowait, "steal_s": steal}


def cpu_state(sys_root: Path = SYS, vcgencmd: str | None = "vcgencmd", proc_root: Path = Path("/proc")) -> dict:
    """CPU frequency of every core (kHz, cpufreq's scaling_cur_freq), every thermal zone's temperature (degrees
    C) and the Pi's throttling flags; the load average (1, 5, 15 minutes), the machine's CPU time (`cpu_times`),
    this process's own CPU time and a monotonic clock, so that two readings tell how busy the machine was
    between them (`cpu_warning`); each None where the system does not expose it."""
    cpus = sorted((sys_root / "devices" / "system" / "cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"),
                  key=_cpu_number)
    zones = sorted((sys_root / "class" / "thermal").glob("thermal_zone*/temp"), key=lambda p: p.parent.name)
    freqs, temps = _read_ints(cpus), _read_ints(zones)
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    return {"cpu_freq_khz": freqs or None, "temperature_c": [t / 1000 for t in temps] or None,
            "throttled": throttled_flags(vcgencmd), "load_avg": load, "cpu_times": cpu_times(proc_root),
            "own_cpu_s": time.process_time(), "clock_s": time.monotonic(), "cores": os.cpu_count()}


def busy_share(before: dict, after: dict) -> tuple[float | None, float | None]:
    """(others, steal) between two `cpu_state` readings: the share of the machine's CPU time (all cores) that
    other processes used, and the share the hypervisor stole; None where a reading lacks what it needs."""
    t0, t1 = before.get("cpu_times"), after.get("cpu_times")
    if not t0 or not t1:
        return None, None
    busy = t1["busy_s"] - t0["busy_s"]
    total = busy + (t1["idle_s"] - t0["idle_s"]) + (t1["steal_s"] - t0["steal_s"])
    if total <= 0:
        return None, None
    own = after.get("own_cpu_s", 0.0) - before.get("own_cpu_s", 0.0)
    return max(0.0, busy - own) / total, (t1["steal_s"] - t0["steal_s"]) / total


def cpu_warning(before: dict, after: dict, drop: float = FREQ_DROP, others_limit: float = OTHERS_LIMIT,
                steal_limit: float = STEAL_LIMIT) -> str | None:
    """Why a run between the readings `before` and `after` (of `cpu_state`) cannot be trusted, or None: other
    processes used more than `others_limit` of the machine's CPU time meanwhile, the hypervisor stole more
    than `steal_limit` of it, the mean core frequency fell by more than `drop`, throttling is on after the
    run, or it started during it."""
    problems = []
    others, steal = busy_share(before, after)
    load = before.get("load_avg")
    if others is not None and others > others_limit:
        problems.append(f"other processes used {100 * others:.0f}% of the machine's CPU time during the run "
                        f"(limit {100 * others_limit:.0f}%" + (f"; load average {load[0]:.2f} before it" if load else "")
                        + ")")
    if steal is not None and steal > steal_limit:
        problems.append(f"the hypervisor took {100 * steal:.0f}% of the CPU time (steal; limit "
                        f"{100 * steal_limit:.0f}%)")
    f0, f1 = before.get("cpu_freq_khz"), after.get("cpu_freq_khz")
    if f0 and f1:
        m0, m1 = sum(f0) / len(f0), sum(f1) / len(f1)
        if m1 < (1 - drop) * m0:
            problems.append(f"the mean CPU frequency dropped by {100 * (1 - m1 / m0):.1f}% during the run "
                            f"({m0 / 1e3:.0f} MHz before, {m1 / 1e3:.0f} MHz after; limit {100 * drop:.0f}%)")
    t0, t1 = before.get("throttled"), after.get("throttled")
    if t1 is not None:
        now = int(t1, 16) & THROTTLE_NOW
        new = (int(t1, 16) & ~(int(t0, 16) if t0 is not None else 0) & THROTTLE_SINCE_BOOT) >> 16
        named = [n for i, n in enumerate(_THROTTLE_BITS) if now & (1 << i)]
        new = [n for i, n in enumerate(_THROTTLE_BITS) if new & (1 << i)]
        if named:
            problems.append(f"vcgencmd get_throttled = {t1} after the run: {', '.join(named)}")
        elif new:
            problems.append(f"vcgencmd get_throttled = {t1}: {', '.join(new)} occurred during the run")
    if not problems:
        return None
    return ("CPU: " + "; ".join(problems) + ": the latencies of this run were not measured on a quiet machine at "
            "a steady clock (stop other work, cool the device, check its power supply, and re-run)")
