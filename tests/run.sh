#!/usr/bin/env bash
# THE test command of Weir: ./tests/run.sh
#   1. tests/setup.sh       (kcat, Python venv with Kafka clients, kafkajs)
#   2. cargo build of the broker binary (debug profile; WEIR_BIN overrides the path)
#   3. cargo nextest run --workspace (unit + integration tests of every crate)
#   4. pytest tests/e2e     (end-to-end tests with real Kafka clients against `weir serve`)
# Exits non-zero if anything failed. Extra arguments are passed to pytest
# (e.g. ./tests/run.sh -k kcat -x).  Set WEIR_SKIP_CARGO_TESTS=1 to skip step 3.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
status=0

echo "==> tests/setup.sh"
if ! ./tests/setup.sh; then
    echo "tests/setup.sh failed" >&2
    exit 1
fi

echo "==> cargo build -p weir-broker --bin weir"
if ! cargo build -p weir-broker --bin weir; then
    echo "cargo build of the broker failed" >&2
    status=1
fi
export WEIR_BIN="${WEIR_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/weir}"

if [ "${WEIR_SKIP_CARGO_TESTS:-0}" != "1" ]; then
    echo "==> cargo nextest run --workspace --no-fail-fast"
    # The replication simulation runs this many seeded fault schedules
    # (broker/tests/raft_sim.rs; replay one with WEIR_SIM_SEED=N).
    export WEIR_SIM_SEEDS="${WEIR_SIM_SEEDS:-2000}"
    if ! cargo nextest run --workspace --no-fail-fast --no-tests=warn; then
        echo "cargo nextest: FAILED" >&2
        status=1
    fi
fi

echo "==> pytest tests/e2e (WEIR_BIN=$WEIR_BIN)"
# pytest's closing summary line is the last thing this script prints.
tests/.venv/bin/pytest tests/e2e -p no:cacheprovider --timeout=300 -rfE "$@"
rc=$?
if [ $rc -ne 0 ]; then
    status=1
fi
exit $status
