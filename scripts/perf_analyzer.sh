#!/usr/bin/env bash
# The venv's perf_analyzer (tritonclient 2.51.0) with its runtime libraries
# found: it links libcudart.so.12 even for CPU-only runs, and the pip package
# nvidia-cuda-runtime-cu12 keeps that outside the default library path.
# Arguments go to perf_analyzer unchanged, e.g.
#   scripts/perf_analyzer.sh -m pipeline -u localhost:8001 -i grpc \
#     --input-data bench/digits_perf_input.json --concurrency-range 1:8:7
# VENV overrides the virtual environment (default: .venv beside scripts/).
set -euo pipefail
VENV="${VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}"
LD_LIBRARY_PATH="$("$VENV/bin/python" -c \
  'from triton_guard.perf import perf_analyzer_env; print(perf_analyzer_env()["LD_LIBRARY_PATH"])')"
export LD_LIBRARY_PATH
exec "$VENV/bin/perf_analyzer" "$@"
