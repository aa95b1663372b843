#!/usr/bin/env bash
# One device call: install, build the peer in the background, run the gpu-marked tests, then the
# suite benchmark (ssmgen bench) side by side with the peer. Results go to $OUT (and are committed by hand
# under benchmarks/results/<gpu>/).
# Carry: .whl (pytest/hypothesis wheels for the device's Python) and .peer (mamba-ssm sdist).
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
PEER_SRC=$(ls -d .peer/mamba_ssm-*/ 2>/dev/null | head -1)
if [ -n "$PEER_SRC" ]; then
  (python3 benchmarks/build_peer.py "$PEER_SRC" /tmp/peerbuild > "$OUT/peer_build.log" 2>&1; echo "peer build rc=$?" >> "$OUT/peer_build.log") &
  PEER_PID=$!
fi
SSMGEN_EXAMPLES=${SSMGEN_EXAMPLES:-40} timeout ${TEST_TIMEOUT:-330} python3 -m pytest -m gpu -v -x -p no:cacheprovider tests/ 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
[ -n "${PEER_PID:-}" ] && wait $PEER_PID; tail -3 "$OUT/peer_build.log" 2>/dev/null
PYTHONPATH=/tmp/peerbuild:${PYTHONPATH:-} timeout ${BENCH_TIMEOUT:-200} python3 -m ssmgen bench --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -25
