#!/usr/bin/env bash
# Install tomoseg with its test tools into .venv (CPU build of PyTorch) and run lint + tests.
set -euo pipefail
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"   # the napari GUI tests run headless
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0            # CPU build; see README for a GPU
.venv/bin/pip install -q -e '.[test,cluster,openvino,onnxruntime,formats,skeletons,export,napari-test]'   # Ray, CPU runtimes, HDF5/MRC/N5, paths, bioimage.io export, napari plugin
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/pytest "$@"                      # the default suite (not slow)
.venv/bin/pytest -m slow "$@"              # slow real-data checks (skip without ../shared/data)
