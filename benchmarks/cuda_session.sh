#!/usr/bin/env bash
# One device call for the CUDA backend: install, build the peer in the background, smoke-check
# the backend against the reference, run the gpu tests (TEST_K selects), optionally tune
# (TUNE_SHAPES, or "all"; TUNE_BACKENDS, default cuda; TUNE_STEP=1 tunes the suite's decode
# step on both backends), profile with ncu (NCU_SHAPE), then `ssmgen bench` (both backends and
# the peers: selective_scan_cuda built here, mamba-ssm's Triton step from its sdist) on the
# suite (BENCH=0 skips) and, optionally, kernel-only times (KERNEL_SHAPES).
# Results, logs and the tuning records ($OUT/records_cuda.json) land in $OUT.
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
export SSMGEN_CACHE_DIR=/tmp/ssmgen_cache
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
PEER_SRC=$(ls -d .peer/mamba_ssm-*/ 2>/dev/null | head -1)
[ -n "$PEER_SRC" ] && export SSMGEN_PEER_SRC=$PWD/$PEER_SRC
if [ -n "$PEER_SRC" ] && [ "${BUILD_PEER:-1}" = 1 ]; then
  (python3 benchmarks/build_peer.py "$PEER_SRC" /tmp/peerbuild > "$OUT/peer_build.log" 2>&1; echo "peer build rc=$?" >> "$OUT/peer_build.log") &
  PEER_PID=$!
fi
timeout ${SMOKE_TIMEOUT:-200} python3 benchmarks/cuda_smoke.py --no-time 2>&1 | tee "$OUT/smoke.log" | tail -3
if [ -n "${TEST_K:-}" ]; then
  SSMGEN_EXAMPLES=${SSMGEN_EXAMPLES:-6} timeout ${TEST_TIMEOUT:-240} python3 -m pytest -m gpu -k "$TEST_K" -v -p no:cacheprovider tests/ 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "PASS|FAIL|Error|passed|failed" | tail -40
fi
if [ -n "${TUNE_SHAPES:-}" ]; then
  SHAPES_ARG=$([ "$TUNE_SHAPES" = all ] || echo "--shapes $TUNE_SHAPES")
  timeout ${TUNE_TIMEOUT:-300} python3 -m ssmgen tune --backends ${TUNE_BACKENDS:-cuda} $SHAPES_ARG ${TUNE_ARGS:-} 2>&1 | tr '\r' '\n' > "$OUT/tune.log"; grep -A16 "^tuned" "$OUT/tune.log"
fi
if [ "${TUNE_STEP:-0}" = 1 ]; then
  timeout 120 python3 -m ssmgen tune --backends cuda,triton --shapes step_b64_d4096_n16 2>&1 | tee "$OUT/tune_step.log"
fi
cp "$SSMGEN_CACHE_DIR/autotune/records.json" "$OUT/records.json" 2>/dev/null
if [ -n "${NCU_SHAPE:-}" ]; then
  timeout 120 ncu --clock-control none -k regex:ssmgen_cuda --launch-count 2 --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats python3 benchmarks/profile_one.py "$NCU_SHAPE" cuda > "$OUT/ncu_$NCU_SHAPE.txt" 2>&1; tail -5 "$OUT/ncu_$NCU_SHAPE.txt"
fi
[ -n "${PEER_PID:-}" ] && wait $PEER_PID; tail -2 "$OUT/peer_build.log" 2>/dev/null
if [ "${BENCH:-1}" = 1 ]; then
  PYTHONPATH=/tmp/peerbuild:${PYTHONPATH:-} timeout ${BENCH_TIMEOUT:-240} python3 -m ssmgen bench --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -30
fi
if [ -n "${KERNEL_SHAPES:-}" ]; then
  PYTHONPATH=/tmp/peerbuild:${PYTHONPATH:-} timeout ${KT_TIMEOUT:-150} python3 benchmarks/cuda_smoke.py --check "" --out "$OUT/kernel_timing.json" --shapes "$KERNEL_SHAPES" 2>&1 | tail -8
fi
