#!/usr/bin/env bash
# One device call for the CUDA backend: install, build the peer in the background, smoke-check
# the backend against the reference, run the gpu tests (TEST_K selects), optionally tune
# (TUNE_SHAPES), then `ssmgen bench` (both backends and the peer) on the suite.
# Results, logs and the tuning records (under $OUT/cache/autotune) land in $OUT.
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
export SSMGEN_CACHE_DIR=$OUT/cache
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
PEER_SRC=$(ls -d .peer/mamba_ssm-*/ 2>/dev/null | head -1)
if [ -n "$PEER_SRC" ] && [ "${BUILD_PEER:-1}" = 1 ]; then
  (python3 benchmarks/build_peer.py "$PEER_SRC" /tmp/peerbuild > "$OUT/peer_build.log" 2>&1; echo "peer build rc=$?" >> "$OUT/peer_build.log") &
  PEER_PID=$!
fi
timeout ${SMOKE_TIMEOUT:-200} python3 benchmarks/cuda_smoke.py --no-time 2>&1 | tee "$OUT/smoke.log" | tail -3
if [ -n "${TEST_K:-}" ]; then
  SSMGEN_EXAMPLES=${SSMGEN_EXAMPLES:-6} timeout ${TEST_TIMEOUT:-240} python3 -m pytest -m gpu -k "$TEST_K" -v -p no:cacheprovider tests/ 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "PASS|FAIL|Error|passed|failed" | tail -40
fi
if [ -n "${TUNE_SHAPES:-}" ]; then
  timeout ${TUNE_TIMEOUT:-300} python3 -m ssmgen tune --backends cuda --shapes "$TUNE_SHAPES" ${TUNE_ARGS:-} > "$OUT/tune.log" 2>&1; tr '\r' '\n' < "$OUT/tune.log" | grep -v "^ *\[" | tail -15
fi
[ -n "${PEER_PID:-}" ] && wait $PEER_PID; tail -2 "$OUT/peer_build.log" 2>/dev/null
PYTHONPATH=/tmp/peerbuild:${PYTHONPATH:-} timeout ${BENCH_TIMEOUT:-240} python3 -m ssmgen bench --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -30
rm -rf "$OUT/cache/cuda" "$OUT/cache/triton"
