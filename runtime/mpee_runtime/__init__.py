"""mpee_runtime: what the device needs to run an MPEE bundle (numpy, onnxruntime, tokenizers only).

The public API (everything else may move between versions):

    from mpee_runtime import MpeeEngine, Prediction
    engine = MpeeEngine("bundle/")                       # verifies the bundle, opens its graphs
    pred = engine.predict("a gripping drama")            # Prediction: label, probs, exit_layer, ...
    preds = engine.predict_batch(["a", "b"], threshold=0.3)

    from mpee_runtime import Manifest, load_manifest, verify_bundle
    manifest = load_manifest("bundle/")                  # the typed, checked manifest.json

Names are imported on first use, so `import mpee_runtime` costs nothing and the command-line entry points load
only what they run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (its one home)
_PUBLIC = {
    "MpeeEngine": "mpee_runtime.core.engine",
    "Prediction": "mpee_runtime.core.prediction",
    "POLICIES": "mpee_runtime.core.policy",
    "ExitPolicy": "mpee_runtime.core.policy",
    "FlopsModel": "mpee_runtime.core.flops",
    "Manifest": "mpee_runtime.bundle.manifest",
    "load_manifest": "mpee_runtime.bundle.manifest",
    "verify_bundle": "mpee_runtime.bundle.signing",
    "MpeeRuntimeError": "mpee_runtime.errors",
}
__all__ = [
    "POLICIES",
    "ExitPolicy",
    "FlopsModel",
    "Manifest",
    "MpeeEngine",
    "MpeeRuntimeError",
    "Prediction",
    "__version__",
    "load_manifest",
    "verify_bundle",
]

if TYPE_CHECKING:
    from .bundle.manifest import Manifest, load_manifest
    from .bundle.signing import verify_bundle
    from .core.engine import MpeeEngine
    from .core.flops import FlopsModel
    from .core.policy import POLICIES, ExitPolicy
    from .core.prediction import Prediction
    from .errors import MpeeRuntimeError


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mpee_runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
