"""triton-guard: in-server guards that keep a Triton Inference Server pipeline honest."""

__version__ = "0.1.0"
