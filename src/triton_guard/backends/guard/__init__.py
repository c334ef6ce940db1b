"""The `guard` Python-based backend (model.py) and its in-process placement (in_process.py)."""
