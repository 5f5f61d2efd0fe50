"""The int8 recipe: optimum's dynamic-quantization recipe for this CPU and its settings, shared by the two
int8 exports so that they quantize alike: the bundle's layer graphs (quantize.py) and the fused full-model baseline
(baselines/reference.py).

The recipe is chosen from the CPU flags (`quantization_recipe`): avx512_vnni / avx512 / avx2 / arm64,
`AutoQuantizationConfig.<recipe>(is_static=False, per_channel=False)`: QOperator format, IntegerOps,
activations uint8 asymmetric, weights int8 symmetric (uint8 for avx2), per tensor, full range.
`recipe_settings` gives its settings as JSON-able values, from optimum when it is installed (an optional
dependency), else from a copy of optimum's table (`fallback_settings`).
"""

from __future__ import annotations

import platform

from mpee_runtime.bench.env import cpu_info
from mpee_runtime.bundle.reference import QUANT_RECIPES

from ..errors import MpeeExportError

# optimum's ORT_DEFAULT_OPS_DYNAMIC_QUANTIZATION, for when optimum is not installed.
DYNAMIC_OPS = ["Conv", "MatMul", "Attention", "LSTM", "Gather", "Transpose", "EmbedLayerNormalization"]


def quantization_recipe(cpu: dict | None = None, machine: str | None = None) -> tuple[str, str]:
    """optimum's dynamic-quantization recipe for this CPU and why: aarch64 -> arm64 (u8/s8); x86 with VNNI
    (AVX512-VNNI or AVX-VNNI: u8 x s8 dot products without saturation) -> avx512_vnni (u8/s8); AVX-512
    without VNNI -> avx512 (u8/s8); otherwise -> avx2 (u8/u8, the one that avoids VPMADDUBSW saturation)."""
    cpu = cpu_info() if cpu is None else cpu
    machine = (machine or platform.machine()).lower()
    flags = set(cpu.get("cpu_flags") or [])
    if machine in ("aarch64", "arm64"):
        return "arm64", f"machine {machine}"
    if cpu.get("avx512_vnni"):
        vnni = sorted(flags & {"avx512_vnni", "avx_vnni"}) or ["VNNI"]
        return "avx512_vnni", "CPU flags include " + " / ".join(vnni)
    if "avx512f" in flags:
        return "avx512", "CPU flags include avx512f but no VNNI"
    if "avx2" in flags:
        return "avx2", "CPU flags include avx2, no AVX-512"
    return "avx2", f"no avx2/avx512/VNNI flag on {machine}: optimum's generic x86 recipe (u8/u8)"


def quantization_config(recipe: str, per_channel: bool):
    """optimum's QuantizationConfig for `recipe`, dynamic (is_static=False). ImportError without optimum."""
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    if recipe not in QUANT_RECIPES:
        raise MpeeExportError(f"unknown quantization recipe {recipe!r} (one of {', '.join(QUANT_RECIPES)})")
    return getattr(AutoQuantizationConfig, recipe)(is_static=False, per_channel=per_channel)


def config_settings(qconfig) -> dict:
    """The settings of a QuantizationConfig that decide the int8 graph, JSON-able."""
    def name(x):
        return getattr(x, "name", x)
    return {"is_static": qconfig.is_static, "format": name(qconfig.format), "mode": name(qconfig.mode),
            "activations_dtype": name(qconfig.activations_dtype),
            "activations_symmetric": qconfig.activations_symmetric,
            "weights_dtype": name(qconfig.weights_dtype), "weights_symmetric": qconfig.weights_symmetric,
            "per_channel": qconfig.per_channel, "reduce_range": qconfig.reduce_range,
            "operators_to_quantize": [name(o) for o in qconfig.operators_to_quantize]}


def fallback_settings(recipe: str, per_channel: bool = False) -> dict:
    """optimum's AutoQuantizationConfig.<recipe>(is_static=False) settings without optimum."""
    return {"is_static": False, "format": "QOperator", "mode": "IntegerOps", "activations_dtype": "QUInt8",
            "activations_symmetric": False, "weights_dtype": "QUInt8" if recipe == "avx2" else "QInt8",
            "weights_symmetric": True, "per_channel": per_channel, "reduce_range": False,
            "operators_to_quantize": list(DYNAMIC_OPS)}


def recipe_settings(recipe: str | None = None, per_channel: bool = False) -> dict:
    """{"recipe", "reason", "settings"}: optimum's dynamic recipe for this CPU (or `recipe`), as the reference
    export applies it to the full model. Without optimum, the same values from a copy of optimum's table."""
    reason = "given"
    if recipe is None:
        recipe, reason = quantization_recipe()
    try:
        settings = config_settings(quantization_config(recipe, per_channel))
    except ImportError:
        settings = fallback_settings(recipe, per_channel)
    return {"recipe": recipe, "reason": reason, "settings": settings}
