"""mpee_export: MPEE on Hugging Face BERT (model, training, evaluation) and its export to ONNX bundles."""

__version__ = "0.1.0"
