#!/usr/bin/env bash
# One device call for the CUDA backend: install, build the peer in the background (or reuse
# .peerbuild carried from an earlier call), smoke-check the backend against the reference, then
# time both backends and the peer on the suite. Results under $OUT.
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
PEER_SRC=$(ls -d .peer/mamba_ssm-*/ 2>/dev/null | head -1)
if ls .peerbuild/selective_scan_cuda*.so >/dev/null 2>&1; then
  echo "peer: reusing .peerbuild"
elif [ -n "$PEER_SRC" ] && [ "${BUILD_PEER:-1}" = 1 ]; then
  (python3 benchmarks/build_peer.py "$PEER_SRC" .peerbuild > "$OUT/peer_build.log" 2>&1; echo "peer build rc=$?" >> "$OUT/peer_build.log"; mkdir -p "$OUT/peerbuild"; cp .peerbuild/selective_scan_cuda*.so "$OUT/peerbuild/" 2>/dev/null) &
  PEER_PID=$!
fi
timeout ${SMOKE_TIMEOUT:-200} python3 benchmarks/cuda_smoke.py --no-time 2>&1 | tee "$OUT/smoke.log"
[ -n "${PEER_PID:-}" ] && wait $PEER_PID; tail -2 "$OUT/peer_build.log" 2>/dev/null
PYTHONPATH=.peerbuild:${PYTHONPATH:-} timeout ${BENCH_TIMEOUT:-240} python3 benchmarks/cuda_smoke.py --check "" --out "$OUT/timing.json" ${TIME_ARGS:-} 2>&1 | tee "$OUT/timing.log"
