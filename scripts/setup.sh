#!/usr/bin/env bash
# Create ./.venv and install emokp-ray into it, with the right torch build for this machine.
#
#   bash scripts/setup.sh          # the library, the `emokp` command and face detection (OpenCV)
#   bash scripts/setup.sh dev      # plus the test tools (pytest, selenium)
#
# torch (EMOKP_TORCH_SPEC, default torch==2.13.0), in this order: from EMOKP_TORCH_INDEX if set; a
# wheel on local disk if pip finds one offline (our dev and CI machines keep the CPU build there);
# with a working nvidia-smi, PyPI's default (the CUDA build); otherwise the CPU build from PyTorch's
# CPU index. An installed torch is kept.
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
  elif "${pip[@]}" --no-index --no-deps "$torch_spec" 2>/dev/null; then
    # a wheel on local disk (pip's find-links): our dev and CI machines keep the CPU build there;
    # then torch's own dependencies from the package index
    "${pip[@]}" "$torch_spec"
  elif command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
    "${pip[@]}" "$torch_spec"  # PyPI's Linux wheel is the CUDA build
  else
    "${pip[@]}" --index-url https://download.pytorch.org/whl/cpu "$torch_spec"  # no GPU: the CPU build
  fi
fi

if [ "$extra" = "dev" ]; then
  "${pip[@]}" -e ".[dev]"
else
  "${pip[@]}" -e ".[detect]"
fi
.venv/bin/python -c "import torch, ray; print(f'emokp-ray installed in .venv: torch {torch.__version__} (cuda: {torch.cuda.is_available()}), ray {ray.__version__}')"
