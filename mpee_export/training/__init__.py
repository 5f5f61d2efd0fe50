"""Training: the loop with resumable state (loop.py), devices, precisions and process groups (distributed.py),
and offline evaluation (evaluate.py). Imports the model and data stages."""
