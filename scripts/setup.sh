#!/usr/bin/env bash
# Sets up everything triton-guard needs on a fresh Debian/Ubuntu machine:
# the Debian runtime library perf_analyzer links (libb64), a virtual
# environment in .venv and the pinned Python packages. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: libb64 (perf_analyzer links it) and prometheus (its
# promtool checks the alert rules in the tests).
missing=()
ldconfig -p | grep -q 'libb64\.so\.0d' || missing+=(libb64-0d)
command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements/dev.txt
echo "setup: done ($(du -sh .venv | cut -f1) in .venv)"
