"""The engine and what it is made of: `MpeeEngine` (engine), its answer (`Prediction`), the exit rules (policy),
the FLOPs formula (flops), onnxruntime sessions (session, graphs), padding and length groups (padding), task
scores and latency statistics (metrics). Imports bundle and text; never bench, serve or cli."""
