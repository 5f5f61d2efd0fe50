"""The baselines MPEE is measured against: the full model exported the ordinary way (reference.py) and the
PyTorch eager timing (bench_pytorch.py, `python -m mpee_export.baselines.bench_pytorch`)."""
