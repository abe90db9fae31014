#!/usr/bin/env bash
# Build the oracle environment: servesim + vLLM's real v1 scheduler on CPU, without vLLM's GPU
# dependencies (docs/oracle.md).  Usage: oracle/install.sh [VENV_DIR]   (default .venv-oracle)
#
#   1. a fresh virtual environment;
#   2. servesim with the test and vllm-oracle extras: CPU torch 2.13.0 (the release vLLM 0.27.0
#      pins) and the light packages the scheduler's import chain needs;
#   3. vLLM itself with --no-deps (its declared dependencies pull CUDA kernels, flashinfer, ...);
#   4. torchvision / torchaudio / torchcodec removed if anything pulled them in (built for another
#      torch, they break `import vllm`);
#   5. a check that vLLM's Scheduler imports; any failure exits non-zero, loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-oracle}"
VLLM_VERSION="${SERVESIM_ORACLE_VLLM_VERSION:-0.27.0}"
start=$(date +%s)
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# Where PyPI's torch is a CUDA build (most Linux machines), point this at a CPU wheel index, e.g.
# SERVESIM_ORACLE_TORCH_INDEX=https://download.pytorch.org/whl/cpu; here a local CPU wheel is found.
if [ -n "${SERVESIM_ORACLE_TORCH_INDEX:-}" ]; then
  "$VENV/bin/python" -m pip install --quiet --index-url "$SERVESIM_ORACLE_TORCH_INDEX" torch==2.13.0
fi
"$VENV/bin/python" -m pip install --quiet -e '.[test,vllm-oracle]'
"$VENV/bin/python" -m pip install --quiet --no-deps "vllm==$VLLM_VERSION"
for pkg in torchvision torchaudio torchcodec; do
  if "$VENV/bin/python" -m pip show --quiet "$pkg" >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip uninstall --quiet -y "$pkg"
  fi
done
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "
import servesim.oracle.vllm_driver as d
print('oracle environment ready: vLLM', d.VLLM_VERSION)
"
echo "oracle install took $(( $(date +%s) - start )) s" >&2
