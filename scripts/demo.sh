#!/usr/bin/env bash
# Install tomoseg into .venv (CPU build of PyTorch) and run the demo on the embedded phantom.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0            # CPU build; see README for a GPU
.venv/bin/pip install -q -e .
.venv/bin/tomoseg demo "$@"
