"""Everything that runs inside a Triton Python stub and imports triton_python_backend_utils.

`guard/` and `canary/` are Python-based backends (Triton imports their
model.py); `triton-guard backend-dir` prints this directory. The modules
beside them are the library placement (bls) and the stub-side taps; the
logic they call lives in the plain-Python packages next to this one.
"""
