"""The export: per-layer modules (subgraphs.py), the bundle pipeline (bundle.py), validation against PyTorch
(validate.py), fused graphs (optimize.py), int8 (quantize.py, with the recipe of recipe.py), calibration
(calibrate.py) and dummy inputs (dummies.py). Imports the model and data stages, never training."""
