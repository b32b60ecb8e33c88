#!/usr/bin/env bash
# Create ./.venv and install emokp-ray into it, with the right torch build for this machine.
#
#   bash scripts/setup.sh          # the library, the `emokp` command and face detection (OpenCV)
#   bash scripts/setup.sh dev      # plus the test tools (pytest, selenium)
#
# torch: on a machine without an NVIDIA GPU we install the CPU build (`torch==2.13.0`; on our dev and
# CI machines that wheel lies on local disk, elsewhere set EMOKP_TORCH_INDEX to PyTorch's CPU index,
# https://download.pytorch.org/whl/cpu). With a GPU (nvidia-smi works) we install PyPI's default
# torch==2.13.0, which is the CUDA build. EMOKP_TORCH_SPEC overrides the requirement itself.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

torch_spec="${EMOKP_TORCH_SPEC:-torch==2.13.0}"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${EMOKP_TORCH_INDEX:-}" ]; then
    "${pip[@]}" --index-url "$EMOKP_TORCH_INDEX" "$torch_spec"
  else
    "${pip[@]}" "$torch_spec"
  fi
fi

if [ "$extra" = "dev" ]; then
  "${pip[@]}" -e ".[dev]"
else
  "${pip[@]}" -e ".[detect]"
fi
.venv/bin/python -c "import torch, ray; print(f'emokp-ray installed in .venv: torch {torch.__version__} (cuda: {torch.cuda.is_available()}), ray {ray.__version__}')"
