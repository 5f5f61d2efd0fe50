"""mpee_runtime: what the device needs to run an MPEE bundle (numpy, onnxruntime, tokenizers only)."""

__version__ = "0.1.0"
