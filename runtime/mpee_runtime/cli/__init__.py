"""The device's command-line pieces: `mpee-run` (run.py) and the helpers every command shares (common.py)."""
