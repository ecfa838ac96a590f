#!/usr/bin/env bash
# Set up diffmesh on a fresh machine.
#   scripts/setup.sh          install diffmesh and write tiny random demo models (an SD1 checkpoint and
#                             the Z-Image Turbo set of the UI's default workflow) so workflows run out
#                             of the box
#   scripts/setup.sh --test   also install what the tests need: dev extras, Debian chromium for the
#                             browser test (never a browser download through playwright)
# The torch pin keeps the CPU build that lies on our machines; on a GPU machine install the CUDA
# or ROCm build of torch first and this script leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install -q "torch==2.13.0"
fi
if [ "${1:-}" = "--test" ]; then
  $PY -m pip install -q -e ".[dev,ray]"
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
  fi
else
  $PY -m pip install -q -e .
  if [ ! -e models/checkpoints/diffmesh-demo-sd1-tiny.safetensors ]; then
    $PY -m diffmesh.cli make-test-model --family sd1 --size tiny --out models/checkpoints/diffmesh-demo-sd1-tiny.safetensors
  fi
  # the frontend's default workflow for new users is Z-Image Turbo: a tiny random set of its three
  # files (pick them in Load Diffusion Model, Load CLIP and Load VAE); 45 MB in all
  for demo in "zimage diffusion_models/diffmesh-demo-zimage-tiny" "qwen3_4b text_encoders/diffmesh-demo-qwen3-4b-tiny" \
              "flux-vae vae/diffmesh-demo-flux-ae-tiny"; do
    set -- $demo
    if [ ! -e "models/$2.safetensors" ]; then
      $PY -m diffmesh.cli make-test-model --family "$1" --size tiny --out "models/$2.safetensors"
    fi
  done
fi
