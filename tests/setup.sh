#!/usr/bin/env bash
# Installs everything Weir's end-to-end tests need, on a fresh Debian 12 machine
# or on one where it already ran (each step is skipped when already done):
#   - kcat (Debian package)
#   - tests/.venv with the pinned tests/requirements.txt (Kafka clients + codecs + pytest)
#   - tests/node/node_modules from the committed package-lock.json (kafkajs + codecs)
# Usage: ./tests/setup.sh          (run.sh calls it)
set -euo pipefail

TESTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$TESTS_DIR"
start=$(date +%s)

log() { echo "[setup] $*"; }

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

# Hash helper for "is this already installed from these exact inputs" stamps.
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ---------------------------------------------------------------- kcat
if ! command -v kcat >/dev/null 2>&1; then
    log "installing kcat (apt)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q kcat >/dev/null
fi
log "kcat: $(command -v kcat)"

# ---------------------------------------------------------------- python venv
PY="${PYTHON:-python3}"
want="$(stamp_of requirements.txt; "$PY" --version)"
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.weir-stamp 2>/dev/null)" != "$want" ]; then
    log "creating tests/.venv with $("$PY" --version)"
    rm -rf .venv
    "$PY" -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check --no-input -r requirements.txt
    echo "$want" > .venv/.weir-stamp
fi
log "python venv: $(.venv/bin/python -c 'import confluent_kafka, kafka, aiokafka; print("confluent-kafka", confluent_kafka.__version__, "librdkafka", confluent_kafka.libversion()[0], "kafka-python", kafka.__version__, "aiokafka", aiokafka.__version__)')"

# ---------------------------------------------------------------- node modules
# @kafkajs/zstd depends on cppzst, a native addon whose sources need C++17 to
# compile against Node 20's headers (node-gyp's default -std=gnu++14 fails).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "installing nodejs + npm (apt)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q nodejs npm >/dev/null
fi
if ! command -v make >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
    log "installing build-essential (apt) for native node addons"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q build-essential python3 >/dev/null
fi
want="$(stamp_of node/package.json node/package-lock.json; node --version)"
if [ ! -d node/node_modules ] || [ "$(cat node/node_modules/.weir-stamp 2>/dev/null)" != "$want" ]; then
    log "npm ci in tests/node (builds native lz4 and zstd addons, ~1.5 min)"
    (cd node && CXXFLAGS="-std=c++17" npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > node/node_modules/.weir-stamp
fi
(cd node && node -e '
  require("kafkajs"); require("kafkajs-snappy");
  const LZ4 = require("kafkajs-lz4"); new LZ4().codec();
  require("@kafkajs/zstd");
  console.log("[setup] node: kafkajs", require("kafkajs/package.json").version, "with snappy, lz4, zstd codecs")')

log "done in $(( $(date +%s) - start ))s"
